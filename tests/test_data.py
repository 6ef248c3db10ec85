"""rbnn.data: IDX / CIFAR-10 / image-folder readers on small files in the real formats; loaders; augment."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rbnn.config import DataConfig
from rbnn.data import DATASETS, DatasetInfo, InMemoryLoader, build_loaders, cifar, idx
from rbnn.data.augment import BatchAugment, crop_at, flip_where, normalize, random_crop, random_flip
from rbnn.data.imagefolder import random_resized_crop_box, val_transform
from rbnn.data.synthetic import make_synthetic
from rbnn.errors import DataError

FMNIST = Path("/usr/share/datasets/fashion-mnist")


# ---------------------------------------------------------------- writers of the real formats

def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr, dtype=np.uint8)
    return struct.pack(">I", 0x0800 | arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> Path:
    data = idx_bytes(arr)
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def make_idx_dir(root: Path, n_train=50, n_test=20, size=28, gz=True, seed=0, classes=10,
                 names=("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    xtr = rng.integers(0, 256, (n_train, size, size), dtype=np.uint8)
    ytr = rng.integers(0, classes, n_train, dtype=np.uint8)
    xte = rng.integers(0, 256, (n_test, size, size), dtype=np.uint8)
    yte = rng.integers(0, classes, n_test, dtype=np.uint8)
    for name, arr in zip(names, (xtr, ytr, xte, yte)):
        write_idx(root / name, arr, gz)
    return xtr, ytr, xte, yte


def write_cifar(root: Path, n_per_batch=12, protocol=2, seed=0) -> tuple[np.ndarray, np.ndarray, Path]:
    """The cifar-10-batches-py layout: dicts with bytes keys, b'data' uint8 (N, 3072), b'labels' list."""
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    all_x, all_y = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n_per_batch)]
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"img{i}.png".encode() for i in range(n_per_batch)]}
        with open(d / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
        all_x.append(data)
        all_y.append(labels)
    return np.concatenate(all_x), np.concatenate(all_y), d


def denorm(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return ((x * s + m) * 255).round().to(torch.uint8)


def collect(loader):
    xs, ys = zip(*list(loader))
    return torch.cat(xs), torch.cat(ys)


def one_line_error(excinfo, *needles):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert str(n) in msg, (n, msg)
    return msg


# ---------------------------------------------------------------- IDX

@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip_through_loaders(tmp_path, gz):
    xtr, ytr, xte, yte = make_idx_dir(tmp_path, gz=gz)
    path = idx.find_idx_file(tmp_path, "train", "images")
    assert idx.read_idx(path, idx.IMAGES_MAGIC).shape == (50, 28, 28)
    train, test, info = build_loaders(DataConfig(name="mnist", root=str(tmp_path)), 16, 8, seed=0)
    assert info == DatasetInfo("mnist", 10, (1, 28, 28), 50, 20, (0.1307,), (0.3081,), info.classes)
    x, y = collect(test)
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (20, 1, 28, 28)
    assert torch.equal(denorm(x, info.mean, info.std)[:, 0], torch.from_numpy(xte))
    assert torch.equal(y, torch.from_numpy(yte).long())
    x, y = collect(train)  # shuffled, no augmentation by default for 28x28: a permutation of the data
    assert len(train) == 4 and x.shape == (50, 1, 28, 28)
    order = torch.argsort(y * 10**6 + denorm(x, info.mean, info.std).view(50, -1)[:, :3].long() @
                          torch.tensor([65536, 256, 1]))
    ref = torch.from_numpy(xtr).view(50, -1)[:, :3].long() @ torch.tensor([65536, 256, 1])
    ref_order = torch.argsort(torch.from_numpy(ytr).long() * 10**6 + ref)
    assert torch.equal(denorm(x, info.mean, info.std)[order, 0], torch.from_numpy(xtr)[ref_order])


def test_idx_alternative_names_generic_idx_and_resize(tmp_path):
    make_idx_dir(tmp_path, size=20, classes=4, gz=False,
                 names=("train-images.idx3-ubyte", "train-labels.idx1-ubyte",
                        "t10k-images.idx3-ubyte", "t10k-labels.idx1-ubyte"))
    train, test, info = build_loaders(DataConfig(name="idx", root=str(tmp_path)), 10, 10, seed=0)
    assert info.num_classes == 4 and info.input_size == (1, 20, 20)
    assert 0.4 < info.mean[0] < 0.6 and 0.2 < info.std[0] < 0.4  # measured on uniform noise
    _, _, info = build_loaders(DataConfig(name="idx", root=str(tmp_path), image_size=32), 10, 10, seed=0)
    assert info.input_size == (1, 32, 32)
    x, _ = next(iter(build_loaders(DataConfig(name="idx", root=str(tmp_path), image_size=32), 10, 10, 0)[1]))
    assert x.shape == (10, 1, 32, 32)


def test_missing_dataset_dir(tmp_path):
    with pytest.raises(DataError) as e:
        build_loaders(DataConfig(name="fashion-mnist", root=str(tmp_path / "nope")), 8, 8, seed=0)
    one_line_error(e, tmp_path / "nope", "apt-get install -y dataset-fashion-mnist", "data.root")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as e:
        build_loaders(DataConfig(name="mnist", root=str(tmp_path / "empty")), 8, 8, seed=0)
    one_line_error(e, tmp_path / "empty", "train-images-idx3-ubyte")
    with pytest.raises(DataError) as e:
        build_loaders(DataConfig(name="mnist"), 8, 8, seed=0)
    one_line_error(e, "data.root")


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_idx(tmp_path, gz):
    make_idx_dir(tmp_path, gz=gz)
    path = idx.find_idx_file(tmp_path, "train", "images")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError) as e:
        build_loaders(DataConfig(name="mnist", root=str(tmp_path)), 8, 8, seed=0)
    one_line_error(e, path)
    path.write_bytes(raw[:6])  # not even a full header
    with pytest.raises(DataError) as e:
        idx.read_idx(path)
    one_line_error(e, path)


def test_wrong_magic_and_label_range(tmp_path):
    xtr, ytr, _, _ = make_idx_dir(tmp_path, gz=False)
    lbl = tmp_path / "train-labels-idx1-ubyte"
    img = tmp_path / "train-images-idx3-ubyte"
    img.write_bytes(idx_bytes(ytr))  # a labels file where images belong
    with pytest.raises(DataError) as e:
        build_loaders(DataConfig(name="mnist", root=str(tmp_path)), 8, 8, seed=0)
    one_line_error(e, img, "0x00000801", "0x00000803")
    img.write_bytes(b"\x12\x34\x56\x78" + idx_bytes(xtr)[4:])
    with pytest.raises(DataError) as e:
        idx.read_idx(img)
    one_line_error(e, img, "0x12345678")
    img.write_bytes(idx_bytes(xtr))
    bad = ytr.copy()
    bad[3] = 10
    lbl.write_bytes(idx_bytes(bad))
    with pytest.raises(DataError) as e:
        build_loaders(DataConfig(name="mnist", root=str(tmp_path)), 8, 8, seed=0)
    one_line_error(e, lbl, "[0, 10)")
    lbl.write_bytes(idx_bytes(ytr[:-1]))
    with pytest.raises(DataError) as e:
        build_loaders(DataConfig(name="mnist", root=str(tmp_path)), 8, 8, seed=0)
    one_line_error(e, lbl, img)


def test_mnist_wrong_image_size(tmp_path):
    make_idx_dir(tmp_path, size=32)
    with pytest.raises(DataError) as e:
        build_loaders(DataConfig(name="fashion-mnist", root=str(tmp_path)), 8, 8, seed=0)
    one_line_error(e, "expected 28x28")


@pytest.mark.skipif(not FMNIST.is_dir(), reason="Fashion-MNIST not installed")
def test_real_fashion_mnist():
    train, test, info = build_loaders(DataConfig(), 256, 1000, seed=0)
    assert (info.train_size, info.test_size, info.num_classes) == (60000, 10000, 10)
    assert info.input_size == (1, 28, 28)
    assert len(test) == 10 and test.batch_size == 1000
    assert torch.equal(torch.bincount(train.labels), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(test.labels), torch.full((10,), 1000))
    assert info.classes[int(train.labels[0])] == "Ankle boot"  # the first training image
    x, _ = next(iter(test))
    assert abs(float(x.mean())) < 0.1 and 0.9 < float(x.std()) < 1.1  # the normalization fits the data
    _, _, sub = build_loaders(DataConfig(subset=1000, test_subset=300), 256, 1000, seed=0)
    assert (sub.train_size, sub.test_size) == (1000, 300)


# ---------------------------------------------------------------- CIFAR-10

@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL, 5])
def test_cifar_pickles(tmp_path, protocol):
    xs, ys, d = write_cifar(tmp_path, protocol=protocol)
    for root in (d, tmp_path):  # the directory itself or its parent
        train, test, info = build_loaders(DataConfig(name="cifar10", root=str(root)), 20, 7, seed=0)
        assert (info.train_size, info.test_size, info.num_classes) == (60, 12, 10)
        assert info.input_size == (3, 32, 32)
        assert info.mean == (0.485, 0.456, 0.406) and info.std == (0.229, 0.224, 0.225)
        x, y = collect(test)
        assert x.shape == (12, 3, 32, 32) and len(test) == 2
        assert torch.equal(denorm(x, info.mean, info.std), torch.from_numpy(xs[60:]).view(12, 3, 32, 32))
        assert torch.equal(y, torch.from_numpy(ys[60:]).long())
        # pixel (row 0, col 1) of channel 1 (green) is byte 1024 + 1 of the row
        assert train.images[5, 1, 0, 1] == xs[5, 1025]
        assert train.augment == BatchAugment(pad=4, flip=True)  # CIFAR default: crop + flip
    _, test, _ = build_loaders(DataConfig(name="cifar10", root=str(d), drop_last_test=True), 20, 7, seed=0)
    assert len(test) == 1 and collect(test)[0].shape[0] == 7


def test_cifar_python2_style_pickle(tmp_path):
    """The released files are Python-2 protocol-2 pickles naming numpy.core.multiarray._reconstruct."""
    xs, ys, d = write_cifar(tmp_path, n_per_batch=3)
    raw = (d / "test_batch").read_bytes()
    assert b"numpy._core.multiarray" in raw
    (d / "test_batch").write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    x, y = cifar.read_batch(d / "test_batch")
    assert np.array_equal(x.reshape(3, -1), xs[15:]) and np.array_equal(y, ys[15:])


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_malicious_pickle_is_refused(tmp_path):
    _, _, d = write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    with open(d / "data_batch_3", "wb") as f:
        pickle.dump({b"data": _Evil(marker), b"labels": [0]}, f, protocol=2)
    with pytest.raises(DataError) as e:
        build_loaders(DataConfig(name="cifar10", root=str(d)), 8, 8, seed=0)
    msg = one_line_error(e, d / "data_batch_3")
    assert "system" in msg and not marker.exists()
    for payload in (b"cbuiltins\neval\n(S'1+1'\ntR.", b"cposix\nsystem\n(S'true'\ntR."):
        (d / "data_batch_3").write_bytes(payload)
        with pytest.raises(DataError):
            cifar.read_batch(d / "data_batch_3")


def test_cifar_bad_contents(tmp_path):
    _, _, d = write_cifar(tmp_path)
    with open(d / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((4, 3000), np.uint8), b"labels": [0] * 4}, f)
    with pytest.raises(DataError) as e:
        build_loaders(DataConfig(name="cifar10", root=str(d)), 8, 8, seed=0)
    one_line_error(e, d / "test_batch", "3072")
    with open(d / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 10]}, f)
    with pytest.raises(DataError) as e:
        build_loaders(DataConfig(name="cifar10", root=str(d)), 8, 8, seed=0)
    one_line_error(e, d / "test_batch", "[0, 10)")
    (d / "test_batch").write_bytes(b"\x80\x02}q\x00(")  # truncated pickle
    with pytest.raises(DataError) as e:
        cifar.read_batch(d / "test_batch")
    one_line_error(e, d / "test_batch")
    (d / "data_batch_4").unlink()
    with pytest.raises(DataError) as e:
        build_loaders(DataConfig(name="cifar10", root=str(d)), 8, 8, seed=0)
    one_line_error(e, "data_batch_4")
    with pytest.raises(DataError) as e:
        build_loaders(DataConfig(name="cifar10", root=str(tmp_path / "x")), 8, 8, seed=0)
    one_line_error(e, tmp_path / "x", "cifar-10-batches-py")


# ---------------------------------------------------------------- image folders

def make_folders(root: Path, sizes=((40, 30), (30, 50), (64, 48))):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("zebra", "ant", "cat"):
            (root / split / cls).mkdir(parents=True)
            for i, (w, h) in enumerate(sizes):
                arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                ext = ".JPEG" if i % 2 == 0 else ".png"
                Image.fromarray(arr).save(root / split / cls / f"img{i}{ext}")
    (root / "train" / "ant" / "notes.txt").write_text("not an image")


def test_image_folders(tmp_path):
    make_folders(tmp_path)
    cfg = DataConfig(name="imagenet", root=str(tmp_path), image_size=16)
    train, test, info = build_loaders(cfg, 5, 5, seed=3)  # train batches 5 + 4
    assert info.classes == ("ant", "cat", "zebra") and info.num_classes == 3
    assert (info.train_size, info.test_size, info.input_size) == (9, 9, (3, 16, 16))
    x, y = collect(test)
    assert x.shape == (9, 3, 16, 16) and torch.equal(y, torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2]))
    path = tmp_path / "val" / "cat" / "img2.JPEG"  # 64x48 -> shorter side 18 -> 24x18 -> center 16x16
    with Image.open(path) as im:
        ref = np.array(val_transform(im.convert("RGB"), 16))
    assert ref.shape == (16, 16, 3)
    assert torch.equal(denorm(x[5:6], info.mean, info.std)[0].permute(1, 2, 0), torch.from_numpy(ref))
    assert len(train) == 2
    train.set_epoch(1)
    a = collect(train)
    b = collect(train)
    train.set_epoch(2)
    c = collect(train)
    assert a[0].shape == (9, 3, 16, 16)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    # the same batches whatever the number of worker processes
    train2, _, _ = build_loaders(DataConfig(name="imagenet", root=str(tmp_path), image_size=16, workers=2),
                                 5, 5, seed=3)
    train2.set_epoch(1)
    w = collect(train2)
    assert torch.equal(a[0], w[0]) and torch.equal(a[1], w[1])


def test_image_folder_errors(tmp_path):
    make_folders(tmp_path)
    bad = tmp_path / "train" / "cat" / "broken.JPEG"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    cfg = DataConfig(name="imagenet", root=str(tmp_path), image_size=16)
    train, _, _ = build_loaders(cfg, 10, 10, seed=0)  # one batch holding all 10 training images
    with pytest.raises(DataError) as e:
        collect(train)
    one_line_error(e, bad)
    with pytest.raises(DataError) as e:
        build_loaders(DataConfig(name="imagenet", root=str(tmp_path / "nope")), 4, 4, seed=0)
    one_line_error(e, tmp_path / "nope", "train/<class>")
    (tmp_path / "val" / "newclass").mkdir()
    with pytest.raises(DataError) as e:
        build_loaders(DataConfig(name="imagenet", root=str(tmp_path)), 4, 4, seed=0)
    one_line_error(e, "newclass")


def test_random_resized_crop_box_in_bounds():
    import random
    rng = random.Random(0)
    for w, h in [(10, 10), (300, 20), (20, 300), (1, 1), (500, 375)]:
        for _ in range(50):
            left, top, cw, ch = random_resized_crop_box(w, h, rng)
            assert 0 < cw <= w and 0 < ch <= h and 0 <= left <= w - cw and 0 <= top <= h - ch


# ---------------------------------------------------------------- synthetic

def test_synthetic_deterministic_and_learnable():
    a = make_synthetic(300, 10, (3, 16, 12), seed=0)
    b = make_synthetic(300, 10, (3, 16, 12), seed=0)
    assert a[0].shape == (300, 3, 16, 12) and a[0].dtype == torch.uint8
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(torch.bincount(a[1]), torch.full((10,), 30))
    train, test, info = build_loaders(DataConfig(name="synthetic"), 64, 128, seed=0)
    assert (info.train_size, info.test_size, info.num_classes) == (2048, 512, 10)
    assert info.input_size == (1, 28, 28)
    # nearest class mean on the training images classifies the test images well
    xtr, ytr = train.images.float().flatten(1), train.labels
    means = torch.stack([xtr[ytr == k].mean(0) for k in range(10)])
    pred = torch.cdist(test.images.float().flatten(1), means).argmin(1)
    assert (pred == test.labels).float().mean() > 0.9
    cfg = DataConfig(name="synthetic", image_size=8, subset=100, test_subset=30)
    _, _, small = build_loaders(cfg, 10, 10, 0)
    assert (small.train_size, small.test_size, small.input_size) == (100, 30, (1, 8, 8))


# ---------------------------------------------------------------- loader semantics

def id_loader(n, batch, train=True, augment=None, seed=0, rank=0, world=1, drop_last=False):
    """Images whose pixels encode nothing; labels = the sample index, to follow samples through the loader."""
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g)
    return InMemoryLoader(images, torch.arange(n), batch, mean=(0.5,), std=(0.25,), train=train,
                          augment=augment, seed=seed, rank=rank, world_size=world, drop_last=drop_last)


def test_same_seed_epoch_same_batches():
    aug = BatchAugment(pad=2, flip=True)
    a = id_loader(100, 16, augment=aug, seed=7)
    b = id_loader(100, 16, augment=aug, seed=7)
    runs = {}
    for e in range(3):
        a.set_epoch(e)
        runs[e] = collect(a)
    b.set_epoch(2)  # a resumed run: jumps straight to epoch 2
    xb, yb = collect(b)
    assert torch.equal(xb, runs[2][0]) and torch.equal(yb, runs[2][1])
    assert not torch.equal(runs[0][1], runs[1][1]) and not torch.equal(runs[0][0], runs[1][0])
    assert sorted(runs[1][1].tolist()) == list(range(100))
    c = id_loader(100, 16, augment=aug, seed=8)
    c.set_epoch(2)
    assert not torch.equal(collect(c)[1], yb)


def test_batch_counts_and_drop_rules():
    tr = id_loader(33, 16)  # 16 + 16 + 1: the single-sample last batch is dropped in training
    assert len(tr) == 2 and [len(y) for _, y in tr] == [16, 16]
    tr = id_loader(34, 16)
    assert len(tr) == 3 and [len(y) for _, y in tr] == [16, 16, 2]
    te = id_loader(33, 16, train=False)
    assert len(te) == 3 and torch.equal(collect(te)[1], torch.arange(33))
    te = id_loader(33, 16, train=False, drop_last=True)
    assert len(te) == 2 and torch.equal(collect(te)[1], torch.arange(32))


@pytest.mark.parametrize("n", [100, 101, 7])
def test_two_rank_sharding(n):
    world = 2
    shards = []
    for r in range(world):
        ld = id_loader(n, 4, rank=r, world=world, seed=5)
        ld.set_epoch(3)
        shards.append(torch.cat([y for _, y in ld]) if len(ld) else torch.empty(0, dtype=torch.long))
        assert len(ld) == len(id_loader(n, 4, rank=0, world=world))  # every rank has the same batch count
    full = [id_loader(n, 4, rank=r, world=world, seed=5) for r in range(world)]
    for f in full:
        f.set_epoch(3)
    idxs = [f.indices() for f in full]
    assert len(idxs[0]) == len(idxs[1]) == -(-n // world)
    allidx = torch.cat(idxs)
    assert set(allidx.tolist()) == set(range(n))
    assert len(allidx) - n == (-n) % world  # the only repeats are the padding
    # the global permutation is the rank-independent one, interleaved
    single = id_loader(n, 4, seed=5)
    single.set_epoch(3)
    perm = single.indices()
    assert torch.equal(idxs[0], perm[0::2][: len(idxs[0])])
    # test sets: disjoint, exact cover, no padding
    tests = [collect(id_loader(n, 4, train=False, rank=r, world=world))[1] for r in range(world)]
    assert sorted(torch.cat(tests).tolist()) == list(range(n))


def test_global_batch_is_split_across_ranks(tmp_path):
    train, test, _ = build_loaders(DataConfig(name="synthetic", subset=64, test_subset=20), 32, 10, seed=0,
                                   rank=1, world_size=2)
    assert train.batch_size == 16 and train.global_batch_size == 32 and test.batch_size == 5
    assert len(train) == 2 and len(test) == 2
    with pytest.raises(DataError):
        build_loaders(DataConfig(name="synthetic"), 1, 10, seed=0, rank=0, world_size=2)


def test_config_errors(tmp_path):
    with pytest.raises(DataError) as e:
        build_loaders(DataConfig(name="svhn"), 8, 8, seed=0)
    one_line_error(e, "svhn", *DATASETS)
    make_idx_dir(tmp_path)
    with pytest.raises(DataError) as e:
        build_loaders(DataConfig(name="mnist", root=str(tmp_path), subset=51), 8, 8, seed=0)
    one_line_error(e, "data.subset=51", "50")


# ---------------------------------------------------------------- augmentation

def test_crop_and_flip_on_known_tensor():
    x = torch.arange(1, 2 * 3 * 5 * 4 + 1, dtype=torch.uint8).view(2, 3, 5, 4)
    same = crop_at(x, 2, torch.tensor([[2, 2], [2, 2]]))
    assert torch.equal(same, x)
    shifted = crop_at(x, 2, torch.tensor([[0, 0], [4, 3]]))
    # offset (0, 0): content moves down-right by 2, zeros enter at the top and left
    assert torch.equal(shifted[0, :, 2:, 2:], x[0, :, :3, :2])
    assert shifted[0, :, :2].eq(0).all() and shifted[0, :, :, :2].eq(0).all()
    # offset (4, 3): content moves up by 2 and left by 1
    assert torch.equal(shifted[1, :, :3, :3], x[1, :, 2:, 1:])
    assert shifted[1, :, 3:].eq(0).all() and shifted[1, :, :, 3:].eq(0).all()
    flipped = flip_where(x, torch.tensor([True, False]))
    assert torch.equal(flipped[0], x[0, :, :, [3, 2, 1, 0]]) and torch.equal(flipped[1], x[1])


def test_random_augment_is_a_crop_or_flip_of_the_input():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, (32, 3, 8, 8), dtype=torch.uint8, generator=g)
    out = random_crop(x, 4, g)
    assert out.shape == x.shape and out.dtype == torch.uint8
    for i in range(32):
        cands = [crop_at(x[i:i + 1], 4, torch.tensor([[a, b]])) for a in range(9) for b in range(9)]
        assert any(torch.equal(out[i:i + 1], c) for c in cands)
    fl = random_flip(x.float(), g)
    flipped = torch.tensor([torch.equal(fl[i], x[i].flip(-1).float()) for i in range(32)])
    kept = torch.tensor([torch.equal(fl[i], x[i].float()) for i in range(32)])
    assert (flipped | kept).all() and 4 < int(flipped.sum()) < 28
    z = normalize(torch.tensor([0, 255], dtype=torch.uint8).view(1, 2, 1, 1), (0.5, 0.0), (0.5, 1.0))
    assert torch.allclose(z.flatten(), torch.tensor([-1.0, 1.0]))
    assert torch.allclose(normalize(torch.ones(1, 1, 1, 1), (0.5,), (0.25,)), torch.tensor(2.0))
