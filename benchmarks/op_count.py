"""Operators and host syncs per training step, counted with torch.profiler and a sync counter on CPU.

    PYTHONPATH=src python benchmarks/op_count.py [--steps 6] [key=value ...]

Defaults: ``model=resnet18 method=rbnn-faithful optim.name=sgd`` (the paper optimizer) on synthetic 3x32x32
data, batch 16, one process. A callback
starts the profiler at the end of step 2 and stops it ``--steps`` steps later, so the count covers whole
iterations of the real engine loop (loader, forward, backward, optimizer, callbacks, bookkeeping), not a
hand-written copy of it. Prints aten operators per step (all, and top-level only: what the dispatcher is
asked for by Python), the most frequent top-level ones, and host syncs per step (``item``,
``tolist``, ``bool``/``float``/``int`` of a tensor, ``numpy``, ``cpu``: each waits for the GPU on CUDA).
Counts, not timings: they do not depend on the load of the machine.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from rbnn.config import load_config
from rbnn.train import engine

SYNC_METHODS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu"}


class SyncCounter(TorchFunctionMode):
    """Counts the tensor methods that copy a value to the host (a device sync on CUDA)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter = collections.Counter()
        self.active = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if self.active and name in SYNC_METHODS:
            # the optimizers read their CPU-resident step counters with item(): not a device sync
            caller = sys._getframe(1).f_code.co_filename
            self.counts[name + (" (torch.optim, CPU step counter)" if "torch/optim" in caller else "")] += 1
        return func(*args, **(kwargs or {}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    first, last = 2, 2 + a.steps
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
    syncs = SyncCounter()

    class Window(engine.Callback):
        def on_step_end(self, epoch, batch):
            if batch == first:
                prof.start()
                syncs.active = True
            elif batch == last:
                syncs.active = False
                prof.stop()

    original = engine.build_callbacks
    engine.build_callbacks = lambda model, cfg: original(model, cfg) + [Window()]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, ["model=resnet18", "method=rbnn-faithful", "optim.name=sgd", "optim.lr=0.1",
                                 "data=synthetic", "data.channels=3",
                                 "data.image_size=32", f"data.subset={16 * (last + 2)}", "data.test_subset=16",
                                 "batch_size=16", "eval_batch_size=16", "epochs=1", "export=false",
                                 "threads=1", "device=cpu", f"out={Path(tmp) / 'r'}", *a.overrides])
        with syncs:
            engine.train(cfg)
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    top = [e for e in events if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
    device_syncs = sum(n for k, n in syncs.counts.items() if "torch.optim" not in k)
    print(f"{cfg.model} {cfg.method.name} {cfg.optim.name}: {len(events) / a.steps:.0f} aten ops per step "
          f"({len(top) / a.steps:.0f} top-level), {device_syncs / a.steps:.2f} host syncs per step "
          f"{dict(syncs.counts)} over {a.steps} steps")
    for name, n in collections.Counter(e.name for e in top).most_common(12):
        print(f"  {name:<32} {n / a.steps:7.1f}")


if __name__ == "__main__":
    sys.exit(main())
