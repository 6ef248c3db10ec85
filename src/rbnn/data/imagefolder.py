"""ImageNet-style class folders: ``root/train/<class>/*.JPEG`` and ``root/val/<class>/*``.

Images are decoded with Pillow in ``torch.utils.data.DataLoader`` workers. Transforms (written here, no
torchvision):

* train: ``RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3))`` (torchvision's algorithm) with a
  bilinear resize, then a horizontal flip with probability 0.5;
* val (and train without augmentation): resize the shorter side to ``int(size * 256 / 224)``, then a
  center crop of ``size`` x ``size``.

Workers return uint8 CHW tensors (4x less to move between processes and to the device than float32). Given a
CUDA ``device``, batches are collated into pinned memory, copied with ``non_blocking=True`` and normalized on
the device; worker processes persist across epochs (no re-fork and re-import per epoch). ``data.workers=-1``
takes the worker count from the CPU count (:func:`default_workers`). The random parameters of each
sample come from a seed computed from ``(seed, epoch, position in the epoch)`` that the batch sampler hands
to the dataset, so an epoch is reproduced exactly whatever the number of workers. Labels are the indices of
the sorted class folder names of ``train``; a broken image raises a one-line ``DataError`` naming the file.
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from .augment import apply_normalization, normalization_constants
from .loader import mix_seed, num_batches, shard_indices, shard_size, single_thread

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
HINT = ("set data.root=DIR holding train/<class>/<images> and val/<class>/<images> "
        "(the ImageNet class-folder layout); nothing is downloaded")
STREAM_SAMPLE = 3


def find_classes(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        raise DataError(f"image folder not found: {split_dir}; {HINT}")
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
    if not classes:
        raise DataError(f"no class folders in {split_dir}: expected {split_dir}/<class>/<images>; {HINT}")
    return classes


def scan(split_dir: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    """(path, label) for every image file, sorted by class then file name."""
    samples = []
    for cls in sorted(e.name for e in os.scandir(split_dir) if e.is_dir()):
        if cls not in class_to_idx:
            raise DataError(f"class folder {split_dir / cls} has no counterpart in the training classes")
        label = class_to_idx[cls]
        names = sorted(e.name for e in os.scandir(split_dir / cls)
                       if e.is_file() and e.name.lower().endswith(IMG_EXTENSIONS))
        samples.extend((str(split_dir / cls / n), label) for n in names)
    if not samples:
        raise DataError(f"no images ({', '.join(IMG_EXTENSIONS)}) under {split_dir}/<class>/; {HINT}")
    return samples


def random_resized_crop_box(width: int, height: int, rng: random.Random, scale=(0.08, 1.0),
                            ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(left, top, w, h) of a crop, as torchvision's ``RandomResizedCrop.get_params``."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, width - w), rng.randint(0, height - h), w, h
    in_ratio = width / height  # fallback: central crop with the ratio clamped
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def train_transform(img: Image.Image, size: int, rng: random.Random) -> Image.Image:
    left, top, w, h = random_resized_crop_box(img.width, img.height, rng)
    out = img.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
    if rng.random() < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return out


def resize_shorter(img: Image.Image, short: int) -> Image.Image:
    w, h = img.size
    if w <= h:
        nw, nh = short, int(short * h / w)
    else:
        nw, nh = int(short * w / h), short
    return img.resize((nw, nh), Image.BILINEAR)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    if w < size or h < size:
        raise ValueError(f"image {w}x{h} smaller than the crop {size}")
    left = int(round((w - size) / 2.0))
    top = int(round((h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def val_transform(img: Image.Image, size: int) -> Image.Image:
    return center_crop(resize_shorter(img, int(size * 256 / 224)), size)


def to_chw_uint8(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


class ImageFolder(torch.utils.data.Dataset):
    """Samples of one split; indexed by ``(index, sample_seed)`` pairs from :class:`EpochBatchSampler`."""

    def __init__(self, samples: list[tuple[str, int]], size: int, train_aug: bool):
        self.samples = samples
        self.size = size
        self.train_aug = train_aug

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int, sample_seed: int = 0) -> torch.Tensor:
        path = self.samples[index][0]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
            if self.train_aug:
                img = train_transform(img, self.size, random.Random(sample_seed))
            else:
                img = val_transform(img, self.size)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise DataError(f"cannot decode image {path}: {type(e).__name__}: {e} "
                            "(expected a readable JPEG/PNG image; remove or replace the file)") from None
        return to_chw_uint8(img)

    def __getitem__(self, item):
        index, sample_seed = item if isinstance(item, tuple) else (item, 0)
        try:
            return self.load(index, sample_seed), self.samples[index][1], ""
        except DataError as e:  # carried to the main process as data: keeps the message one line
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), -1, str(e)


def _collate(batch):
    errors = [e for _, _, e in batch if e]
    if errors:
        return None, None, errors[0]
    return torch.stack([x for x, _, _ in batch]), torch.tensor([y for _, y, _ in batch]), ""


class EpochBatchSampler:
    """Batches of ``(index, sample_seed)`` for the current epoch, sharded across ranks."""

    def __init__(self, n: int, batch_size: int, *, train: bool, seed: int, rank: int, world_size: int,
                 drop_last: bool):
        self.n, self.batch_size, self.train = n, batch_size, train
        self.seed, self.rank, self.world_size, self.drop_last = seed, rank, world_size, drop_last
        self.epoch = 0
        self.start = 0  # first batch of the next iteration (mid-epoch resume), reset once iterated
        self.num_samples = shard_size(n, rank, world_size, pad=train)

    def __len__(self) -> int:
        return num_batches(self.num_samples, self.batch_size, self.drop_last, drop_single=self.train)

    def __iter__(self):
        idx = shard_indices(self.n, seed=self.seed, epoch=self.epoch, shuffle=self.train, rank=self.rank,
                            world_size=self.world_size, pad=self.train).tolist()
        base = mix_seed(self.seed, self.epoch, STREAM_SAMPLE, self.rank)
        bs = self.batch_size
        start, self.start = self.start, 0
        for b in range(start, len(self)):
            pos = range(b * bs, min((b + 1) * bs, len(idx)))
            yield [(idx[p], mix_seed(base, p)) for p in pos]


def default_workers(workers: int = -1) -> int:
    """``workers`` when >= 0; for -1 the CPUs this process may use, shared by the ranks on this machine
    (``LOCAL_WORLD_SIZE``), minus one for the training process itself."""
    if workers >= 0:
        return workers
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    per_rank = cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(0, min(per_rank - 1, 32))


class FolderLoader:
    """Loader over an :class:`ImageFolder`: ``set_epoch``, ``__len__``, ``batch_size``; yields normalized
    float32 (N, 3, S, S) batches (on ``device`` when given) and int64 labels."""

    def __init__(self, dataset: ImageFolder, batch_size: int, *, mean, std, train: bool, seed: int = 0,
                 rank: int = 0, world_size: int = 1, workers: int = 0, drop_last: bool = False,
                 global_batch_size: int | None = None, device: torch.device | str | None = None):
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.global_batch_size = int(global_batch_size or batch_size * world_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.train = train
        self.sampler = EpochBatchSampler(len(dataset), self.batch_size, train=train, seed=seed, rank=rank,
                                         world_size=world_size, drop_last=drop_last)
        self.num_samples = self.sampler.num_samples
        self.workers = default_workers(int(workers))
        self.device = torch.device(device) if device is not None else None
        pin = self.device is not None and self.device.type == "cuda"
        self._norm = normalization_constants(self.mean, self.std, uint8=True, device=self.device)
        self._loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=self.sampler, num_workers=self.workers, collate_fn=_collate,
            pin_memory=pin, persistent_workers=self.workers > 0, prefetch_factor=4 if self.workers > 0 else None,
            worker_init_fn=_worker_init if self.workers > 0 else None)

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def skip_batches(self, n: int) -> None:
        """Start the next iteration at batch ``n`` without decoding the batches before it (mid-epoch resume).
        Exact: every sample's augmentation seed depends only on its position in the epoch."""
        self.sampler.start = int(n)

    def __iter__(self):
        for x, y, err in self._loader:
            if err:
                raise DataError(err)
            if self.device is not None:  # uint8 over the bus (pinned: asynchronous), float32 made there
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with single_thread():
                x = apply_normalization(x, *self._norm)
            yield x, y

    def __repr__(self) -> str:
        return (f"FolderLoader(n={len(self.dataset)}, size={self.dataset.size}, "
                f"batch_size={self.batch_size}, train={self.train}, workers={self.workers}, "
                f"batches={len(self)})")


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)  # decoding is per-process; avoid oversubscribing the cores


def build_folder_datasets(root: str | Path, size: int, augment: bool):
    """(train ImageFolder, val ImageFolder, class names) from ``root/train`` and ``root/val``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"ImageNet-style folders not found at {root}: no such directory; {HINT}")
    classes = find_classes(root / "train")
    class_to_idx = {c: i for i, c in enumerate(classes)}
    find_classes(root / "val")
    train = ImageFolder(scan(root / "train", class_to_idx), size, train_aug=augment)
    val = ImageFolder(scan(root / "val", class_to_idx), size, train_aug=False)
    return train, val, classes


__all__ = ["ImageFolder", "FolderLoader", "default_workers", "EpochBatchSampler", "build_folder_datasets",
           "train_transform", "val_transform", "random_resized_crop_box"]
