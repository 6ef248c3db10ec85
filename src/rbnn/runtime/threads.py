"""How the fast engine uses threads: numba's thread count per kernel (one thread for small work) and a pool
that runs a large batch as tiles, each tile single-threaded. Nothing here computes; it only schedules."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from .kernels import warmup_parallel_layer

# A large batch runs as tiles on parallel threads (the kernels release the GIL), each tile single-threaded, so
# the float glue between kernels (NumPy, one thread) runs in parallel too. Every op is per sample, so the logits
# equal the untiled run's exactly. A tile holds as many images as fit TILE_BYTES of the model's largest
# activation, at most TILE: the Python between a plan's steps is paid once per tile, so larger tiles are cheaper
# until a tile's activations leave the caches. Measured with each step's arrays reused between runs (2-core
# Zen 3, 2 threads, batch 128, µs per image, tiles of 8 / 16 / 32 / 64): resnet20 xnor 223 / 201-212 / 195-196 /
# 190, resnet20_bireal 262 / 240-245 / 227-229 / 224, resnet18_cifar (256 KB per image) 1331 / 1301 / 1303.
# Every step of a tile runs some Python under the GIL that the tile threads share, so fewer, larger tiles cost
# less until a tile's activations leave the caches. Intel Xeon (2 MB L2 per core), batch 128, ms
# per batch, 5 rounds, TILE_BYTES 1 / 2 / 4 MiB: resnet20 xnor 12.0-13.2 / 10.4-11.6 / 9.5-10.0, resnet20_bireal
# 13.8-14.5 / 12.0-12.7 / 11.4-12.4; resnet18_cifar 2 / 4 / 8 / 16 MiB: 56.7-57.4 / 55.2-57.0 / 59.0-60.1 /
# 62.6-64.0. 4 MiB gives ResNet-20 (64 KB per image) tiles of 64 and resnet18_cifar tiles of 16.
# Batches below TILE_MIN images per thread run untiled with every kernel multi-threaded.
TILE = 64
TILE_BYTES = 4 << 20
TILE_MIN = 8

# Work below this many uint64 word operations runs on one thread: waking the pool costs more than it saves
# (and on a loaded machine a parallel region waits a scheduler tick for its second thread). Measured on the
# quiet 2-core machine (batch 1 / 4): 1 << 14 took resnet18_cifar batch 1 from 7.3 to 4.9 ms and resnet20_bireal
# batch 4 from 8.4 to 5.6 ms against 1 << 20, with no loss anywhere; 1 << 12 gained nothing more.
SERIAL_BELOW = 1 << 14


_plan_threads = threading.local()  # inside a plan run: .full (the caller's count) and .current (as set now)


class serial_if_small:
    """Run the enclosed kernel on one thread when its work is small. Inside a plan run the thread count is
    switched lazily (only when the next kernel needs a different count) and restored once at the end of the
    run: each ``numba.set_num_threads`` costs ~10 µs, which at batch 1 was a third of the latency."""

    def __init__(self, work: int) -> None:
        self.small = work < SERIAL_BELOW
        self.restore = 0

    def __enter__(self):
        full = getattr(_plan_threads, "full", 0)
        if full:
            want = 1 if self.small else full
            if want != _plan_threads.current:
                numba.set_num_threads(want)
                _plan_threads.current = want
        elif self.small:
            self.restore = numba.get_num_threads()
            numba.set_num_threads(1)

    def __exit__(self, *exc) -> None:
        if self.restore:
            numba.set_num_threads(self.restore)


def switch_in_plan(small: bool) -> bool:
    """Inside a plan run: set the thread count for the next kernel (one thread when ``small``) lazily, as
    :class:`serial_if_small` does, without a context manager's cost. Returns False outside a plan run (nothing
    switched: use :class:`serial_if_small` there)."""
    full = getattr(_plan_threads, "full", 0)
    if not full:
        return False
    set_plan_threads(1 if small else full)
    return True


def set_plan_threads(threads: int) -> None:
    """Inside a plan run: run the next kernel on ``threads`` threads (switched lazily, restored at the run's end
    by :func:`run_managed`); outside one, nothing."""
    if getattr(_plan_threads, "full", 0) and threads != _plan_threads.current:
        numba.set_num_threads(threads)
        _plan_threads.current = threads


def restart_plan_threads() -> None:
    """Inside a plan run: back to the run's full thread count, as a run starts (see :mod:`.launches`)."""
    set_plan_threads(getattr(_plan_threads, "full", 0))


def threadsafe_layer() -> bool:
    """Whether numba's threading layer may be entered from several Python threads at once (omp, tbb). Without
    OpenMP or TBB numba falls back to "workqueue", which aborts the process on concurrent use: no tiles then."""
    try:
        return numba.threading_layer() != "workqueue"
    except ValueError:  # no parallel kernel has run yet in this process
        warmup_parallel_layer()
        return numba.threading_layer() != "workqueue"


def run_managed(run, x: np.ndarray, threads: int) -> np.ndarray:
    """``run(x)`` with lazy thread-count switching (see :class:`serial_if_small`); ``threads`` = the current
    numba thread count of this thread."""
    _plan_threads.full = _plan_threads.current = threads
    try:
        return run(x)
    finally:
        if _plan_threads.current != threads:
            numba.set_num_threads(threads)
        _plan_threads.full = 0



def tile_images(image_bytes: int) -> int:
    """Images per tile for a model whose largest activation is ``image_bytes`` per image (see :data:`TILE_BYTES`)."""
    return max(1, min(TILE, TILE_BYTES // max(1, image_bytes)))


class TiledRunner:
    """Runs a plan on a batch: a small batch untiled with multi-threaded kernels, a large one as tiles of
    :func:`tile_images` images on a thread pool (one per model and process), each tile single-threaded."""

    def __init__(self) -> None:
        self.pool: ThreadPoolExecutor | None = None
        self._pool_key = (0, 0)
        self._pool_lock = threading.Lock()

    @staticmethod
    def run_serial(run, x: np.ndarray) -> np.ndarray:
        """``run(x)`` with every kernel on this thread alone."""
        prev = numba.get_num_threads()  # thread-local in numba
        numba.set_num_threads(1)
        try:
            return run_managed(run, x, 1)
        finally:
            numba.set_num_threads(prev)

    def __call__(self, run, x: np.ndarray, image_bytes: int = 0) -> np.ndarray:
        """``run(x)``, tiled when the batch is large; ``image_bytes``: the largest activation of one image."""
        n, threads = x.shape[0], numba.get_num_threads()
        if threads < 2 or n < TILE_MIN * threads or not threadsafe_layer():
            return run_managed(run, x, threads)  # small batch: kernels use all threads unless tiny
        tile = min(tile_images(image_bytes), -(-n // threads))
        with self._pool_lock:
            # a forked child inherits the pool object but not its threads: make a new one there
            if self.pool is None or self._pool_key != (threads, os.getpid()):
                self.pool = ThreadPoolExecutor(threads, thread_name_prefix="rbnn-fast")
                self._pool_key = (threads, os.getpid())
            pool = self.pool
        parts = list(pool.map(lambda t: self.run_serial(run, t), [x[i : i + tile] for i in range(0, n, tile)]))
        return np.concatenate(parts)
