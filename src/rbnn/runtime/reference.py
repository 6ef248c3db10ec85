"""The NumPy reference engine: short, readable, exact. It is the oracle the fast engine is tested against.

Every tensor is NHWC float32 (or (N, F) after flatten). A binary layer

1. binarizes its input exactly as training does (``act_transform`` then sign with the layer's sign(0)),
2. packs the bits per pixel along channels into uint64 words (with a nonzero-mask plane, all ones unless
   the layer is ternary; zero padding pixels get mask 0, so border taps contribute exactly 0),
3. computes ``dot = popcount(m_a & m_w) − 2·popcount((a ^ w) & m_a & m_w)`` per tap with ``np.bitwise_count``,
4. returns ``dot * out_mul + out_add`` (weight scale, learned scale, bias and BatchNorm folded).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .format import Node
from .packing import pack_bits, unpack_bits
from .shapes import out_hw, pool_out_hw


def binarize_input(x: np.ndarray, node: Node) -> tuple[np.ndarray, np.ndarray | None]:
    """(negative bits, nonzero mask or None) of a binary layer's input, channels on the last axis."""
    at = node.attrs
    x = x.astype(np.float32, copy=False)
    if at["act_transform"] == "shift":
        v = x + node.arrays["act_shift"]
    elif at["act_transform"] == "standardize_sample":
        # sign((x - mean) / (std + eps)) == sign(x - mean): the positive std never changes the sign.
        n = x.shape[0]
        mean = x.reshape(n, -1).mean(axis=1, dtype=np.float64).astype(np.float32)
        v = x - mean.reshape(n, *([1] * (x.ndim - 1)))
    elif at["act_transform"] == "none":
        v = x
    else:
        raise ValueError(f"unknown act_transform {at['act_transform']!r} in node {node.name!r}")
    if at["zero"] == 1:
        # sign(0) = +1: copysign(1, v + 0.0) as rbnn.functional.sign does (a NaN goes by its sign bit)
        return np.signbit(v + np.float32(0.0)), None
    return v < 0, v != 0  # ternary: sign(0) = 0


def pool_counts(h: int, k: int, s: int, p: int, o: int, count_include_pad: bool) -> np.ndarray:
    """Per output index along one axis, how many elements torch's avg pool divides by: the window clipped to
    the padded input (padding counted) or to the input itself (``count_include_pad=False``). A ceil-mode
    window running past the right padding is clipped either way."""
    start = np.arange(o) * s - p
    end = np.minimum(start + k, h + p)
    if count_include_pad:
        return end - start
    return np.minimum(end, h) - np.maximum(start, 0)


def tap_words(node: Node, key: str = "w_bits") -> np.ndarray:
    """A conv's weight bits re-packed per (kh, kw) tap along channels: (O, KH, KW, ceil(C/64)) uint64.

    On disk each filter is one bit string in (kh, kw, c) order; per-tap words let a tap's weights be XORed
    with one pixel's packed channels. Computed once per node and cached on it."""
    cache = node.__dict__.setdefault("_cache", {})
    if key not in cache:
        o, c = node.attrs["out_channels"], node.attrs["in_channels"]
        kh, kw = node.attrs["kernel"]
        bits = unpack_bits(node.arrays[key], kh * kw * c).reshape(o, kh, kw, c)
        cache[key] = np.ascontiguousarray(pack_bits(bits))
    return cache[key]


def _weight_mask(node: Node, words: np.ndarray) -> np.ndarray:
    if "w_mask" in node.arrays:
        return tap_words(node, "w_mask") if node.op == "bconv" else node.arrays["w_mask"]
    c = node.attrs["in_channels"]
    return np.broadcast_to(pack_bits(np.ones(c, dtype=bool)), words.shape)


def bconv_dot(x: np.ndarray, node: Node) -> np.ndarray:
    """Integer pre-activations (N, Ho, Wo, O) of a binary conv on NHWC input ``x``."""
    neg, nz = binarize_input(x, node)
    a = pack_bits(neg)
    m = pack_bits(np.ones_like(neg) if nz is None else nz)
    (ph, pw), (sh, sw), (dh, dw) = node.attrs["padding"], node.attrs["stride"], node.attrs["dilation"]
    pad = ((0, 0), (ph, ph), (pw, pw), (0, 0))
    a, m = np.pad(a, pad), np.pad(m, pad)  # padding pixels: mask 0 -> contribute nothing
    w = tap_words(node)
    wm = _weight_mask(node, w)
    o, kh_, kw_, _ = w.shape
    n, h, wd = x.shape[0], x.shape[1], x.shape[2]
    ho, wo = out_hw(h, kh_, sh, ph, dh), out_hw(wd, kw_, sw, pw, dw)
    dot = np.zeros((n, ho, wo, o), dtype=np.int64)
    for kh in range(kh_):
        for kw in range(kw_):
            rows = slice(kh * dh, kh * dh + (ho - 1) * sh + 1, sh)
            cols = slice(kw * dw, kw * dw + (wo - 1) * sw + 1, sw)
            at, mt = a[:, rows, cols, None, :], m[:, rows, cols, None, :]  # (N, Ho, Wo, 1, Cw)
            both = mt & wm[:, kh, kw, :]  # (N, Ho, Wo, O, Cw)
            diff = (at ^ w[:, kh, kw, :]) & both
            dot += np.bitwise_count(both).sum(-1, dtype=np.int64) - 2 * np.bitwise_count(diff).sum(
                -1, dtype=np.int64
            )
    return dot


def blinear_dot(x: np.ndarray, node: Node) -> np.ndarray:
    """Integer pre-activations (N, O) of a binary linear layer on (N, F) input."""
    neg, nz = binarize_input(x, node)
    a = pack_bits(neg)[:, None, :]
    m = pack_bits(np.ones_like(neg) if nz is None else nz)[:, None, :]
    both = m & _weight_mask(node, node.arrays["w_bits"])
    diff = (a ^ node.arrays["w_bits"]) & both
    return np.bitwise_count(both).sum(-1, dtype=np.int64) - 2 * np.bitwise_count(diff).sum(-1, dtype=np.int64)


def affine_out(dot: np.ndarray, node: Node) -> np.ndarray:
    y = dot * node.arrays["out_mul"].astype(np.float64) + node.arrays["out_add"].astype(np.float64)
    return y.astype(np.float32)


def pad_width(node: Node, ndim: int) -> list[tuple[int, int]]:
    """A ``pad`` node's (before, after) zero padding per axis of the internal (NHWC) layout, from torch's pad
    list (pairs from the last NCHW dim backwards)."""
    p = node.attrs["torch_pad"]
    pairs = [(p[i], p[i + 1]) for i in range(0, len(p), 2)]
    nchw = [(0, 0)] * ndim
    for i, pr in enumerate(pairs):
        nchw[ndim - 1 - i] = pr
    return [nchw[0], nchw[2], nchw[3], nchw[1]] if ndim == 4 else nchw


class ReferenceOps:
    """One method per op; tensors are NHWC float32."""

    name = "reference"

    def bdot(self, node: Node, x: np.ndarray) -> np.ndarray:
        return bconv_dot(x, node) if node.op == "bconv" else blinear_dot(x, node)

    def bconv(self, node: Node, x: np.ndarray) -> np.ndarray:
        return affine_out(bconv_dot(x, node), node)

    def blinear(self, node: Node, x: np.ndarray) -> np.ndarray:
        return affine_out(blinear_dot(x, node), node)

    def conv(self, node: Node, x: np.ndarray) -> np.ndarray:
        """Float conv summed in float32 in (kh, kw, c) order, one rounding per multiply and per add, then the
        bias. No BLAS (whose order and FMA use depend on the library): the fast engine's kernel does the same
        operations in the same order, so both engines' floats, and every binarization after them, agree bit
        for bit (padding taps add 0·w = ±0, which changes nothing)."""
        w = node.arrays["weight"]  # (O, C, KH, KW)
        (ph, pw), (sh, sw), (dh, dw) = node.attrs["padding"], node.attrs["stride"], node.attrs["dilation"]
        o, c, kh_, kw_ = w.shape
        xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
        ho, wo = out_hw(x.shape[1], kh_, sh, ph, dh), out_hw(x.shape[2], kw_, sw, pw, dw)
        y = np.zeros((x.shape[0], ho, wo, o), dtype=np.float32)
        t = np.empty_like(y)
        for kh in range(kh_):
            for kw in range(kw_):
                xt = xp[
                    :,
                    kh * dh : kh * dh + (ho - 1) * sh + 1 : sh,
                    kw * dw : kw * dw + (wo - 1) * sw + 1 : sw,
                    :,
                ]
                for ci in range(c):
                    np.multiply(xt[..., ci, None], w[:, ci, kh, kw], out=t)
                    y += t
        return y + node.arrays["bias"]

    def linear(self, node: Node, x: np.ndarray) -> np.ndarray:
        """Float linear summed in float32 in input-feature order, then the bias: the fast engine's order (see
        :meth:`conv`)."""
        wt = node.arrays["weight"].T  # (F, O)
        y = np.zeros(x.shape[:-1] + wt.shape[1:], dtype=np.float32)
        t = np.empty_like(y)
        for f in range(wt.shape[0]):
            np.multiply(x[..., f, None], wt[f], out=t)
            y += t
        return y + node.arrays["bias"]

    def affine(self, node: Node, x: np.ndarray) -> np.ndarray:
        return x * node.arrays["mul"] + node.arrays["add"]

    def hardtanh(self, node: Node, x: np.ndarray) -> np.ndarray:
        return np.clip(x, np.float32(node.attrs["min"]), np.float32(node.attrs["max"]))

    def relu(self, node: Node, x: np.ndarray) -> np.ndarray:
        return np.maximum(x, np.float32(0))

    def maxpool(self, node: Node, x: np.ndarray) -> np.ndarray:
        (kh, kw), (sh, sw), (ph, pw) = node.attrs["kernel"], node.attrs["stride"], node.attrs["padding"]
        dh, dw = node.attrs.get("dilation", [1, 1])
        ceil = node.attrs.get("ceil_mode", False)
        ho, wo = pool_out_hw(x.shape[1], kh, sh, ph, dh, ceil), pool_out_hw(x.shape[2], kw, sw, pw, dw, ceil)
        # -inf padding, extended on the right far enough for a ceil-mode last window
        eh = max(0, (ho - 1) * sh + (kh - 1) * dh + 1 - (x.shape[1] + 2 * ph))
        ew = max(0, (wo - 1) * sw + (kw - 1) * dw + 1 - (x.shape[2] + 2 * pw))
        xp = np.pad(x, ((0, 0), (ph, ph + eh), (pw, pw + ew), (0, 0)), constant_values=-np.inf)
        win = sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(1, 2))
        win = win[:, : (ho - 1) * sh + 1 : sh, : (wo - 1) * sw + 1 : sw, :, ::dh, ::dw]
        return win.max(axis=(-2, -1)).astype(np.float32)

    def avgpool(self, node: Node, x: np.ndarray) -> np.ndarray:
        """Sum in float32 over the window in (kh, kw) order, then divide, as torch's CPU kernel does (the zero
        padding adds exact zeros); the divisor follows torch's ceil_mode / count_include_pad rules."""
        (kh, kw), (sh, sw), (ph, pw) = node.attrs["kernel"], node.attrs["stride"], node.attrs["padding"]
        ceil = node.attrs.get("ceil_mode", False)
        include = node.attrs.get("count_include_pad", True)
        n, h, w, c = x.shape
        ho, wo = pool_out_hw(h, kh, sh, ph, 1, ceil), pool_out_hw(w, kw, sw, pw, 1, ceil)
        eh, ew = max(0, (ho - 1) * sh + kh - (h + 2 * ph)), max(0, (wo - 1) * sw + kw - (w + 2 * pw))
        xp = np.pad(x.astype(np.float32, copy=False), ((0, 0), (ph, ph + eh), (pw, pw + ew), (0, 0)))
        acc = np.zeros((n, ho, wo, c), dtype=np.float32)
        for i in range(kh):
            for j in range(kw):
                acc += xp[:, i : i + (ho - 1) * sh + 1 : sh, j : j + (wo - 1) * sw + 1 : sw, :]
        div = np.outer(pool_counts(h, kh, sh, ph, ho, include), pool_counts(w, kw, sw, pw, wo, include))
        return acc / div.astype(np.float32)[None, :, :, None]

    def prelu(self, node: Node, x: np.ndarray) -> np.ndarray:
        """RPReLU / PReLU per channel (last axis): z = x + shift_in; (z if z > 0 else slope·z) + shift_out."""
        z = x + node.arrays["shift_in"]
        return np.where(z > 0, z, z * node.arrays["slope"]) + node.arrays["shift_out"]

    def gap(self, node: Node, x: np.ndarray) -> np.ndarray:
        return x.mean(axis=(1, 2), keepdims=True, dtype=np.float32)

    def add(self, node: Node, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a + b

    def slice(self, node: Node, x: np.ndarray) -> np.ndarray:
        sl = [slice(*s) for s in node.attrs["nchw_slices"]]
        sl += [slice(None)] * (4 - len(sl))
        if x.ndim == 4:
            return np.ascontiguousarray(x[sl[0], sl[2], sl[3], sl[1]])
        return x[tuple(sl[: x.ndim])]

    def pad(self, node: Node, x: np.ndarray) -> np.ndarray:
        return np.pad(x, pad_width(node, x.ndim))

    def flatten(self, node: Node, x: np.ndarray) -> np.ndarray:
        if x.ndim == 4:  # torch flattens in (C, H, W) order
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x).reshape(x.shape[0], -1)
