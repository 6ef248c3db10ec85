"""Where a training epoch's time goes, per method, on the schedule study's setting (resnet20_bireal, 1×28×28,
Fashion-MNIST, batch 128): one training step split by op (float conv forward / backward, BatchNorm, the
binarization nodes — sign, surrogate and RBNN's standardized sign, forward and backward —, optimizer, rest),
and the per-epoch work outside the steps (reading the data, RBNN's rotation update, evaluation on the test set).

    python benchmarks/bench_train_split.py [--methods fp,xnor,irnet,rbnn] [--threads 2] [--steps 6]

Run it on a quiet machine; it prints the CPU model. Profiler times are self CPU times summed over ops (the
profiler adds a little overhead per op; the step wall time is measured without it).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from machine import cpu_name
from torch.profiler import ProfilerActivity, profile, record_function

from rbnn.config import load_config
from rbnn.data import build_loaders
from rbnn.nn.layers import binary_modules
from rbnn.run import build_model
from rbnn.train.loop import evaluate

BINARIZE = ("Sign", "StandardizedSign")  # autograd Function names (forward) and their "...Backward" nodes


def _bucket(event) -> str:
    """The category of a profiler event, from itself and its ancestors."""
    e = event
    while e is not None:
        name = e.name
        if name == "optimizer.step":
            return "optimizer"
        if name.startswith(BINARIZE) or any(f"{b}Backward" in name for b in BINARIZE):
            return "binarize"
        e = e.cpu_parent
    name = event.name
    if "convolution_backward" in name:
        return "conv backward"
    if "convolution" in name:
        return "conv forward"
    if "batch_norm" in name:
        return "batchnorm"
    return "rest"


def step_split(model, x, y, opt, steps: int) -> tuple[float, dict[str, float]]:
    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with record_function("optimizer.step"):
            opt.step()

    for _ in range(3):
        step()
    walls = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        walls.append(time.perf_counter() - t0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    buckets: dict[str, float] = {}
    for e in prof.events():
        b = _bucket(e)
        buckets[b] = buckets.get(b, 0.0) + e.self_cpu_time_total / 1e3 / steps  # ms per step
    return statistics.median(walls) * 1e3, buckets


def epoch_parts(cfg, model, train_loader, test_loader) -> dict[str, float]:
    t0 = time.perf_counter()
    for _ in train_loader:
        pass
    data = time.perf_counter() - t0
    layers = [m for _, m in binary_modules(model) if m.recipe.rotation]
    t0 = time.perf_counter()
    for m in layers:
        m.update_rotation()
    rot = time.perf_counter() - t0
    t0 = time.perf_counter()
    evaluate(model, test_loader, torch.device("cpu"), progress_enabled=False)
    ev = time.perf_counter() - t0
    return {"data s/epoch": data, "rotation s/epoch": rot, "eval s/epoch": ev}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--methods", default="fp,xnor,irnet,rbnn")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--subset", type=int, default=10000)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"CPU {cpu_name()}, {a.threads} threads, torch {torch.__version__}; resnet20_bireal, Fashion-MNIST "
          f"(first {a.subset} train images, full test set), batch 128; ms per step (profiler split) and s per epoch")
    cols = ["conv forward", "conv backward", "batchnorm", "binarize", "optimizer", "rest"]
    print(f"{'method':>10} {'step ms':>8} " + " ".join(f"{c:>13}" for c in cols)
          + f" {'data s':>7} {'rot s':>6} {'eval s':>7}")
    for method in a.methods.split(","):
        cfg = load_config(None, ["model=resnet20_bireal", "model_init=reference", f"method={method}",
                                 f"data.subset={a.subset}", "batch_size=128", "optim.name=sgd", "optim.lr=0.1",
                                 "optim.momentum=0.9", "optim.weight_decay=1e-4"])
        train_loader, test_loader, info = build_loaders(cfg.data, cfg.batch_size, cfg.eval_batch_size, cfg.seed)
        torch.manual_seed(0)
        model = build_model(cfg, info.num_classes, info.input_size)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        x, y = next(iter(train_loader))
        model.train()
        wall, buckets = step_split(model, x, y, opt, a.steps)
        parts = epoch_parts(cfg, model, train_loader, test_loader)
        print(f"{method:>10} {wall:8.1f} " + " ".join(f"{buckets.get(c, 0.0):13.1f}" for c in cols)
              + f" {parts['data s/epoch']:7.2f} {parts['rotation s/epoch']:6.2f} {parts['eval s/epoch']:7.2f}",
              flush=True)


if __name__ == "__main__":
    main()
