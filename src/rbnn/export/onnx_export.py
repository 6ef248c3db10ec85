"""ONNX export whose sign semantics match training.

ONNX ``Sign(0) = 0``, so a bare ``Sign`` would make sign(0)=+1 layers ternary. Each binary layer is
replaced by an export-only module that holds its ±1·scale weight as a constant and binarizes its input with
``torch.where(x >= 0, 1, -1)`` (→ ``GreaterOrEqual`` + ``Where``); layers trained with sign(0)=0 (faithful
mode) use ``torch.sign``, which is exactly ONNX ``Sign``. Activation transforms (per-sample mean, per-channel
shift) and the learned output scale are exported as ordinary ops.
"""

from __future__ import annotations

import copy
import os

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.layers import BinaryConv2d, BinaryMixin
from .exporter import ExportError, binary_weight_and_scale, input_transform_fold


class _ExportBinary(nn.Module):
    """A binary layer as the packed node computes it: the folded weight (±1 · multiplier), the folded bias and
    the folded input transform, all read from the layer's components."""

    def __init__(self, layer: BinaryMixin) -> None:
        super().__init__()
        r = layer.recipe
        if r.weight_estimator is None or r.act_estimator is None:
            raise ExportError(
                f"{type(layer).__name__} with real-valued weights or activations has no 1-bit export"
            )
        b, m = binary_weight_and_scale(layer)
        dt = layer.weight.dtype
        shape = (-1, *([1] * (layer.weight.dim() - 1)))
        self.register_buffer("weight", (torch.as_tensor(b) * torch.as_tensor(m).reshape(shape)).to(dt))
        bias = None if layer.bias is None else layer.bias.detach()
        if bias is not None and layer.weight_scale.output_side:
            bias = bias * torch.as_tensor(m).to(bias)
        self.register_buffer("bias", None if bias is None else bias.to(dt))
        self.conv = isinstance(layer, BinaryConv2d)
        if self.conv:
            self.stride, self.padding, self.dilation = layer.stride, layer.padding, layer.dilation
        self.act_transform, arrays = input_transform_fold(layer, type(layer).__name__)
        self.zero = r.zero
        if self.act_transform == "shift":
            self.register_buffer("shift", torch.as_tensor(arrays["act_shift"]).to(dt))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_transform == "shift":
            x = x + self.shift.reshape(1, -1, *([1] * (x.dim() - 2)))
        elif self.act_transform == "standardize_sample":
            x = x - x.mean(dim=tuple(range(1, x.dim())), keepdim=True)  # the std never changes the sign
        if self.zero == 1:
            xb = torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))
        else:
            xb = torch.sign(x)  # ONNX Sign: sign(0) = 0, as in faithful mode
        if self.conv:
            return F.conv2d(xb, self.weight, self.bias, self.stride, self.padding, self.dilation)
        return F.linear(xb, self.weight, self.bias)


def export_module(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` (eval) where every binary layer is an export-only constant-weight module."""
    m = copy.deepcopy(model).eval()
    for name, mod in list(m.named_modules()):
        if isinstance(mod, BinaryMixin):
            parent_name, _, attr = name.rpartition(".")
            parent = m.get_submodule(parent_name) if parent_name else m
            setattr(parent, attr, _ExportBinary(mod))
    return m


def export_onnx(
    model: nn.Module, path: str | os.PathLike, input_shape, *, opset: int = 17, dynamic_batch: bool = True
) -> str:
    """Export ``model`` to ONNX at ``path``; ``input_shape`` is (C, H, W) or (N, C, H, W). Returns path."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) in (1, 3):
        shape = (1, *shape)
    m = export_module(model)
    example = torch.zeros(shape, dtype=next(m.parameters(), torch.zeros(())).dtype)
    path = os.fspath(path)
    with torch.no_grad():
        kw = {"dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}}} if dynamic_batch else {}
        try:
            torch.onnx.export(
                m,
                (example,),
                path,
                input_names=["input"],
                output_names=["logits"],
                opset_version=opset,
                dynamo=False,
                **kw,
            )
        except TypeError:  # torch without the dynamo flag
            torch.onnx.export(
                m, (example,), path, input_names=["input"], output_names=["logits"], opset_version=opset, **kw
            )
    return path
