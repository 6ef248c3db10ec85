"""Model summary: per layer binary or float, parameters, packed vs float32 bytes, binary ops vs FLOPs."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .nn.layers import BinaryMixin


def packed_weight_bytes(module: nn.Module) -> int:
    """Bytes of the packed 1-bit weights: uint64 words along each filter's whole (kh, kw, c_in) axis."""
    w = module.weight
    return w.shape[0] * math.ceil(w[0].numel() / 64) * 8


@torch.no_grad()
def summarize(model: nn.Module, input_size: tuple[int, ...]) -> dict[str, Any]:
    """Walk Conv2d/Linear layers with a dummy forward (batch 1) and count what each costs."""
    rows: list[dict[str, Any]] = []
    hooks = []

    def hook(name):
        def fn(mod, inp, out):
            w = mod.weight
            macs = out.numel() // out.shape[0] * (w[0].numel())
            binary = isinstance(mod, BinaryMixin) and mod.recipe.weight_estimator is not None
            extra = sum(p.numel() for n, p in mod.named_parameters() if n != "weight")
            rows.append({
                "layer": name, "type": type(mod).__name__, "kind": "binary" if binary else "float",
                "params": w.numel() + extra, "float32_bytes": 4 * (w.numel() + extra),
                "deployed_bytes": (packed_weight_bytes(mod) + 4 * extra + 8 * w.shape[0]) if binary
                else 4 * (w.numel() + extra),
                "binary_ops": macs if binary else 0, "flops": 0 if binary else 2 * macs,
            })
        return fn

    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d | nn.Linear):
            hooks.append(mod.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, *input_size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    other = sum(p.numel() for n, p in model.named_parameters()) - sum(r["params"] for r in rows)
    totals = {k: sum(r[k] for r in rows) for k in ("params", "float32_bytes", "deployed_bytes", "binary_ops",
                                                   "flops")}
    totals["params"] += other
    totals["float32_bytes"] += 4 * other
    totals["deployed_bytes"] += 4 * other
    totals["other_params"] = other
    return {"layers": rows, "totals": totals}


def format_summary(s: dict[str, Any]) -> str:
    head = f"{'layer':<28} {'type':<13} {'kind':<6} {'params':>10} {'float32 B':>11} {'deployed B':>11} " \
           f"{'binary ops':>12} {'FLOPs':>12}"
    lines = [head, "-" * len(head)]
    for r in s["layers"]:
        lines.append(f"{r['layer']:<28} {r['type']:<13} {r['kind']:<6} {r['params']:>10,} "
                     f"{r['float32_bytes']:>11,} {r['deployed_bytes']:>11,} {r['binary_ops']:>12,} {r['flops']:>12,}")
    t = s["totals"]
    lines.append("-" * len(head))
    lines.append(f"{'other (BN, shifts, ...)':<28} {'':<13} {'float':<6} {t['other_params']:>10,} "
                 f"{4 * t['other_params']:>11,} {4 * t['other_params']:>11,}")
    lines.append(f"{'total':<28} {'':<13} {'':<6} {t['params']:>10,} {t['float32_bytes']:>11,} "
                 f"{t['deployed_bytes']:>11,} {t['binary_ops']:>12,} {t['flops']:>12,}")
    ratio = t["float32_bytes"] / max(t["deployed_bytes"], 1)
    nbin = sum(r["kind"] == "binary" for r in s["layers"])
    floats = [r["layer"] for r in s["layers"] if r["kind"] == "float"]
    lines.append(f"{nbin} binary layers; kept float: {', '.join(floats) or 'none'}; "
                 f"weights {ratio:.1f}x smaller than float32 (estimate; `rbnn export` gives the real file size)")
    return "\n".join(lines)
