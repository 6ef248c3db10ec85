"""Epoch-seeded sharding and the fast in-memory loader.

Reproducibility: every random draw of an epoch comes from generators seeded by ``mix_seed(seed, epoch, ...)``
and created afresh in ``__iter__``; nothing carries over between epochs. Resuming at epoch ``e`` (after
``set_epoch(e)``) therefore yields exactly the batches an uninterrupted run sees at epoch ``e``.

Distributed sharding (rank ``r`` of ``W``), as ``torch.utils.data.DistributedSampler``:

* train: the global permutation (seeded by ``(seed, epoch)`` only) is the same on every rank; it is padded to
  a multiple of ``W`` by repeating its head, and rank ``r`` takes ``perm[r::W]``. Every rank gets the same
  number of samples and batches (DDP needs that); the padding repeats at most ``W - 1`` samples per epoch.
* test: no shuffle and no padding: rank ``r`` takes ``r, r + W, r + 2W, ...``. The shards are disjoint and
  cover the test set exactly once, so all-reducing correct counts and totals gives the exact accuracy. Ranks
  may differ by one sample (and so by one batch); evaluation needs no collective per batch.

Batch sizes: ``batch_size`` given to ``build_loaders`` is the global batch; each rank yields batches of
``batch_size // world_size`` (its ``batch_size`` attribute), ``global_batch_size`` keeps the global value.
"""

from __future__ import annotations

import math

import torch

from .augment import BatchAugment, normalize

_MASK64 = (1 << 64) - 1


def mix_seed(*parts: int) -> int:
    """Deterministic 63-bit seed from integers (splitmix64 over the parts), stable across runs/platforms."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        z = h
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        h = z ^ (z >> 31)
    return h & ((1 << 63) - 1)


# generator streams derived from (seed, epoch)
STREAM_SHUFFLE = 1
STREAM_AUGMENT = 2


def epoch_generator(seed: int, epoch: int, stream: int, rank: int = 0) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(mix_seed(seed, epoch, stream, rank))
    return g


class single_thread:
    """Run the enclosed tensor ops on one intra-op thread, restoring the caller's setting afterwards.

    Batch assembly is a handful of ~100k-element ops; torch splits those over its OpenMP threads, and on a
    busy machine (more runnable processes than cores) every parallel region waits for a time slice: measured
    here, 2 threads gave ~640 img/s and 1 thread ~43,000 img/s for the same Fashion-MNIST batches. The
    restore happens before each ``yield``, so the training step keeps its own thread count.
    """

    def __enter__(self):
        self.prev = torch.get_num_threads()
        if self.prev != 1:
            torch.set_num_threads(1)

    def __exit__(self, *exc):
        if self.prev != 1:
            torch.set_num_threads(self.prev)
        return False


def shard_indices(n: int, *, seed: int, epoch: int, shuffle: bool, rank: int, world_size: int,
                  pad: bool) -> torch.Tensor:
    """Indices of the ``n`` samples this rank visits this epoch (see the module docstring)."""
    if shuffle:
        order = torch.randperm(n, generator=epoch_generator(seed, epoch, STREAM_SHUFFLE))
    else:
        order = torch.arange(n)
    if world_size > 1:
        if pad and n > 0:
            total = math.ceil(n / world_size) * world_size
            if total > n:
                reps = math.ceil(total / n)
                order = order.repeat(reps)[:total] if reps > 1 else torch.cat([order, order[: total - n]])
        order = order[rank::world_size]
    return order


def shard_size(n: int, rank: int, world_size: int, pad: bool) -> int:
    if world_size <= 1:
        return n
    if pad:
        return math.ceil(n / world_size) if n > 0 else 0
    return len(range(rank, n, world_size))


def num_batches(num_samples: int, batch_size: int, drop_last: bool, drop_single: bool) -> int:
    """Batches per epoch: partial last batch kept unless ``drop_last``, or ``drop_single`` and it holds 1."""
    full, rest = divmod(num_samples, batch_size)
    if rest == 0 or drop_last or (drop_single and rest == 1):
        return full
    return full + 1


class InMemoryLoader:
    """Batches of a uint8 image tensor held in memory: index with a permutation, augment, normalize.

    ``images``: uint8 (N, C, H, W); ``labels``: int64 (N,). Yields ``(x, y)`` with ``x`` float32 normalized
    by ``mean``/``std`` and ``y`` int64. ``train=True`` shuffles (seeded by ``(seed, epoch)``), applies
    ``augment``, pads the shard across ranks, and drops a last batch of exactly one sample (BatchNorm in
    train mode cannot take it); ``train=False`` keeps the order, never augments, and keeps every sample
    unless ``drop_last``.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, mean, std,
                 train: bool, augment: BatchAugment | None = None, seed: int = 0, rank: int = 0,
                 world_size: int = 1, drop_last: bool = False, global_batch_size: int | None = None):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be a uint8 (N, C, H, W) tensor, "
                             f"got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        self.images = images.contiguous()
        self._flat = self.images.view(images.shape[0], -1)  # 2-D index_select is ~10x faster than 4-D
        self.labels = labels.to(torch.int64).contiguous()
        self.batch_size = int(batch_size)
        self.global_batch_size = int(global_batch_size or batch_size * world_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.train = train
        self.augment = augment if (train and augment is not None and augment.active) else None
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self.num_samples = shard_size(len(self.labels), self.rank, self.world_size, pad=train)

    @property
    def dataset_size(self) -> int:
        return len(self.labels)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return num_batches(self.num_samples, self.batch_size, self.drop_last, drop_single=self.train)

    def indices(self) -> torch.Tensor:
        """Sample indices this rank visits in the current epoch, in order (before dropping batches)."""
        return shard_indices(len(self.labels), seed=self.seed, epoch=self.epoch, shuffle=self.train,
                             rank=self.rank, world_size=self.world_size, pad=self.train)

    def __iter__(self):
        idx = self.indices()
        gen = epoch_generator(self.seed, self.epoch, STREAM_AUGMENT, self.rank) if self.augment else None
        bs = self.batch_size
        for b in range(len(self)):
            with single_thread():
                sel = idx[b * bs:(b + 1) * bs]
                x = self._flat.index_select(0, sel).view(len(sel), *self.images.shape[1:])
                if gen is not None:
                    x = self.augment(x, gen)
                x = normalize(x, self.mean, self.std)
                y = self.labels.index_select(0, sel)
            yield x, y

    def __repr__(self) -> str:
        return (f"InMemoryLoader(n={self.dataset_size}, shape={tuple(self.images.shape[1:])}, "
                f"batch_size={self.batch_size}, train={self.train}, augment={self.augment}, "
                f"rank={self.rank}/{self.world_size}, batches={len(self)})")
