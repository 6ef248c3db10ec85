"""DDP throughput on CPU: 2 processes x 1 thread (gloo DDP) vs 1 process x 2 threads, same config, same run.

    python benchmarks/bench_ddp.py [--repeats 2] [--subset 4096] [--epochs 2] [key=value ...]

Each variant is a real ``rbnn train`` (``nproc=2 threads=1`` vs ``threads=2``) with the same global batch, run
alternately (A B A B ...) so that load from other jobs hits both alike. The figure is the training throughput
of the last epoch (img/s from metrics.csv; the first epoch includes warm-up), the best of the repeats. It
prints each measurement, the load average before and after, and the ratio DDP / threads.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(variant: list[str], common: list[str], out: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "OMP_NUM_THREADS"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "rbnn", "train", *common, *variant, f"out={out}"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-2000:]}")
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    return float(rows[-1]["train_img_per_s"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--subset", type=int, default=4096)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    common = ["model=smallnet", "method=rbnn", "data=synthetic", f"data.subset={a.subset}",
              "data.test_subset=256", "batch_size=128", f"epochs={a.epochs}", "export=false",
              "diagnostics=false", "device=cpu",
              "progress=false", *a.overrides]
    variants = {"ddp 2 proc x 1 thread": ["nproc=2", "threads=1"], "1 proc x 2 threads": ["threads=2"]}
    load0 = os.getloadavg()
    results: dict[str, list[float]] = {k: [] for k in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(a.repeats):
            for i, (name, v) in enumerate(variants.items()):
                t0 = time.perf_counter()
                ips = run(v, common, Path(tmp) / f"{rep}-{i}")
                results[name].append(ips)
                wall = time.perf_counter() - t0
                print(f"repeat {rep + 1}  {name:<24} {ips:9.0f} img/s  ({wall:.0f} s wall)", flush=True)
    load1 = os.getloadavg()
    best = {k: max(v) for k, v in results.items()}
    ddp, thr = best["ddp 2 proc x 1 thread"], best["1 proc x 2 threads"]
    print(f"config: {' '.join(common)}")
    print(f"load average before {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, "
          f"after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f} on {os.cpu_count()} cores")
    print(f"best img/s: DDP 2x1 {ddp:.0f}, threads 1x2 {thr:.0f}; ratio DDP/threads = {ddp / thr:.2f}")


if __name__ == "__main__":
    main()
