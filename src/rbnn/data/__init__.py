"""Datasets and loaders from local files only (nothing is ever downloaded).

``build_loaders(cfg, batch_size, eval_batch_size, seed, rank, world_size) -> (train, test, info)``

Datasets (``data.name``):

==============  =========================================================================================
fashion-mnist   IDX files, default root ``/usr/share/datasets/fashion-mnist`` (``dataset-fashion-mnist``)
mnist           IDX files under ``data.root`` (same file names)
idx             any unsigned-byte IDX image/label files under ``data.root`` (same file names); classes =
                max training label + 1, mean/std measured on the training images
cifar10         ``cifar-10-batches-py`` pickles under ``data.root`` (the directory or its parent)
imagenet        ``data.root/train/<class>/*`` and ``data.root/val/<class>/*``, decoded by Pillow in
                ``data.workers`` processes; ``data.image_size`` defaults to 224
synthetic       deterministic class templates + noise (:mod:`rbnn.data.synthetic`): 1 x S x S with
                S = ``data.image_size`` (default 28), 10 classes, ``data.subset`` (default 2048) training
                and ``data.test_subset`` (default 512) test images. If ``DataConfig`` has ``channels`` /
                ``num_classes`` fields they are used (0 = default).
==============  =========================================================================================

Loaders (``InMemoryLoader`` for everything except ``imagenet``, which uses ``FolderLoader``) have
``set_epoch(epoch)``, ``__iter__`` yielding ``(x float32 (N, C, H, W) normalized, y int64 (N,))``,
``__len__`` (batches on this rank), ``batch_size`` (per-rank batch = global // world_size),
``global_batch_size`` and ``num_samples`` (samples this rank visits per epoch). Shuffling and augmentation
are a pure function of ``(seed, epoch, rank)``; see :mod:`rbnn.data.loader` for the sharding rules (train:
``DistributedSampler``-style padding; test: disjoint shards without padding, all-reduce counts and totals).

Augmentation (``data.augment``; None = the dataset default): cifar10 -> pad-4 random crop + horizontal flip
(on by default); imagenet -> RandomResizedCrop + flip (on by default); fashion-mnist / idx / synthetic ->
pad-2 crop + flip when turned on (off by default); mnist -> pad-2 crop only (flipping digits changes them).

``data.workers`` applies to ``imagenet`` only (-1, the default: from the CPU count, see
``rbnn.data.imagefolder.default_workers``; 0: decode in the training process): the in-memory loaders build
each batch with a few tensor ops in the calling process (on one intra-op thread, see
``rbnn.data.loader.single_thread``), faster than a pool.

``data.image_size`` for the in-memory datasets: 0 or the native size keeps the images; another value
resizes them once at load time (bilinear, antialiased), e.g. 32 to feed 28x28 data to a CIFAR network.
A size whose resized copy (or synthetic data, or one ImageNet batch) would not fit in the memory available
now is refused before anything is allocated, with the memory it would need (:mod:`rbnn.data.memory`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ..config import DataConfig
from ..errors import DataError
from . import cifar, idx, imagefolder
from .augment import BatchAugment, default_pad
from .imagefolder import FolderLoader, build_folder_datasets
from .loader import InMemoryLoader, mix_seed
from .memory import ensure_fits
from .synthetic import make_synthetic

DATASETS = ("fashion-mnist", "mnist", "idx", "cifar10", "imagenet", "synthetic")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATION = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": (IMAGENET_MEAN, IMAGENET_STD),  # as the RBNN reference code
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}
SYNTHETIC_TRAIN, SYNTHETIC_TEST, SYNTHETIC_CLASSES = 2048, 512, 10


@dataclass
class DatasetInfo:
    name: str
    num_classes: int
    input_size: tuple[int, int, int]  # (C, H, W) of the batches the loaders yield
    train_size: int  # training samples (after data.subset), all ranks together
    test_size: int  # test samples (after data.test_subset), all ranks together
    mean: tuple
    std: tuple
    classes: tuple = ()  # class names where known


class Loader(Protocol):
    batch_size: int

    def set_epoch(self, epoch: int) -> None: ...

    def __iter__(self): ...

    def __len__(self) -> int: ...


def _subset(n_avail: int, n: int, key: str, where: str) -> int:
    if n < 0:
        raise DataError(f"data.{key}={n}: expected 0 (all) or a positive count")
    if n > n_avail:
        raise DataError(f"data.{key}={n} exceeds the {n_avail} images in {where}; use 0 for all of them")
    return n or n_avail


_RESIZE_CHUNK = 8192


def _check_resize_memory(n: int, shape: tuple[int, ...], size: int, where: str) -> None:
    """Refuse, before allocating, a ``data.image_size`` whose resized copy (uint8) plus the float32 work
    buffers of one chunk would not fit in memory (a typo such as 2800 for 28)."""
    if size <= 0 or tuple(shape[-2:]) == (size, size):
        return
    c, h, w = shape
    chunk = min(n, _RESIZE_CHUNK)
    need = n * c * size * size + chunk * c * (h * w + 2 * size * size) * 4
    ensure_fits(need, f"data.image_size={size}: resizing {n} images of {where} to {c}x{size}x{size}",
                "use a smaller data.image_size (0 keeps the native size) or data.subset")


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if size <= 0 or images.shape[-2:] == (size, size):
        return images
    out = []
    for chunk in images.split(_RESIZE_CHUNK):
        r = F.interpolate(chunk.float(), size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True)
        out.append(r.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


def _check_labels(labels: np.ndarray, num_classes: int, where) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"labels in {where} must be in [0, {num_classes}), "
                        f"found {labels.min()}..{labels.max()}")


def _measured_norm(images: torch.Tensor) -> tuple[tuple, tuple]:
    x = images[:20000].to(torch.float64) / 255.0
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)


@dataclass
class Arrays:
    """An in-memory dataset after subsets and resizing: uint8 NCHW images, int64 labels, and what describes it."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple
    std: tuple
    classes: tuple
    where: str  # the files' location (for messages), or "synthetic data"


def _read_idx(cfg: DataConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, tuple, str]:
    """Fashion-MNIST / MNIST / any IDX files: (train x, train y, test x, test y, classes count, names, where)."""
    name = cfg.name
    if cfg.root is None and name != "fashion-mnist":
        raise DataError(f"data.name={name} needs data.root: {idx.IDX_HINT}")
    root = Path(cfg.root or idx.FASHION_MNIST_ROOT)
    hint = idx.FASHION_MNIST_HINT if name == "fashion-mnist" else idx.IDX_HINT
    label = {"fashion-mnist": "Fashion-MNIST", "mnist": "MNIST", "idx": "IDX dataset"}[name]
    xtr, ytr, _, ltr = idx.load_idx_split(root, "train", hint, label)
    xte, yte, _, lte = idx.load_idx_split(root, "test", hint, label)
    if name == "idx":
        num_classes = int(ytr.max()) + 1 if ytr.size else 1
        classes: tuple = ()
    else:
        num_classes = 10
        classes = idx.FASHION_MNIST_CLASSES if name == "fashion-mnist" else idx.MNIST_CLASSES
        for path, x in ((ltr, xtr), (lte, xte)):
            if x.shape[-2:] != (28, 28):
                raise DataError(f"{label} images at {path.parent} are {x.shape[-2]}x{x.shape[-1]}, expected 28x28")
    _check_labels(ytr, num_classes, ltr)
    _check_labels(yte, num_classes, lte)
    if xtr.shape[1:] != xte.shape[1:]:
        raise DataError(f"IDX images under {root}: train {xtr.shape[1:]} and test {xte.shape[1:]} shapes differ")
    return xtr, ytr, xte, yte, num_classes, classes, str(root)


def _synthetic_arrays(cfg: DataConfig) -> Arrays:
    size = cfg.image_size or 28
    channels = int(getattr(cfg, "channels", 0) or 1)
    num_classes = int(getattr(cfg, "num_classes", 0) or SYNTHETIC_CLASSES)
    if cfg.subset < 0 or cfg.test_subset < 0:
        raise DataError("data.subset and data.test_subset must be >= 0 (0 = the synthetic defaults "
                        f"{SYNTHETIC_TRAIN}/{SYNTHETIC_TEST})")
    ntr, nte = cfg.subset or SYNTHETIC_TRAIN, cfg.test_subset or SYNTHETIC_TEST
    # uint8 images of both splits, plus the float32 template copy and noise of the larger one
    need = (ntr + nte) * channels * size * size + 3 * 4 * max(ntr, nte) * channels * size * size
    ensure_fits(need, f"synthetic data of {ntr}+{nte} images of {channels}x{size}x{size} (data.image_size)",
                "use a smaller data.image_size or data.subset / data.test_subset")
    xtr, ytr = make_synthetic(ntr, num_classes, (channels, size, size), seed=0, split="train")
    xte, yte = make_synthetic(nte, num_classes, (channels, size, size), seed=0, split="test")
    mean, std = _measured_norm(xtr)
    return Arrays(xtr, ytr, xte, yte, num_classes, mean, std, tuple(f"class{i}" for i in range(num_classes)),
                  "synthetic data")


def load_arrays(cfg: DataConfig) -> Arrays:
    """An in-memory dataset (every ``data.name`` but imagenet), with subsets and resizing applied."""
    if cfg.name == "synthetic":
        return _synthetic_arrays(cfg)
    if cfg.name == "cifar10":
        if cfg.root is None:
            raise DataError(f"data.name=cifar10 needs data.root: {cifar.HINT}")
        d = cifar.load_cifar10(cfg.root)
        (xtr, ytr), (xte, yte) = d["train"], d["test"]
        num_classes, classes, where = 10, cifar.CLASSES, str(cifar.find_dir(cfg.root))
    else:
        xtr, ytr, xte, yte, num_classes, classes, where = _read_idx(cfg)
    if len(ytr) == 0 or len(yte) == 0:
        raise DataError(f"{where}: {len(ytr)} training and {len(yte)} test images; each split needs at least one")
    ntr = _subset(len(ytr), cfg.subset, "subset", where)
    nte = _subset(len(yte), cfg.test_subset, "test_subset", where)
    _check_resize_memory(ntr + nte, xtr.shape[1:], cfg.image_size, where)
    xtr_t = _resize(torch.from_numpy(np.ascontiguousarray(xtr[:ntr])), cfg.image_size)
    xte_t = _resize(torch.from_numpy(np.ascontiguousarray(xte[:nte])), cfg.image_size)
    mean, std = _measured_norm(xtr_t) if cfg.name == "idx" else NORMALIZATION[cfg.name]
    return Arrays(xtr_t, torch.from_numpy(ytr[:ntr].astype(np.int64)), xte_t,
                  torch.from_numpy(yte[:nte].astype(np.int64)), num_classes, mean, std, tuple(classes), where)


def default_augment(name: str, size: int, augment: bool | None) -> BatchAugment:
    on = augment if augment is not None else name == "cifar10"
    if not on:
        return BatchAugment()
    return BatchAugment(pad=default_pad(size), flip=name != "mnist")


def _per_rank(batch: int, world_size: int, key: str) -> int:
    if batch < 1:
        raise DataError(f"{key}={batch}: expected a positive batch size")
    if batch < world_size:
        raise DataError(f"{key}={batch} is smaller than the {world_size} processes: each needs >= 1 sample")
    return batch // world_size


def build_loaders(cfg: DataConfig, batch_size: int, eval_batch_size: int, seed: int, rank: int = 0,
                  world_size: int = 1, device: torch.device | str | None = None
                  ) -> tuple[Loader, Loader, DatasetInfo]:
    """Train and test loaders for this rank plus the dataset's description (see the module docstring).
    ``device``: where the image-folder loaders deliver their batches (pinned, asynchronous copies on CUDA);
    the in-memory loaders always yield CPU batches."""
    if cfg.name not in DATASETS:
        raise DataError(f"unknown dataset data.name={cfg.name!r}: expected one of {', '.join(DATASETS)}")
    bs = _per_rank(batch_size, world_size, "batch_size")
    ebs = _per_rank(eval_batch_size, world_size, "eval_batch_size")
    common = dict(seed=seed, rank=rank, world_size=world_size)
    if cfg.name == "imagenet":
        if cfg.root is None:
            raise DataError(f"data.name=imagenet needs data.root: {imagefolder.HINT}")
        size = cfg.image_size or 224
        ensure_fits(max(bs, ebs) * 3 * size * size * 9, f"data.image_size={size}: one batch of {max(bs, ebs)} "
                    f"images of 3x{size}x{size}", "use a smaller data.image_size or batch size")
        aug = True if cfg.augment is None else cfg.augment
        train_ds, val_ds, classes = build_folder_datasets(cfg.root, size, aug)
        ntr = _subset(len(train_ds), cfg.subset, "subset", f"{cfg.root}/train")
        nte = _subset(len(val_ds), cfg.test_subset, "test_subset", f"{cfg.root}/val")
        train_ds.samples = train_ds.samples[:ntr]
        val_ds.samples = val_ds.samples[:nte]
        train = FolderLoader(train_ds, bs, mean=IMAGENET_MEAN, std=IMAGENET_STD, train=True,
                             workers=cfg.workers, global_batch_size=batch_size, device=device, **common)
        test = FolderLoader(val_ds, ebs, mean=IMAGENET_MEAN, std=IMAGENET_STD, train=False,
                            workers=cfg.workers, drop_last=cfg.drop_last_test,
                            global_batch_size=eval_batch_size, device=device, **common)
        info = DatasetInfo("imagenet", len(classes), (3, size, size), ntr, nte, IMAGENET_MEAN, IMAGENET_STD,
                           tuple(classes))
        return train, test, info

    d = load_arrays(cfg)
    aug = default_augment(cfg.name, d.train_x.shape[-1], cfg.augment)
    train = InMemoryLoader(d.train_x, d.train_y, bs, mean=d.mean, std=d.std, train=True, augment=aug,
                           global_batch_size=batch_size, **common)
    test = InMemoryLoader(d.test_x, d.test_y, ebs, mean=d.mean, std=d.std, train=False,
                          drop_last=cfg.drop_last_test, global_batch_size=eval_batch_size, **common)
    info = DatasetInfo(cfg.name, d.num_classes, tuple(d.train_x.shape[1:]), len(d.train_y), len(d.test_y),
                       tuple(d.mean), tuple(d.std), tuple(d.classes))
    return train, test, info


__all__ = ["DATASETS", "Arrays", "DatasetInfo", "Loader", "InMemoryLoader", "FolderLoader", "BatchAugment",
           "build_loaders", "load_arrays", "make_synthetic", "mix_seed"]
