"""Export a (binary) torch model to a packed ``.rbnn`` file. The only deploy module that imports torch.

The model is traced with torch.fx (binary layers and standard torch.nn layers are leaves), run once on an
example input to record shapes, and translated node by node into the engine's small op vocabulary:

    input, conv (float), linear (float), bconv, blinear (binary), affine (BatchNorm), hardtanh, relu,
    prelu (nn.PReLU and ReActNet's RPReLU), maxpool, avgpool (also ceil_mode), gap (global average pool),
    add, slice, pad (zero, e.g. option-A shortcuts), flatten

Anything else raises :class:`ExportError` naming the fx node. BatchNorm directly after a conv/linear (the
conv being its only reader) is folded into the conv's per-channel output affine; a BatchNorm1d feeding a float
Linear is folded into it.
"""

from __future__ import annotations

import math
import operator
import os
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from ..errors import RbnnError
from ..functional.sign import sign
from ..models.reactnet import RPReLU
from ..nn.components import PACKED_ACT_TRANSFORMS
from ..nn.layers import BinaryConv2d, BinaryLinear, BinaryMixin
from ..nn.recipe import BinaryRecipe
from ..runtime import format as fmt
from ..runtime.format import Node, PackedGraph
from ..runtime.packing import pack_nonzero, pack_signs


class ExportError(RbnnError):
    """The model uses something the packed format cannot express (message names the node)."""


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        # RPReLU reads its biases with get_attr, which the op graph cannot hold: keep it whole
        if isinstance(m, BinaryMixin | nn.PReLU | RPReLU):
            return True
        return super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    """torch.fx trace with binary layers as leaves."""
    tracer = _Tracer()
    graph = tracer.trace(model)
    return fx.GraphModule(tracer.root, graph, model.__class__.__name__)


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.values[n] = out
        return out


def _pair(v) -> list[int]:
    if isinstance(v, int):
        return [v, v]
    v = [int(i) for i in v]
    return v * 2 if len(v) == 1 else v


def _np32(t: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().double().numpy()
    return np.ascontiguousarray(np.asarray(t, dtype=np.float64).astype(np.float32))


def _sign_np(w: torch.Tensor, zero: int) -> np.ndarray:
    """sign with the recipe's sign(0), computed by torch in the weight's own dtype (as the layer does)."""
    return sign(w.detach(), zero).cpu().numpy()


def binary_weight_and_scale(layer: BinaryMixin) -> tuple[np.ndarray, np.ndarray]:
    """(B, m): the ±1 (or ternary, sign(0)=0) weight and the per-output-channel float64 multiplier of the
    integer dot product, so that layer(x) == (binary_input(x) * B) · m (+ bias, times m for an output-side scale).

    B = sign(mixed_weight()) (for RBNN the mixed *rotated* weight, not sign(W)); m is the weight scale
    component's ``fold`` (mean|w|, a power of two, ReBNN's α, RBNN's λ which may be negative, ...).
    """
    r: BinaryRecipe = layer.recipe
    with torch.no_grad():
        w = layer.mixed_weight().detach()
        b = _sign_np(w, r.zero)
        m = layer.weight_scale.fold(layer, w).double().reshape(w.shape[0])
        # sanity: the weight the layer actually runs with must be B * m (a component whose fold disagrees with
        # its forward is caught here, with its name)
        bw = layer.weight_and_bias()[0].detach()
        expect = torch.as_tensor(b, dtype=bw.dtype) * m.reshape(-1, *([1] * (bw.dim() - 1))).to(bw)
        if not torch.allclose(bw, expect, rtol=1e-5, atol=1e-7):
            raise ExportError(
                f"{type(layer).__name__}: its weight is not sign(mixed_weight())·fold for weight_scale="
                f"{r.weight_scale!r} ({type(layer.weight_scale).__name__}.fold disagrees with its forward)"
            )
    return b, m.cpu().numpy()


def input_transform_fold(layer: BinaryMixin, where: str) -> tuple[str, dict[str, np.ndarray]]:
    """The packed node's ``act_transform`` and its arrays, as the layer's input transform folds them."""
    kind, arrays = layer.input_transform.fold(layer)
    if kind not in PACKED_ACT_TRANSFORMS:
        raise ExportError(f"{where}: {type(layer.input_transform).__name__} folds to act_transform={kind!r}; "
                          f"the packed format knows {', '.join(PACKED_ACT_TRANSFORMS)}")
    return kind, {k: _np32(v) for k, v in arrays.items()}


def _binary_node(name: str, qual: str, layer: BinaryMixin, inputs: list[str]) -> Node:
    r = layer.recipe
    if r.weight_estimator is None:
        raise ExportError(
            f"node {name!r} ({qual}): binary layer with real-valued weights (W32A1 recipe) has no 1-bit deployment"
        )
    if r.act_estimator is None:
        raise ExportError(
            f"node {name!r} ({qual}): binary layer with real-valued activations "
            "(act_estimator=None) has no 1-bit deployment"
        )
    b, m = binary_weight_and_scale(layer)
    o = b.shape[0]
    act_transform, act_arrays = input_transform_fold(layer, f"node {name!r} ({qual})")
    attrs: dict[str, Any] = {
        "module": qual,
        "act_transform": act_transform,
        "zero": int(r.zero),
        "eps": float(r.eps),
        "out_channels": int(o),
    }
    bias = layer.bias.detach().double().cpu().numpy() if layer.bias is not None else np.zeros(o)
    if isinstance(layer, BinaryConv2d):
        op, bt = "bconv", _bconv_attrs(name, qual, layer, b, attrs)
    elif isinstance(layer, BinaryLinear):
        attrs.update(in_channels=int(layer.in_features))
        op, bt = "blinear", b
    else:
        raise ExportError(f"node {name!r} ({qual}): unknown binary layer type {type(layer).__name__}")
    arrays: dict[str, np.ndarray] = {"w_bits": pack_signs(bt)}
    if r.zero == 0:
        arrays["w_mask"] = pack_nonzero(bt)
    arrays["out_mul"] = _np32(m)
    arrays["out_add"] = _np32(bias * m if layer.weight_scale.output_side else bias)
    attrs["ternary"] = r.zero == 0
    arrays.update(act_arrays)
    return Node(name, op, inputs, attrs, arrays)


def _bconv_attrs(name: str, qual: str, layer: BinaryConv2d, b: np.ndarray, attrs: dict[str, Any]) -> np.ndarray:
    """Add a binary conv's geometry to ``attrs``; return its signs as (O, KH*KW*C), tap-major."""
    if layer.groups != 1:
        raise ExportError(f"node {name!r} ({qual}): grouped binary conv (groups={layer.groups}) unsupported")
    if isinstance(layer.padding, str):
        if layer.padding != "valid":
            raise ExportError(f"node {name!r} ({qual}): padding={layer.padding!r} unsupported; use ints")
        pad = [0, 0]
    else:
        pad = _pair(layer.padding)
    attrs.update(
        op_kind="conv",
        in_channels=int(layer.in_channels),
        kernel=_pair(layer.kernel_size),
        stride=_pair(layer.stride),
        padding=pad,
        dilation=_pair(layer.dilation),
    )
    # (O, KH, KW, C) flattened: packed along input channels, tap-major. On disk the taps are not padded to
    # whole words (24-32x smaller than float32); the engines split the bits into per-tap words at load.
    return np.transpose(b, (0, 2, 3, 1)).reshape(b.shape[0], -1)


def _bn_node(name: str, qual: str, bn: nn.modules.batchnorm._BatchNorm, inputs: list[str]) -> Node:
    if bn.running_mean is None or bn.running_var is None:
        raise ExportError(f"node {name!r} ({qual}): BatchNorm without running statistics cannot be folded")
    inv = 1.0 / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    w = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(inv)
    bb = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(inv)
    mul = w * inv
    add = bb - bn.running_mean.detach().double() * mul
    return Node(
        name,
        "affine",
        inputs,
        {"module": qual, "kind": type(bn).__name__},
        {"mul": _np32(mul), "add": _np32(add), "_mul64": mul.numpy(), "_add64": add.numpy()},
    )


def _prelu_node(name: str, qual: str, m: nn.Module, channels: int, inputs: list[str]) -> Node:
    """``(z if z > 0 else slope·z) + shift_out`` with ``z = x + shift_in``, per channel, float32 as torch does."""
    if isinstance(m, nn.PReLU):
        prelu, b1, b2 = m, None, None
    elif isinstance(m, RPReLU):
        prelu, b1, b2 = m.prelu, m.bias1, m.bias2
    else:
        raise ExportError(f"node {name!r} ({qual}): {type(m).__name__} is not a PReLU")
    slope = prelu.weight.detach().reshape(-1)
    if slope.numel() not in (1, channels):
        raise ExportError(f"node {name!r} ({qual}): PReLU with {slope.numel()} slopes on {channels} channels")

    def vec(t: torch.Tensor | None) -> np.ndarray:
        if t is None:
            return np.zeros(channels, dtype=np.float32)
        t = t.detach().reshape(-1)
        if t.numel() != channels:
            raise ExportError(f"node {name!r} ({qual}): per-channel shift of size {t.numel()}, need {channels}")
        return _np32(t)

    return Node(
        name,
        "prelu",
        inputs,
        {"module": qual, "channels": int(channels)},
        {"shift_in": vec(b1), "slope": _np32(slope.expand(channels)), "shift_out": vec(b2)},
    )


def _pool_args(k, s, p, d=1, ceil_mode: bool = False, count_include_pad: bool = True) -> dict:
    k = _pair(k)
    args = {
        "kernel": k,
        "stride": _pair(s if s not in (None, []) else k),
        "padding": _pair(p),
        "dilation": _pair(d),
    }
    # written only when not the default, so files of older exporters read the same
    if ceil_mode:
        args["ceil_mode"] = True
    if not count_include_pad and args["padding"] != [0, 0]:
        args["count_include_pad"] = False
    return args


def _translate(gm: fx.GraphModule, values: dict[fx.Node, Any]) -> tuple[list[Node], str, list[dict]]:
    """The traced graph as packed nodes: (nodes, output name, float layers)."""
    return _Translator(gm, values).run()


_UNSUPPORTED_HINT = ("the packed format supports Conv2d, Linear, binary layers, BatchNorm, Hardtanh/ReLU/PReLU/RPReLU, "
                     "Max/AvgPool, global avg pool, add, channel zero-pad, strided slicing and flatten")


class _Translator:
    """Walks an fx graph once; each module type and each function has its own small translation method."""

    def __init__(self, gm: fx.GraphModule, values: dict[fx.Node, Any]) -> None:
        self.modules = dict(gm.named_modules())
        self.graph = gm.graph
        self.values = values
        self.nodes: list[Node] = []
        self.alias: dict[str, str] = {}  # fx node name -> the packed node it passes through unchanged
        self.float_layers: list[dict] = []

    # ---- helpers -----------------------------------------------------------------------------
    def is_tensor(self, a) -> bool:
        return isinstance(a, fx.Node) and isinstance(self.values.get(a), torch.Tensor)

    def src(self, a) -> str:
        if not self.is_tensor(a):
            raise ExportError(f"expected a tensor argument, got {a!r}")
        return self.alias.get(a.name, a.name)

    def const(self, a):
        if isinstance(a, fx.Node):
            v = self.values[a]
            if isinstance(v, torch.Tensor):
                raise ExportError(f"node {a.name!r}: a tensor is used where a constant is needed")
            return v
        if isinstance(a, list | tuple):
            return type(a)(self.const(i) for i in a)
        return a

    @staticmethod
    def unsupported(n: fx.Node, what: str) -> ExportError:
        return ExportError(f"unsupported op at fx node {n.name!r} ({n.op} {what}); {_UNSUPPORTED_HINT}")

    def shape(self, n: fx.Node) -> tuple[int, ...]:
        return tuple(self.values[n].shape)

    # ---- the walk ------------------------------------------------------------------------------
    def run(self) -> tuple[list[Node], str, list[dict]]:
        out_name = None
        for n in self.graph.nodes:
            if n.op == "placeholder":
                if self.nodes:
                    raise self.unsupported(n, "second input")
                self.nodes.append(Node(n.name, "input", [], {"shape": list(self.shape(n)[1:])}))
            elif n.op == "output":
                arg = n.args[0]
                if not self.is_tensor(arg):
                    got = type(self.values.get(arg, arg)).__name__
                    raise ExportError(f"model output must be one tensor, got {got}")
                out_name = self.src(arg)
            elif n.op == "get_attr":
                if isinstance(self.values.get(n), torch.Tensor):
                    raise self.unsupported(n, f"get_attr {n.target}")
            elif not isinstance(self.values.get(n), torch.Tensor):
                continue  # python-level values (sizes, shapes): used as constants by readers
            elif n.op == "call_module":
                self.module(n, self.modules[n.target], self.values[n])
            elif n.op in ("call_function", "call_method"):
                self.function(n, self.values[n])
            else:
                raise self.unsupported(n, str(n.target))
        if out_name is None:
            raise ExportError("the traced graph has no output")
        return self.nodes, out_name, self.float_layers

    # ---- modules -------------------------------------------------------------------------------
    def module(self, n: fx.Node, m: nn.Module, out: torch.Tensor) -> None:
        qual, x = str(n.target), self.src(n.args[0])
        if isinstance(m, BinaryMixin):
            self.nodes.append(_binary_node(n.name, qual, m, [x]))
        elif isinstance(m, nn.Conv2d):
            self.conv(n, m, qual, x)
        elif isinstance(m, nn.Linear):
            bias = _np32(m.bias if m.bias is not None else torch.zeros(m.out_features))
            self.nodes.append(Node(n.name, "linear", [x], {"module": qual}, {"weight": _np32(m.weight), "bias": bias}))
            self.float_layers.append({"name": qual, "kind": "Linear", "params": int(m.weight.numel())})
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            self.nodes.append(_bn_node(n.name, qual, m, [x]))
        elif isinstance(m, nn.Hardtanh):
            self.nodes.append(Node(n.name, "hardtanh", [x], {"min": float(m.min_val), "max": float(m.max_val)}))
        elif isinstance(m, nn.ReLU):
            self.nodes.append(Node(n.name, "relu", [x]))
        elif isinstance(m, nn.PReLU | RPReLU):
            if out.dim() not in (2, 4):
                raise self.unsupported(n, f"{type(m).__name__} {qual} on a rank-{out.dim()} tensor")
            self.nodes.append(_prelu_node(n.name, qual, m, int(out.shape[1]), [x]))
        elif isinstance(m, nn.MaxPool2d | nn.AvgPool2d | nn.AdaptiveAvgPool2d):
            self.pool_module(n, m, qual, x, out)
        elif isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise self.unsupported(n, f"Flatten {qual}({m.start_dim}, {m.end_dim})")
            self.nodes.append(Node(n.name, "flatten", [x]))
        elif isinstance(m, nn.Identity | nn.Dropout):
            self.alias[n.name] = x
        else:
            raise self.unsupported(n, f"module {qual} of type {type(m).__name__}")

    def conv(self, n: fx.Node, m: nn.Conv2d, qual: str, x: str) -> None:
        if m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str) and m.padding != "valid":
            raise self.unsupported(n, f"Conv2d {qual} (groups/padding mode)")
        pad = [0, 0] if isinstance(m.padding, str) else _pair(m.padding)
        attrs = {"module": qual, "stride": _pair(m.stride), "padding": pad, "dilation": _pair(m.dilation)}
        bias = _np32(m.bias if m.bias is not None else torch.zeros(m.out_channels))
        self.nodes.append(Node(n.name, "conv", [x], attrs, {"weight": _np32(m.weight), "bias": bias}))
        self.float_layers.append({"name": qual, "kind": "Conv2d", "params": int(m.weight.numel())})

    def pool_module(self, n: fx.Node, m: nn.Module, qual: str, x: str, out: torch.Tensor) -> None:
        if isinstance(m, nn.MaxPool2d):
            if m.return_indices:
                raise self.unsupported(n, f"MaxPool2d {qual} with return_indices")
            pa = _pool_args(m.kernel_size, m.stride, m.padding, m.dilation, bool(m.ceil_mode))
            self.nodes.append(Node(n.name, "maxpool", [x], pa))
        elif isinstance(m, nn.AvgPool2d):
            if m.divisor_override:
                raise self.unsupported(n, f"AvgPool2d {qual} with divisor_override")
            pa = _pool_args(m.kernel_size, m.stride, m.padding, 1, bool(m.ceil_mode), bool(m.count_include_pad))
            self.nodes.append(Node(n.name, "avgpool", [x], pa))
        elif tuple(out.shape[-2:]) == (1, 1):
            self.nodes.append(Node(n.name, "gap", [x]))
        elif tuple(out.shape) == tuple(self.values[n.args[0]].shape):
            self.alias[n.name] = x
        else:
            raise self.unsupported(n, f"AdaptiveAvgPool2d {qual} to {tuple(out.shape[-2:])}")

    # ---- functions and methods -------------------------------------------------------------------
    def function(self, n: fx.Node, out: torch.Tensor) -> None:
        t = n.target
        name = t if isinstance(t, str) else getattr(t, "__name__", str(t))
        first_is_tensor = bool(n.args) and self.is_tensor(n.args[0])
        if name in ("add", "iadd", "__add__") and len(n.args) == 2 and all(self.is_tensor(a) for a in n.args) \
                and n.kwargs.get("alpha", 1) == 1:
            self.add(n)
        elif t is operator.getitem and first_is_tensor:
            self.getitem(n)
        elif name == "pad" and t is not None and first_is_tensor:
            self.pad(n)
        elif name in ("flatten", "view", "reshape"):
            self.reshape(n, name, out)
        elif name in ("hardtanh", "hardtanh_", "clamp", "clip") and first_is_tensor:
            self.clamp(n, name)
        elif name in ("relu", "relu_"):
            self.nodes.append(Node(n.name, "relu", [self.src(n.args[0])]))
        elif name in ("contiguous", "dropout", "identity") and first_is_tensor:
            self.alias[n.name] = self.src(n.args[0])
        elif name == "adaptive_avg_pool2d" and tuple(out.shape[-2:]) == (1, 1):
            self.nodes.append(Node(n.name, "gap", [self.src(n.args[0])]))
        elif name == "max_pool2d":
            self.max_pool_fn(n)
        elif name == "avg_pool2d":
            self.avg_pool_fn(n)
        else:
            raise self.unsupported(n, f"{name}")

    def add(self, n: fx.Node) -> None:
        a, b = (self.src(a) for a in n.args)
        if self.shape(n.args[0]) != self.shape(n.args[1]):
            raise self.unsupported(n, f"add with broadcasting {self.shape(n.args[0])} + {self.shape(n.args[1])}")
        self.nodes.append(Node(n.name, "add", [a, b]))

    def getitem(self, n: fx.Node) -> None:
        idx = self.const(n.args[1])
        idx = idx if isinstance(idx, tuple) else (idx,)
        ins = self.shape(n.args[0])
        if not all(isinstance(s, slice) for s in idx) or len(idx) > len(ins):
            raise self.unsupported(n, f"indexing {idx!r} (only slices are supported)")
        sl = []
        for d, s in enumerate(idx):
            st, sp, step = s.indices(ins[d])
            if d == 0 and (st, step) != (0, 1) or (d == 0 and sp != ins[0]):
                raise self.unsupported(n, "slicing the batch dimension")
            # keep the slice as written (None = open end), so other batch sizes and image sizes work
            written = [None if v is None else int(v) for v in (s.start, s.stop, s.step)]
            sl.append([None, None, None] if d == 0 else written)
        self.nodes.append(Node(n.name, "slice", [self.src(n.args[0])], {"nchw_slices": sl}))

    def pad(self, n: fx.Node) -> None:
        pads = [int(p) for p in self.const(n.args[1] if len(n.args) > 1 else n.kwargs["pad"])]
        mode = self.const(n.args[2]) if len(n.args) > 2 else n.kwargs.get("mode", "constant")
        value = self.const(n.args[3]) if len(n.args) > 3 else n.kwargs.get("value", None)
        if mode != "constant" or value not in (None, 0, 0.0) or min(pads) < 0:
            raise self.unsupported(n, f"pad mode={mode!r} value={value!r} pads={pads}")
        self.nodes.append(Node(n.name, "pad", [self.src(n.args[0])], {"torch_pad": pads}))

    def reshape(self, n: fx.Node, name: str, out: torch.Tensor) -> None:
        ins, outs = self.shape(n.args[0]), tuple(out.shape)
        if len(outs) == 2 and outs[0] == ins[0] and math.prod(ins[1:]) == outs[1]:
            self.nodes.append(Node(n.name, "flatten", [self.src(n.args[0])]))
        elif outs == ins:
            self.alias[n.name] = self.src(n.args[0])
        else:
            raise self.unsupported(n, f"{name} {ins} -> {outs}")

    def clamp(self, n: fx.Node, name: str) -> None:
        kw = n.kwargs
        lo = self.const(n.args[1]) if len(n.args) > 1 else kw.get("min_val", kw.get("min", -1.0))
        hi = self.const(n.args[2]) if len(n.args) > 2 else kw.get("max_val", kw.get("max", 1.0))
        if lo is None or hi is None:
            raise self.unsupported(n, f"{name} with an open bound")
        self.nodes.append(Node(n.name, "hardtanh", [self.src(n.args[0])], {"min": float(lo), "max": float(hi)}))

    def _pool_fn_args(self, n: fx.Node, names: tuple[str, ...], defaults: dict[str, Any]) -> dict[str, Any]:
        """F.max_pool2d / F.avg_pool2d arguments after the input, positional or keyword, as constants."""
        args = [self.const(a) for a in n.args[1:]]
        kw = {k: self.const(v) for k, v in n.kwargs.items()}
        if len(args) > len(names):
            raise self.unsupported(n, f"{n.target} options")
        return {k: args[i] if i < len(args) else kw.get(k, defaults.get(k)) for i, k in enumerate(names)}

    def max_pool_fn(self, n: fx.Node) -> None:
        names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
        a = self._pool_fn_args(n, names, {"padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False})
        if a["return_indices"]:
            raise self.unsupported(n, "max_pool2d options")
        pa = _pool_args(a["kernel_size"], a["stride"], a["padding"], a["dilation"], bool(a["ceil_mode"]))
        self.nodes.append(Node(n.name, "maxpool", [self.src(n.args[0])], pa))

    def avg_pool_fn(self, n: fx.Node) -> None:
        names = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
        a = self._pool_fn_args(n, names, {"padding": 0, "ceil_mode": False, "count_include_pad": True})
        if a["divisor_override"] is not None:
            raise self.unsupported(n, "avg_pool2d with divisor_override")
        pa = _pool_args(a["kernel_size"], a["stride"], a["padding"], 1, bool(a["ceil_mode"]),
                        bool(a["count_include_pad"]))
        self.nodes.append(Node(n.name, "avgpool", [self.src(n.args[0])], pa))


def _fold(nodes: list[Node], output: str) -> tuple[list[Node], str]:
    """Fold BatchNorm (affine) into the conv/linear before it, and a BatchNorm1d into a following Linear."""

    def readers(name: str) -> list[Node]:
        return [n for n in nodes if name in n.inputs]

    changed = True
    while changed:
        changed = False
        by_name = {n.name: n for n in nodes}
        for aff in nodes:
            if aff.op != "affine":
                continue
            prod = by_name[aff.inputs[0]]
            mul, add = aff.arrays["_mul64"], aff.arrays["_add64"]
            if (
                prod.op in ("bconv", "blinear", "conv", "linear")
                and len(readers(prod.name)) == 1
                and prod.name != output
            ):
                if prod.op in ("bconv", "blinear"):
                    m = prod.arrays.pop("_m64", prod.arrays["out_mul"].astype(np.float64))
                    a = prod.arrays.pop("_a64", prod.arrays["out_add"].astype(np.float64))
                    prod.arrays["_m64"], prod.arrays["_a64"] = m * mul, a * mul + add
                    prod.arrays["out_mul"], prod.arrays["out_add"] = _np32(m * mul), _np32(a * mul + add)
                else:
                    w = prod.arrays["weight"].astype(np.float64)
                    prod.arrays["weight"] = _np32(w * mul.reshape(-1, *([1] * (w.ndim - 1))))
                    prod.arrays["bias"] = _np32(prod.arrays["bias"].astype(np.float64) * mul + add)
                prod.attrs.setdefault("folded", []).append(aff.attrs.get("module", aff.name))
            else:
                rs = readers(aff.name)
                if len(rs) == 1 and rs[0].op == "linear" and aff.name != output:
                    lin = rs[0]
                    w = lin.arrays["weight"].astype(np.float64)
                    lin.arrays["bias"] = _np32(lin.arrays["bias"].astype(np.float64) + w @ add)
                    lin.arrays["weight"] = _np32(w * mul[None, :])
                    lin.attrs.setdefault("folded", []).append(aff.attrs.get("module", aff.name))
                    lin.inputs = [aff.inputs[0]]
                    nodes.remove(aff)
                    changed = True
                    break
                continue
            # rewire readers of the affine to the producer
            for r in readers(aff.name):
                r.inputs = [prod.name if i == aff.name else i for i in r.inputs]
            if output == aff.name:
                output = prod.name
            nodes.remove(aff)
            changed = True
            break
    for n in nodes:
        for k in [k for k in n.arrays if k.startswith("_")]:
            del n.arrays[k]
    return nodes, output


def _default_input_shape(model: nn.Module) -> tuple[int, ...]:
    shp = getattr(model, "input_shape", None) or getattr(model, "input_size", None)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            if shp is not None and len(tuple(shp)) == 3:
                return tuple(int(s) for s in shp)
            hw = tuple(shp)[-2:] if shp is not None else (32, 32)
            return (m.in_channels, *hw)
        if isinstance(m, nn.Linear):
            return (m.in_features,)
    raise ExportError("cannot infer input_shape: pass input_shape=(C, H, W)")


def build_graph(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> PackedGraph:
    """Trace ``model`` and build the packed graph (no file written)."""
    shape = tuple(int(s) for s in (input_shape or _default_input_shape(model)))
    if len(shape) == 4:
        shape = shape[1:]
    was_training = model.training
    model.eval()
    try:
        try:
            gm = trace(model)
        except Exception as e:  # noqa: BLE001 - fx raises many types
            raise ExportError(f"torch.fx could not trace {type(model).__name__}: {type(e).__name__}: {e}") from e
        dtype = next((p.dtype for p in model.parameters()), torch.float32)
        example = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0)).to(dtype)
        rec = _Recorder(gm)
        with torch.no_grad():
            rec.run(example)
        nodes, out, float_layers = _translate(gm, rec.values)
        nodes, out = _fold(nodes, out)
    finally:
        model.train(was_training)
    # keep only nodes reachable from the output
    needed, by_name = {out}, {n.name: n for n in nodes}
    for n in reversed(nodes):
        if n.name in needed:
            needed.update(n.inputs)
    nodes = [n for n in nodes if n.name in needed or n.op == "input"]
    del by_name
    info = getattr(model, "binarization", None) or {}
    why = {
        "Conv2d": "float layer (first conv / downsample kept float by the recipe's float_layers)",
        "Linear": "float layer (classifier kept float by the recipe's float_layers)",
    }
    meta = {
        "input_shape": list(shape),
        "model": {"class": type(model).__name__, "name": _model_name(model), "binarization": _jsonable(info)},
        "float_layers": [{**f, "why": why[f["kind"]]} for f in float_layers],
        "binary_layers": [n.attrs["module"] for n in nodes if n.op in ("bconv", "blinear")],
        "producer": {"torch": torch.__version__, "numpy": np.__version__},
    }
    return PackedGraph(nodes, out, meta)


def _model_name(model: nn.Module) -> str | None:
    for attr in ("model_name", "arch", "name"):
        v = getattr(model, attr, None)
        if isinstance(v, str):
            return v
    return None


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, float | int | str | bool) or v is None:
        return v
    return str(v)


def export(model: nn.Module, path: str | os.PathLike, *, input_shape: tuple[int, ...] | None = None) -> dict:
    """Write ``model`` as one packed ``.rbnn`` file and return a summary dict.

    ``input_shape`` is (C, H, W) (or (F,) for an MLP); by default the model's ``input_shape``/``input_size``
    attribute or (in_channels of the first conv, 32, 32). Returns ``{"path", "bytes", "binary_layers",
    "float_layers", "nodes", "float32_state_dict_bytes"}``.
    """
    bad = next((k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()),
               None)
    if bad is not None:
        raise ExportError(f"cannot export to {os.fspath(path)}: tensor '{bad}' holds NaN or inf (a diverged run); "
                          "export a checkpoint with finite weights")
    graph = build_graph(model, input_shape)
    size = fmt.save(graph, path)
    sd_bytes = sum(t.numel() * 4 for t in model.state_dict().values() if t.is_floating_point())
    return {
        "path": os.fspath(path),
        "bytes": int(size),
        "binary_layers": graph.meta["binary_layers"],
        "float_layers": [f["name"] for f in graph.meta["float_layers"]],
        "nodes": len(graph.nodes),
        "float32_state_dict_bytes": int(sd_bytes),
        "input_shape": graph.meta["input_shape"],
    }


__all__ = ["ExportError", "binary_weight_and_scale", "build_graph", "export", "input_transform_fold", "trace"]
