"""Image-folder loader throughput: decoded, augmented training images per second per worker process.

    PYTHONPATH=src python benchmarks/bench_folder_loader.py [--images 384] [--workers 0 1 2] [--size 224]

Writes a synthetic ImageNet-like class-folder tree to a temporary directory (JPEG, quality 90, 300-500 x
260-440 pixels, near ImageNet's mean of ~400 x 350; smooth content plus noise, ~50 KB per file, about half
ImageNet's mean: decoding cost follows the pixel count more than the bytes), then runs the
training loader (RandomResizedCrop + flip, uint8 out, normalization in the main process as on a CPU run)
for one epoch per worker count, after one warm-up epoch (persistent workers are already started). Prints
img/s and img/s per worker (for 0 workers: decoding in the training process itself). On a machine shared with
other jobs the numbers are lower bounds.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rbnn.config import DataConfig
from rbnn.data import build_loaders


def write_tree(root: Path, images: int, classes: int = 8, seed: int = 0) -> float:
    """``images`` training JPEGs in ``classes`` folders (plus a tiny val split); returns the mean file size."""
    rng = np.random.default_rng(seed)
    sizes = []
    for split, n in (("train", images), ("val", classes)):
        for i in range(n):
            cls = root / split / f"c{i % classes}"
            cls.mkdir(parents=True, exist_ok=True)
            w, h = int(rng.integers(300, 500)), int(rng.integers(260, 440))
            # smooth gradients plus noise: compresses like a photograph rather than like white noise
            yy, xx = np.mgrid[0:h, 0:w]
            base = (np.stack([xx * rng.uniform(0.2, 0.6), yy * rng.uniform(0.2, 0.6), (xx + yy) * 0.3], -1)
                    + rng.normal(0, 12, (h, w, 3)))
            path = cls / f"{i}.JPEG"
            Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(path, quality=90)
            sizes.append(path.stat().st_size)
    return float(np.mean(sizes))


def measure(root: Path, workers: int, size: int, batch: int) -> float:
    cfg = DataConfig(name="imagenet", root=str(root), image_size=size, workers=workers)
    train, _, _ = build_loaders(cfg, batch, batch, seed=0)
    for _ in train:  # warm-up epoch: starts the persistent workers, fills the page cache
        pass
    train.set_epoch(1)
    n, t0 = 0, time.perf_counter()
    for x, _ in train:
        n += x.shape[0]
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=384)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    a = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        mean_bytes = write_tree(Path(tmp), a.images)
        print(f"{a.images} JPEGs, mean {mean_bytes / 1024:.0f} KiB; crop {a.size}; batch {a.batch}; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        for w in a.workers:
            ips = measure(Path(tmp), w, a.size, a.batch)
            print(f"workers={w}: {ips:7.0f} img/s  ({ips / max(w, 1):6.0f} img/s per "
                  f"{'worker' if w else 'process (in-process decoding)'})")


if __name__ == "__main__":
    main()
