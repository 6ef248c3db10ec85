"""The activation buffers a fast-engine plan reuses from one run to the next, per thread.

Why: every step of a plan writes a fresh array, and a tile's activations (8 x 16x32x32 float32 = 512 KB) are
above glibc's mmap threshold, so each one was mapped, faulted in page by page, zeroed by the kernel and
unmapped again on every call; the two tile threads then also serialized on the process's memory map. Reusing
the previous run's arrays (as ONNX Runtime's arena does) took resnet20_bireal at batch 128 on 2 threads from
480 to ~280 µs per image (docs/deploy.md). Nothing here computes."""

from __future__ import annotations

import threading

import numpy as np


class StepBuffers:
    """One array per key (a plan step's node and role) and thread, handed out again by the next run on that
    thread. Only inside :meth:`active` runs; elsewhere :meth:`get` allocates a new array every time, so the ops
    called on their own (the reference-compatible API) never share memory.

    The contract of a caller: within one plan run a key is used once (each node runs once), and an array asked
    for ``zeroed`` is relied on only in the parts its caller never writes (the padding of a padded copy), which
    stay zero from the first run because the same call writes the same parts every time. The plan's result must
    be copied out before the next run (:meth:`FastOps.prepare` does)."""

    def __init__(self) -> None:
        self._local = threading.local()  # .arrays: {key: array} kept on this thread; .active: inside a run

    def get(self, key: tuple, shape: tuple[int, ...], dtype, zeroed: bool = False) -> np.ndarray:
        """An array of ``shape`` and ``dtype``: inside a run, the one this key got in the previous run on this
        thread when shape and dtype match (its old contents; zeros where ``zeroed`` and the caller's contract
        holds), else a new one (zeros if ``zeroed``), kept for the next run in place of the key's old one."""
        local = self._local
        if not getattr(local, "active", False):
            return np.zeros(shape, dtype) if zeroed else np.empty(shape, dtype)
        a = local.arrays.get(key)
        if a is None or a.shape != shape or a.dtype != dtype:
            a = local.arrays[key] = np.zeros(shape, dtype) if zeroed else np.empty(shape, dtype)
        return a

    def pooling(self, on: bool) -> None:
        """Inside a run on this thread: hand out :meth:`take`'s arrays from a pool shared by all steps (on), or
        per key like :meth:`get` (off). Turning it off returns every array still out to the pool, in a fixed
        order: runs of the same plan and shape take the same arrays in the same places."""
        local = self._local
        if getattr(local, "pool", None) is None:
            local.pool = {}
        for a in getattr(local, "taken", {}).values():
            local.pool.setdefault((a.shape, a.dtype.str), []).append(a)
        for free in local.pool.values():  # every run starts from the same order, so it gets the same arrays
            free.sort(key=lambda a: a.__array_interface__["data"][0])  # (which lets runs be replayed: .launches)
        local.taken = {}
        local.pooled = on

    def take(self, key: tuple, shape: tuple[int, ...], dtype) -> np.ndarray:
        """An array of ``shape`` and ``dtype`` with any contents (a step's float output): while pooling, one
        that an earlier step gave back (:meth:`give`) so that it is still in cache, else as :meth:`get`."""
        local = self._local
        if not getattr(local, "pooled", False):
            return self.get(key, shape, dtype)
        free = local.pool.get((shape, np.dtype(dtype).str))
        a = free.pop() if free else np.empty(shape, dtype)
        local.taken[id(a)] = a
        return a

    def owns(self, a, live) -> bool:
        """While pooling: whether ``a`` is an array :meth:`take` handed out and that exactly one value in ``live``
        (``a`` itself) uses, so that a step may overwrite it once that value is dead."""
        local = self._local
        if not getattr(local, "pooled", False) or not isinstance(a, np.ndarray) or id(a) not in local.taken:
            return False
        return sum(1 for v in live if isinstance(v, np.ndarray) and np.may_share_memory(a, v)) == 1

    def give(self, a, live) -> None:
        """While pooling: a dead value ``a`` back to the pool, when :meth:`take` handed it out and no value in
        ``live`` shares its memory (a reshaped or sliced view of it may outlive it); else nothing."""
        local = self._local
        if not getattr(local, "pooled", False) or not isinstance(a, np.ndarray) or id(a) not in local.taken:
            return
        if any(isinstance(v, np.ndarray) and np.may_share_memory(a, v) for v in live):
            return  # the pool gets it back when pooling ends
        del local.taken[id(a)]
        local.pool.setdefault((a.shape, a.dtype.str), []).append(a)

    def activate(self) -> bool:
        """Hand out kept arrays on this thread until :meth:`deactivate`; False (and nothing changed) if already
        active: a nested run then shares the outer run's arrays, so only the outermost run may activate."""
        local = self._local
        if getattr(local, "active", False):
            return False
        if getattr(local, "arrays", None) is None:
            local.arrays = {}
        local.active = True
        return True

    def deactivate(self) -> None:
        """Back to fresh arrays on this thread; the kept ones wait for the next run here."""
        self._local.active = False

    def release(self) -> None:
        """Drop this thread's kept arrays (one run's activations); a run in progress keeps its own."""
        self._local.arrays = {}
        self._local.pool = {}
