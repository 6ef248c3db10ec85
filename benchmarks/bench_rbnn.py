"""Training cost, measured as ratios in one run: the training step time of each method (fp, xnor, irnet, rbnn
by default) relative to xnor on the same model, interleaved so machine-load drift hits all alike, and the wall
time of one rotation update of every binary layer of ImageNet ResNet-18. ``fp`` (the same network in float) is
the floor a binary method's training step cannot go under: its convolutions are the same float convolutions.

    python benchmarks/bench_rbnn.py [--model resnet20_bireal] [--batch 128] [--steps 20] [--threads 2]
                                    [--methods fp,xnor,irnet,rbnn]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from machine import cpu_name

from rbnn.models import create
from rbnn.nn.layers import binary_modules


def step_times(model_name: str, method: str, batch: int, steps: int, size, classes: int = 10) -> list[float]:
    torch.manual_seed(0)
    model = create(model_name, method=method, num_classes=classes, input_size=size)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, *size)
    y = torch.randint(0, classes, (batch,))
    times = []
    for i in range(steps + 3):
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 3:  # warm-up
            times.append(time.perf_counter() - t0)
    return times


def rotation_update_seconds(model_name: str = "resnet18", repeats: int = 3) -> tuple[float, int]:
    torch.manual_seed(0)
    model = create(model_name, method="rbnn", num_classes=1000, input_size=(3, 224, 224))
    layers = [m for _, m in binary_modules(model) if m.recipe.rotation]
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for m in layers:
            m.update_rotation()
        best = min(best, time.perf_counter() - t0)
    return best, len(layers)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="resnet20_bireal")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", type=int, nargs=3, default=(1, 28, 28))
    p.add_argument("--methods", default="fp,xnor,irnet,rbnn", help="comma-separated; ratios are against xnor")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    size = tuple(a.size)
    methods = a.methods.split(",")
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(2):  # interleaved: machine-load drift hits every method alike
        for m in methods:
            times[m] += step_times(a.model, m, a.batch, a.steps // 2, size)
    cpu = cpu_name()
    print(f"{a.model}, batch {a.batch}, input {size}, {a.threads} threads, median of {a.steps} steps after warm-up; "
          f"CPU {cpu}, torch {torch.__version__}")
    base = statistics.median(times["xnor"]) if "xnor" in times else None
    for m, ts in times.items():
        med = statistics.median(ts)
        q = statistics.quantiles(ts)
        rel = f"   {med / base:.3f}x xnor" if base else ""
        print(f"  {m:>10}: step {med * 1e3:6.1f} ms (quartiles {q[0] * 1e3:.0f}-{q[2] * 1e3:.0f}), "
              f"{a.batch / med:5.0f} img/s{rel}")
    sec, n = rotation_update_seconds()
    print(f"  one rotation update (3 cycles) of all {n} binary layers of ImageNet resnet18: {sec:.3f} s")


if __name__ == "__main__":
    main()
