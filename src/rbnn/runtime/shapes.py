"""Shape propagation over a packed graph: what makes a loaded ``.rbnn`` file safe to run.

The numba kernels index without bounds checks, so a file whose attributes or arrays disagree with the shapes
flowing through the graph (a stride of 0, a negative padding, a dilation larger than the image, a classifier
whose width is not its input's) would read out of bounds or compute garbage. :func:`propagate` walks the
nodes once at load with the model's input shape and checks every op: the JSON types of its attributes, their
ranges, its input ranks and channel counts against its arrays, and a non-empty output of bounded size. It
returns each node's output shape (per image, NCHW order, without the batch axis), so ``predict`` only has to
compare the caller's input with the model's. NumPy-free arithmetic; no torch.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .format import Node

MAX_ELEMENTS = 1 << 28  # elements of one activation of one image (1 GiB of float32): beyond it a file is refused
MAX_DOT = 1 << 24  # C*KH*KW of a binary layer: the fast engine's float32 epilogue is exact below it
ACT_TRANSFORMS = ("none", "shift", "standardize_sample")
ARITY = {"add": 2}  # every other op after the input reads exactly one tensor

Shape = tuple[int, ...]


class GraphProblem(ValueError):
    """One problem of a packed graph, worded for the user (the loader prefixes the file name)."""


def out_hw(h: int, k: int, s: int, p: int, d: int) -> int:
    """Output size of a conv (or pool without ceil mode) along one axis, as torch computes it."""
    return (h + 2 * p - d * (k - 1) - 1) // s + 1


def pool_out_hw(h: int, k: int, s: int, p: int, d: int = 1, ceil_mode: bool = False) -> int:
    """Pool output size as torch computes it: with ``ceil_mode`` a last, partial window is kept as long as it
    starts inside the input or the left padding."""
    if not ceil_mode:
        return out_hw(h, k, s, p, d)
    o = -(-(h + 2 * p - d * (k - 1) - 1) // s) + 1
    return o - 1 if (o - 1) * s >= h + p else o


# ---- typed attribute access ------------------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return type(v) is int  # JSON true/false load as bool, which is an int subclass: not accepted


def _where(n: Node) -> str:
    return f"node {n.name!r} ({n.op})"


def attr_int(n: Node, key: str, lo: int) -> int:
    v = n.attrs.get(key)
    if not _is_int(v) or v < lo:
        raise GraphProblem(f"{_where(n)} has {key}={v!r}, expected an integer >= {lo}")
    return v


def attr_pair(n: Node, key: str, lo: int, default: list[int] | None = None) -> tuple[int, int]:
    v = n.attrs.get(key, default)
    if not (isinstance(v, list) and len(v) == 2 and all(_is_int(i) for i in v)):
        raise GraphProblem(f"{_where(n)} has {key}={v!r}, expected two integers")
    if min(v) < lo:
        raise GraphProblem(f"{_where(n)} has {key}={v!r}, expected integers >= {lo}")
    return v[0], v[1]


def attr_number(n: Node, key: str) -> float:
    v = n.attrs.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise GraphProblem(f"{_where(n)} has {key}={v!r}, expected a finite number")
    return float(v)


def _rank(n: Node, x: Shape, ranks: tuple[int, ...]) -> None:
    if len(x) not in ranks:
        want = " or ".join("(C, H, W)" if r == 3 else "(features,)" for r in ranks)
        raise GraphProblem(f"{_where(n)} reads a tensor of shape {x}, expected {want} per image")


def _channels(n: Node, x: Shape, c: int, what: str) -> None:
    if x[0] != c:
        raise GraphProblem(f"{_where(n)} has {what} for {c} channels but its input has shape {x}")


def _spatial(n: Node, x: Shape, o: int, k: tuple[int, int], dilation_default: list[int] | None = None) -> Shape:
    """(o, Ho, Wo) of a conv with kernel ``k`` on (C, H, W) ``x``; the strides, paddings and dilations must be
    in range and leave at least one output pixel."""
    s = attr_pair(n, "stride", 1)
    p = attr_pair(n, "padding", 0)
    d = attr_pair(n, "dilation", 1, dilation_default)
    hw = [out_hw(x[1 + i], k[i], s[i], p[i], d[i]) for i in range(2)]
    if min(hw) < 1:
        raise GraphProblem(
            f"{_where(n)} with kernel {list(k)}, dilation {list(d)} and padding {list(p)} does not fit its "
            f"{x[1]}x{x[2]} input (output {hw[0]}x{hw[1]})"
        )
    return (o, hw[0], hw[1])


# ---- per op ----------------------------------------------------------------------------------------------
def _binary(n: Node, x: Shape) -> Shape:
    at = n.attrs
    c, o = attr_int(n, "in_channels", 1), attr_int(n, "out_channels", 1)
    if at.get("act_transform") not in ACT_TRANSFORMS:
        raise GraphProblem(f"{_where(n)} has act_transform={at.get('act_transform')!r}, expected one of "
                           f"{', '.join(ACT_TRANSFORMS)}")
    zero = at.get("zero")
    if not _is_int(zero) or zero not in (0, 1):
        raise GraphProblem(f"{_where(n)} has sign(0) convention zero={zero!r}, expected 0 or 1")
    if at.get("ternary", False) is not (zero == 0):
        raise GraphProblem(f"{_where(n)} has ternary={at.get('ternary')!r} with zero={zero}, expected "
                           f"ternary={str(zero == 0).lower()}")
    if not isinstance(at.get("module"), str):
        raise GraphProblem(f"{_where(n)} has module={at.get('module')!r}, expected a layer name")
    if n.op == "blinear":
        _rank(n, x, (1,))
        _channels(n, x, c, "in_channels")
        return (o,)
    _rank(n, x, (3,))
    _channels(n, x, c, "in_channels")
    k = attr_pair(n, "kernel", 1)
    if c * k[0] * k[1] >= MAX_DOT:
        raise GraphProblem(f"{_where(n)} sums {c * k[0] * k[1]} products per output, more than the engines' "
                           f"exact limit {MAX_DOT}")
    return _spatial(n, x, o, k)


def _conv(n: Node, x: Shape) -> Shape:
    o, c, kh, kw = n.arrays["weight"].shape
    _rank(n, x, (3,))
    _channels(n, x, c, "a weight")
    if min(o, c, kh, kw) < 1:
        raise GraphProblem(f"{_where(n)} has an empty weight of shape {(o, c, kh, kw)}")
    return _spatial(n, x, o, (kh, kw))


def _linear(n: Node, x: Shape) -> Shape:
    o, f = n.arrays["weight"].shape
    _rank(n, x, (1,))
    if x[0] != f or min(o, f) < 1:
        raise GraphProblem(f"{_where(n)} has a weight of shape {(o, f)} but its input has {x[0]} features")
    return (o,)


def _per_channel(n: Node, x: Shape) -> Shape:
    """affine / prelu: one value per channel (the last NHWC axis) or per feature."""
    _rank(n, x, (1, 3))
    key = "mul" if n.op == "affine" else "slope"
    if n.op == "prelu":
        attr_int(n, "channels", 1)
    _channels(n, x, n.arrays[key].shape[0], "arrays")
    return x


def _hardtanh(n: Node, x: Shape) -> Shape:
    lo, hi = attr_number(n, "min"), attr_number(n, "max")
    if lo > hi:
        raise GraphProblem(f"{_where(n)} has min={lo} > max={hi}")
    return x


def _pool(n: Node, x: Shape) -> Shape:
    _rank(n, x, (3,))
    k = attr_pair(n, "kernel", 1)
    s, p = attr_pair(n, "stride", 1), attr_pair(n, "padding", 0)
    d = attr_pair(n, "dilation", 1, [1, 1])
    if n.op == "avgpool" and d != (1, 1):
        raise GraphProblem(f"{_where(n)} has dilation={list(d)}; average pooling has none")
    ceil = n.attrs.get("ceil_mode", False)
    hw = [pool_out_hw(x[1 + i], k[i], s[i], p[i], d[i], ceil) for i in range(2)]
    if min(hw) < 1:
        raise GraphProblem(f"{_where(n)} with kernel {list(k)} and dilation {list(d)} does not fit its "
                           f"{x[1]}x{x[2]} input")
    return (x[0], hw[0], hw[1])


def _slice(n: Node, x: Shape) -> Shape:
    sl = n.attrs.get("nchw_slices")
    ok = isinstance(sl, list) and 1 <= len(sl) <= len(x) + 1 and all(
        isinstance(s, list) and len(s) == 3 and all(v is None or _is_int(v) for v in s) for s in sl
    )
    if not ok:
        raise GraphProblem(f"{_where(n)} has nchw_slices={sl!r}, expected up to {len(x) + 1} "
                           "[start, stop, step] lists of integers or null")
    if sl[0][0] not in (None, 0) or sl[0][1] is not None or sl[0][2] not in (None, 1):
        raise GraphProblem(f"{_where(n)} slices the batch axis ({sl[0]}); only channels and pixels may be sliced")
    out = list(x)
    for i, (start, stop, step) in enumerate(sl[1:]):
        if step is not None and step < 1:
            raise GraphProblem(f"{_where(n)} has slice step {step} on axis {i + 1}, expected >= 1")
        out[i] = len(range(*slice(start, stop, step).indices(x[i])))
    return tuple(out)


def _pad(n: Node, x: Shape) -> Shape:
    p = n.attrs.get("torch_pad")
    ok = isinstance(p, list) and len(p) % 2 == 0 and 0 < len(p) <= 2 * len(x)
    if not ok or not all(_is_int(v) and v >= 0 for v in p):
        raise GraphProblem(f"{_where(n)} has torch_pad={p!r}, expected up to {len(x)} pairs of integers >= 0")
    out = list(x)
    for i in range(len(p) // 2):  # pairs run from the last axis backwards, as torch's F.pad
        out[len(x) - 1 - i] += p[2 * i] + p[2 * i + 1]
    return tuple(out)


def _add(n: Node, a: Shape, b: Shape) -> Shape:
    if a != b:
        raise GraphProblem(f"{_where(n)} adds tensors of shapes {a} and {b}")
    return a


def _gap(n: Node, x: Shape) -> Shape:
    _rank(n, x, (3,))
    return (x[0], 1, 1)


def _flatten(n: Node, x: Shape) -> Shape:
    _rank(n, x, (1, 3))
    return (math.prod(x),)


def _same(n: Node, x: Shape) -> Shape:
    return x


RULES = {
    "bconv": _binary,
    "blinear": _binary,
    "conv": _conv,
    "linear": _linear,
    "affine": _per_channel,
    "prelu": _per_channel,
    "hardtanh": _hardtanh,
    "relu": _same,
    "maxpool": _pool,
    "avgpool": _pool,
    "gap": _gap,
    "add": _add,
    "slice": _slice,
    "pad": _pad,
    "flatten": _flatten,
}


def input_shape(n: Node, declared: Any) -> Shape:
    """The model's per-image input shape: the input node's ``shape`` (and the header's ``input_shape``, which
    must agree): (C, H, W) or (features,), positive integers."""
    shape = n.attrs.get("shape")
    if not (isinstance(shape, list) and len(shape) in (1, 3) and all(_is_int(v) and v >= 1 for v in shape)):
        raise GraphProblem(f"{_where(n)} has shape={shape!r}, expected [C, H, W] or [features] of integers >= 1")
    if declared is not None and declared != shape:
        raise GraphProblem(f"header input_shape={declared!r} disagrees with the input node's shape {shape}")
    if math.prod(shape) > MAX_ELEMENTS:
        raise GraphProblem(f"{_where(n)} has shape {shape}, more than {MAX_ELEMENTS:,} values per image")
    return tuple(shape)


def infer(n: Node, *inputs: Shape) -> Shape:
    """Output shape per image of one non-input node on inputs of the given shapes (checked as above)."""
    arity = ARITY.get(n.op, 1)
    if len(inputs) != arity:
        raise GraphProblem(f"{_where(n)} has {len(inputs)} inputs, expected {arity}")
    out = RULES[n.op](n, *inputs)
    if min(out) < 1:
        raise GraphProblem(f"{_where(n)} produces an empty tensor of shape {out}")
    if math.prod(out) > MAX_ELEMENTS:
        raise GraphProblem(f"{_where(n)} produces {math.prod(out):,} values per image (shape {out}), more "
                           f"than the limit of {MAX_ELEMENTS:,}")
    return out


def propagate(nodes: list[Node], declared_input: Any = None, sample: Shape | None = None) -> dict[str, Shape]:
    """Each node's output shape per image (NCHW order), checking every op on the way (see the module
    docstring). Nodes must be in topological order with the input first. ``sample``: run the graph on this
    input shape instead of the model's own (for inputs of another image size). Raises :class:`GraphProblem`."""
    first = nodes[0]
    if first.op != "input" or first.inputs:
        raise GraphProblem(f"{_where(first)} is the first node, expected the input")
    shapes: dict[str, Shape] = {first.name: input_shape(first, declared_input) if sample is None else sample}
    for n in nodes[1:]:
        shapes[n.name] = infer(n, *[shapes[i] for i in n.inputs])
    return shapes
