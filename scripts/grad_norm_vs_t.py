"""Gradient norms of a trained run's parameters as the surrogate schedule (t, k) advances, weights held fixed.

    python scripts/grad_norm_vs_t.py RUN_DIR/best.pt [--epochs 10,12,13,14,15] [--batches 2]

Loads the checkpoint, sets every binary layer's (t, k) to what epoch e of the run's schedule would give, and
prints the gradient norm of the float stem, the first, a middle and the last binary layer and the classifier
on the same training batches. It separates "the schedule makes gradients explode" (norms grow with t on the
same weights) from "the weights drifted" (they do not).
"""

from __future__ import annotations

import argparse
import sys

import torch.nn.functional as F

from rbnn.data import build_loaders
from rbnn.errors import RbnnError
from rbnn.nn.layers import binary_modules
from rbnn.run import load_run_model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--epochs", default="10,12,13,14,15", help="0-based epoch indices of the run's schedule")
    p.add_argument("--batches", type=int, default=2)
    a = p.parse_args(argv)
    try:
        model, cfg, _ = load_run_model(a.checkpoint)
    except RbnnError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    train_loader, _, _ = build_loaders(cfg.data, cfg.batch_size, cfg.eval_batch_size, cfg.seed)
    batches = [b for _, b in zip(range(a.batches), train_loader)]
    layers = binary_modules(model)
    params = dict(model.named_parameters())
    first, mid, last = layers[0][0], layers[len(layers) // 2][0], layers[-1][0]
    stem = next(n for n, q in params.items() if q.dim() == 4 and not any(n.startswith(b + ".") for b, _ in layers))
    fc = [n for n, q in params.items() if q.dim() == 2][-1]
    watch = [stem, f"{first}.weight", f"{mid}.weight", f"{last}.weight", fc]
    print(f"{a.checkpoint}: gradient norms (sum over {a.batches} batches of {cfg.batch_size}), weights fixed")
    print(f"{'epoch':>5} {'t':>6} {'k':>7} " + " ".join(f"{w:>24}" for w in watch))
    model.train()
    for e in (int(s) for s in a.epochs.split(",")):
        for _, m in layers:
            m.set_epoch(e, cfg.epochs)
        model.zero_grad()
        for x, y in batches:
            F.cross_entropy(model(x), y).backward()
        t, k = layers[0][1].t.item(), layers[0][1].k.item()
        print(f"{e + 1:>5} {t:6.2f} {k:7.2f} " + " ".join(f"{params[w].grad.norm().item():24.4g}" for w in watch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
