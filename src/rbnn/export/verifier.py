"""Check a packed model against the torch model it came from: integer-exact per layer, close logits."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..nn.layers import BinaryConv2d, BinaryMixin
from ..runtime import PackedModel, load
from .exporter import binary_weight_and_scale


@torch.no_grad()
def torch_layer_dot(layer: BinaryMixin, inp: torch.Tensor) -> np.ndarray:
    """A binary layer's integer pre-activation by torch in float64: conv(binary_input(x), sign(w̃))."""
    b, _ = binary_weight_and_scale(layer)
    xb = layer.binary_input(inp).double()
    wb = torch.as_tensor(b, dtype=torch.float64)
    if isinstance(layer, BinaryConv2d):
        y = F.conv2d(xb, wb, None, layer.stride, layer.padding, layer.dilation, layer.groups)
    else:
        y = F.linear(xb, wb)
    return torch.round(y).to(torch.int64).numpy()


@torch.no_grad()
def verify(model: nn.Module, path_or_packed, x: np.ndarray, *, backend: str = "fast") -> dict:
    """Compare ``model`` (eval mode) with its packed version on input ``x`` (NCHW float32 ndarray).

    Per binary layer the torch pre-activation ``conv(binary_input(inp), sign weights)`` (float64) is compared
    as integers with the packed engine's, both computed on the *same* layer input (captured by hooks), so the
    check is exact and independent of float rounding upstream. Returns ``{"layers": {name: {"equal",
    "mismatches", "max_abs_diff", "shape"}}, "int_exact": bool, "max_rel_logit_err": float,
    "argmax_agreement": float, "n": int, "ok": bool}`` where ``max_rel_logit_err`` is
    max|packed − torch| / max|torch| over the batch.
    """
    packed = (
        path_or_packed
        if isinstance(path_or_packed, PackedModel)
        else load(os.fspath(path_or_packed), backend=backend)
    )
    was_training = model.training
    model.eval()
    captured: dict[str, torch.Tensor] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, BinaryMixin):
            hooks.append(
                m.register_forward_hook(
                    lambda mod, args, out, name=name: captured.__setitem__(name, args[0].detach().clone())
                )
            )
    try:
        xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
        ref = model(xt).detach().double().numpy()
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    modules = dict(model.named_modules())
    layers = {}
    for name in packed.binary_layers:
        if name not in captured:
            layers[name] = {
                "equal": False,
                "mismatches": -1,
                "max_abs_diff": -1,
                "shape": None,
                "error": "layer not run by the torch model",
            }
            continue
        inp = captured[name]
        t = torch_layer_dot(modules[name], inp)
        p = packed.binary_layer_dot(name, inp.numpy())
        diff = np.abs(t - p) if t.shape == p.shape else None
        layers[name] = {
            "equal": bool(diff is not None and not diff.any()),
            "mismatches": int((diff != 0).sum()) if diff is not None else -1,
            "max_abs_diff": int(diff.max()) if diff is not None and diff.size else 0,
            "shape": list(t.shape),
        }
    out = packed.predict(np.asarray(x, dtype=np.float32)).astype(np.float64)
    scale = max(float(np.abs(ref).max()), 1e-12)
    rel = float(np.abs(out - ref).max() / scale) if out.shape == ref.shape else float("inf")
    agree = float((out.argmax(-1) == ref.argmax(-1)).mean()) if out.shape == ref.shape else 0.0
    int_exact = all(v["equal"] for v in layers.values())
    return {
        "layers": layers,
        "int_exact": int_exact,
        "max_rel_logit_err": rel,
        "argmax_agreement": agree,
        "n": int(np.asarray(x).shape[0]),
        "backend": packed.backend,
        "ok": bool(int_exact and rel <= 1e-4 and agree == 1.0),
    }
