"""RBNN cost, measured as ratios in one run: training step time of rbnn vs xnor on the same model, and the
wall time of one rotation update of every binary layer of ImageNet ResNet-18.

    python benchmarks/bench_rbnn.py [--model resnet20_bireal] [--batch 128] [--steps 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

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
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    size = tuple(a.size)
    # interleave the two methods so machine-load drift hits both alike
    xs, rs = [], []
    for _ in range(2):
        xs += step_times(a.model, "xnor", a.batch, a.steps // 2, size)
        rs += step_times(a.model, "rbnn", a.batch, a.steps // 2, size)
    mx, mr = statistics.median(xs), statistics.median(rs)
    print(f"{a.model}, batch {a.batch}, input {size}, {a.threads} threads, median of {len(xs)} steps after warm-up")
    print(f"  xnor step {mx * 1e3:.1f} ms ({a.batch / mx:.0f} img/s)   rbnn step {mr * 1e3:.1f} ms "
          f"({a.batch / mr:.0f} img/s)")
    print(f"  rbnn / xnor step-time ratio: {mr / mx:.3f} (quartile range "
          f"{statistics.quantiles(rs)[0] / statistics.quantiles(xs)[2]:.2f}-"
          f"{statistics.quantiles(rs)[2] / statistics.quantiles(xs)[0]:.2f})")
    sec, n = rotation_update_seconds()
    print(f"  one rotation update (3 cycles) of all {n} binary layers of ImageNet resnet18: {sec:.3f} s")


if __name__ == "__main__":
    main()
