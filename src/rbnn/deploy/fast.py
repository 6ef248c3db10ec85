"""The numba engine: bit-packed binary convolution with an LLVM ``ctpop`` popcount, register-blocked.

Design (see docs/deploy.md):

- activations are NHWC float32 between layers; a binary layer packs its input per pixel along channels into
  uint64 words (binarization threshold fused into the packing: per-channel shift or per-sample mean), into a
  buffer that is already spatially zero-padded;
- the direct convolution runs over that padded buffer with a 4-pixel × 4-output-channel register block
  (16 accumulators) and plain loops for the leftover pixels / channels; padding words are 0, which XOR to
  the weight bits, so for border pixels the popcount of the weight taps that fall outside the image is
  subtracted again and only valid taps are counted: ``dot = C·n_valid − 2·(popcount − correction)``;
- the epilogue is fused: ``dot·out_mul + out_add`` (scale, λ, bias and BatchNorm folded at export), then an
  optional residual add and Hardtanh clamp, written straight to the float output;
- ternary (sign(0)=0) layers fall back to the NumPy reference kernel.

Every kernel is ``@njit(cache=True)``; call :func:`warmup` (or run once) before timing.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import reference as ref
from .format import Node, PackedGraph

# ---- popcount ----------------------------------------------------------------------------------------


@intrinsic
def popcount64(typingctx, x):
    """LLVM ``llvm.ctpop.i64`` (one POPCNT instruction on x86-64); returns the argument's 64-bit type."""
    if not isinstance(x, types.Integer) or x.bitwidth != 64:
        return None
    sig = x(x)

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.IntType(64), [ir.IntType(64)])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.ctpop.i64")
        return builder.call(fn, [args[0]])

    return sig, codegen


# ---- kernels -----------------------------------------------------------------------------------------


@njit(cache=True, parallel=True)
def pack_nhwc(x, shift, mean, ph, pw, out):
    """Binarize and pack NHWC float32 ``x`` into ``out`` (N, H+2ph, W+2pw, Cw) uint64 (border left as is).

    bit = 1 where not ((x + shift[c]) - mean[n] >= 0): sign(0) = +1, exactly the float32 ops torch does.
    """
    n_, h_, w_, c_ = x.shape
    cw = out.shape[3]
    for r in prange(n_ * h_):
        n = r // h_
        h = r - n * h_
        m = mean[n]
        for w in range(w_):
            for j in range(cw):
                word = np.uint64(0)
                c0 = j * 64
                cend = min(c_, c0 + 64)
                for c in range(c0, cend):
                    v = (x[n, h, w, c] + shift[c]) - m
                    # branch-free: random signs would mispredict half the time
                    neg = np.uint64(1) - np.uint64(v >= np.float32(0.0))
                    word |= neg << np.uint64(c - c0)
                out[n, h + ph, w + pw, j] = word


@njit(cache=True, parallel=True)
def bconv_kernel(xp, wb, wpop, mul, add, res, has_res, lo, hi, clamp, sh, sw, dh, dw, ph, pw, h_in, w_in, c_in, out):
    """Binary conv of padded packed ``xp`` (N, Hp, Wp, Cw) with ``wb`` (O, KH, KW, Cw) into float ``out``
    (N, Ho, Wo, O): ``(C·n_valid − 2·popcount over valid taps)·mul + add (+ res) (clamped to [lo, hi])``.
    ``wpop`` (O, KH·KW) holds the popcount of every weight tap (for the border correction)."""
    n_, hp, wp, cw = xp.shape
    o_, kh_, kw_, _ = wb.shape
    ho, wo = out.shape[1], out.shape[2]
    ntap = kh_ * kw_
    x2 = xp.reshape(n_ * hp * wp, cw)
    w2 = wb.reshape(o_, ntap * cw)
    xf = xp.reshape(n_ * hp * wp * cw)
    wf = wb.reshape(o_ * ntap * cw)
    wo_main = wo - wo % 4
    o_main = o_ - o_ % 4
    # with dilation 1 along W the KW taps of one kernel row are adjacent in memory: one span of KW*Cw words
    nspan = 1 if dw == 1 else kw_
    span = kw_ * cw if dw == 1 else cw
    xstep = sw * cw  # words between neighbouring output pixels
    wrow = ntap * cw  # words per output channel
    uxstep, uxstep2, uxstep3 = np.uint64(xstep), np.uint64(2 * xstep), np.uint64(3 * xstep)
    uwrow, uwrow2, uwrow3 = np.uint64(wrow), np.uint64(2 * wrow), np.uint64(3 * wrow)
    for r in prange(n_ * ho):
        n = r // ho
        oh = r - n * ho
        dots = np.empty((wo, o_), dtype=np.int64)
        for ow0 in range(0, wo_main, 4):
            for o0 in range(0, o_main, 4):
                a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = np.uint64(0)
                a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = np.uint64(0)
                for kh in range(kh_):
                    for sp in range(nspan):
                        # unsigned index arithmetic: no negative-index wraparound code in the hot loop
                        xb = np.uint64(((n * hp + oh * sh + kh * dh) * wp + ow0 * sw + sp * dw) * cw)
                        wb0 = np.uint64(o0 * wrow + (kh * kw_ + sp) * cw)
                        for j0 in range(span):
                            j = np.uint64(j0)
                            x0 = xf[xb + j]
                            x1 = xf[xb + uxstep + j]
                            x2_ = xf[xb + uxstep2 + j]
                            x3 = xf[xb + uxstep3 + j]
                            w0 = wf[wb0 + j]
                            w1 = wf[wb0 + uwrow + j]
                            w2_ = wf[wb0 + uwrow2 + j]
                            w3 = wf[wb0 + uwrow3 + j]
                            a00 += popcount64(x0 ^ w0)
                            a01 += popcount64(x0 ^ w1)
                            a02 += popcount64(x0 ^ w2_)
                            a03 += popcount64(x0 ^ w3)
                            a10 += popcount64(x1 ^ w0)
                            a11 += popcount64(x1 ^ w1)
                            a12 += popcount64(x1 ^ w2_)
                            a13 += popcount64(x1 ^ w3)
                            a20 += popcount64(x2_ ^ w0)
                            a21 += popcount64(x2_ ^ w1)
                            a22 += popcount64(x2_ ^ w2_)
                            a23 += popcount64(x2_ ^ w3)
                            a30 += popcount64(x3 ^ w0)
                            a31 += popcount64(x3 ^ w1)
                            a32 += popcount64(x3 ^ w2_)
                            a33 += popcount64(x3 ^ w3)
                dots[ow0, o0] = a00
                dots[ow0, o0 + 1] = a01
                dots[ow0, o0 + 2] = a02
                dots[ow0, o0 + 3] = a03
                dots[ow0 + 1, o0] = a10
                dots[ow0 + 1, o0 + 1] = a11
                dots[ow0 + 1, o0 + 2] = a12
                dots[ow0 + 1, o0 + 3] = a13
                dots[ow0 + 2, o0] = a20
                dots[ow0 + 2, o0 + 1] = a21
                dots[ow0 + 2, o0 + 2] = a22
                dots[ow0 + 2, o0 + 3] = a23
                dots[ow0 + 3, o0] = a30
                dots[ow0 + 3, o0 + 1] = a31
                dots[ow0 + 3, o0 + 2] = a32
                dots[ow0 + 3, o0 + 3] = a33
            # leftover output channels of this pixel block
            for o in range(o_main, o_):
                for i in range(4):
                    s = np.uint64(0)
                    for kh in range(kh_):
                        p = (n * hp + oh * sh + kh * dh) * wp + (ow0 + i) * sw
                        for kw in range(kw_):
                            t0 = (kh * kw_ + kw) * cw
                            for c in range(cw):
                                s += popcount64(x2[p + kw * dw, c] ^ w2[o, t0 + c])
                    dots[ow0 + i, o] = s
        # leftover pixels (wo % 4), every output channel
        for ow in range(wo_main, wo):
            for o in range(o_):
                s = np.uint64(0)
                for kh in range(kh_):
                    p = (n * hp + oh * sh + kh * dh) * wp + ow * sw
                    for kw in range(kw_):
                        t0 = (kh * kw_ + kw) * cw
                        for c in range(cw):
                            s += popcount64(x2[p + kw * dw, c] ^ w2[o, t0 + c])
                dots[ow, o] = s
        # epilogue: border correction, affine, residual, clamp
        ih0 = oh * sh - ph
        row_ok = ih0 >= 0 and ih0 + (kh_ - 1) * dh < h_in
        for ow in range(wo):
            iw0 = ow * sw - pw
            interior = row_ok and iw0 >= 0 and iw0 + (kw_ - 1) * dw < w_in
            nvalid = ntap
            if not interior:
                nvalid = 0
                for kh in range(kh_):
                    ih = ih0 + kh * dh
                    for kw in range(kw_):
                        iw = iw0 + kw * dw
                        if 0 <= ih < h_in and 0 <= iw < w_in:
                            nvalid += 1
            for o in range(o_):
                pc = np.int64(dots[ow, o])
                if not interior:
                    for kh in range(kh_):
                        ih = ih0 + kh * dh
                        for kw in range(kw_):
                            iw = iw0 + kw * dw
                            if not (0 <= ih < h_in and 0 <= iw < w_in):
                                pc -= wpop[o, kh * kw_ + kw]
                d = c_in * nvalid - 2 * pc
                y = np.float32(d) * mul[o] + add[o]
                if has_res:
                    y += res[n, oh, ow, o]
                if clamp:
                    y = min(max(y, lo), hi)
                out[n, oh, ow, o] = y


@njit(cache=True, parallel=True)
def maxpool_kernel(x, kh_, kw_, sh, sw, ph, pw, dh, dw, out):
    n_, h_, w_, c_ = x.shape
    ho, wo = out.shape[1], out.shape[2]
    for r in prange(n_ * ho):
        n = r // ho
        oh = r - n * ho
        for ow in range(wo):
            for c in range(c_):
                out[n, oh, ow, c] = -np.inf
            for kh in range(kh_):
                ih = oh * sh - ph + kh * dh
                if ih < 0 or ih >= h_:
                    continue
                for kw in range(kw_):
                    iw = ow * sw - pw + kw * dw
                    if iw < 0 or iw >= w_:
                        continue
                    for c in range(c_):
                        v = x[n, ih, iw, c]
                        if v > out[n, oh, ow, c] or v != v:
                            out[n, oh, ow, c] = v


@njit(cache=True, parallel=True)
def avgpool_kernel(x, kh_, kw_, sh, sw, ph, pw, include_pad, out):
    """Average pool of NHWC ``x``: per channel a float32 sum in (kh, kw) order over the in-bounds taps, then one
    division, as torch's CPU kernel; the divisor counts the padding (``include_pad``) but never the part of
    a ceil-mode window beyond the right padding."""
    n_, h_, w_, c_ = x.shape
    ho, wo = out.shape[1], out.shape[2]
    for r in prange(n_ * ho):
        n = r // ho
        oh = r - n * ho
        hs = oh * sh - ph
        he = min(hs + kh_, h_ + ph)
        h0, h1 = max(hs, 0), min(he, h_)
        for ow in range(wo):
            ws = ow * sw - pw
            we = min(ws + kw_, w_ + pw)
            w0, w1 = max(ws, 0), min(we, w_)
            cnt = (he - hs) * (we - ws) if include_pad else (h1 - h0) * (w1 - w0)
            div = np.float32(cnt)
            for c in range(c_):
                out[n, oh, ow, c] = np.float32(0.0)
            for ih in range(h0, h1):
                for iw in range(w0, w1):
                    for c in range(c_):
                        out[n, oh, ow, c] += x[n, ih, iw, c]
            for c in range(c_):
                out[n, oh, ow, c] = out[n, oh, ow, c] / div


@njit(cache=True, parallel=True)
def prelu_kernel(x, shift_in, slope, shift_out, out):
    """Per-channel (last axis) RPReLU: z = x + shift_in; (z if z > 0 else slope·z) + shift_out, float32."""
    c_ = x.shape[-1]
    x2 = x.reshape(-1, c_)
    o2 = out.reshape(-1, c_)
    for r in prange(x2.shape[0]):
        for c in range(c_):
            z = x2[r, c] + shift_in[c]
            if not z > np.float32(0.0):
                z = z * slope[c]
            o2[r, c] = z + shift_out[c]


@njit(cache=True, parallel=True)
def affine_clamp_kernel(x, mul, add, lo, hi, clamp, out):
    c_ = x.shape[-1]
    x2 = x.reshape(-1, c_)
    o2 = out.reshape(-1, c_)
    for r in prange(x2.shape[0]):
        for c in range(c_):
            y = x2[r, c] * mul[c] + add[c]
            if clamp:
                y = min(max(y, lo), hi)
            o2[r, c] = y


# ---- ops ---------------------------------------------------------------------------------------------

# Work below this many uint64 word operations runs on one thread: waking the pool costs more than it saves
# (and on a loaded machine a parallel region waits a scheduler tick for its second thread).
SERIAL_BELOW = 1 << 20


class _serial_if_small:
    def __init__(self, work: int) -> None:
        self.small = work < SERIAL_BELOW
        self.prev = 0

    def __enter__(self):
        if self.small:
            self.prev = numba.get_num_threads()
            numba.set_num_threads(1)

    def __exit__(self, *exc) -> None:
        if self.small:
            numba.set_num_threads(self.prev)


_DUMMY4 = np.zeros((1, 1, 1, 1), dtype=np.float32)


class _BinPrep:
    """Per-binary-layer constants prepared once at load."""

    def __init__(self, node: Node) -> None:
        at = node.attrs
        self.node = node
        self.ternary = bool(at.get("ternary", False)) or "w_mask" in node.arrays
        w = node.arrays["w_bits"]
        if node.op == "bconv":
            w = ref.tap_words(node)
        if node.op == "blinear":
            w = w.reshape(w.shape[0], 1, 1, w.shape[1])
            self.pad, self.stride, self.dil = (0, 0), (1, 1), (1, 1)
        else:
            self.pad, self.stride, self.dil = tuple(at["padding"]), tuple(at["stride"]), tuple(at["dilation"])
        self.w = np.ascontiguousarray(w)
        o, kh, kw, _ = self.w.shape
        self.wpop = np.bitwise_count(self.w).sum(-1, dtype=np.int64).reshape(o, kh * kw)
        self.c = int(at["in_channels"])
        self.mul = np.ascontiguousarray(node.arrays["out_mul"], dtype=np.float32)
        self.add = np.ascontiguousarray(node.arrays["out_add"], dtype=np.float32)
        self.shift = (
            np.ascontiguousarray(node.arrays["act_shift"], dtype=np.float32)
            if at["act_transform"] == "shift"
            else np.zeros(self.c, dtype=np.float32)
        )
        self.standardize = at["act_transform"] == "standardize_sample"
        self.ones = np.ones(o, dtype=np.float32)
        self.zeros = np.zeros(o, dtype=np.float32)

    def run(self, x, res=None, clamp=None, raw=False):
        """Binary layer on NHWC (or (N, F)) float32 ``x``; ``raw``: return integer dots (int64)."""
        flat = x.ndim == 2
        if flat:
            x = x.reshape(x.shape[0], 1, 1, x.shape[1])
        x = np.ascontiguousarray(x, dtype=np.float32)
        n, h, w, c = x.shape
        ph, pw = self.pad
        (sh, sw), (dh, dw) = self.stride, self.dil
        o, kh, kw, cw = self.w.shape
        ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        if self.standardize:
            mean = x.reshape(n, -1).mean(axis=1, dtype=np.float64).astype(np.float32)
        else:
            mean = np.zeros(n, dtype=np.float32)
        xp = np.zeros((n, h + 2 * ph, w + 2 * pw, cw), dtype=np.uint64)
        with _serial_if_small(x.size // 4):
            pack_nhwc(x, self.shift, mean, ph, pw, xp)
        out = np.empty((n, ho, wo, o), dtype=np.float32)
        mul, add = (self.ones, self.zeros) if raw else (self.mul, self.add)
        if res is not None and not raw and res.shape != out.shape:
            # the kernel indexes res without bounds checks: a residual of another shape (only a hand-made
            # graph has one) is added unfused, with NumPy's broadcasting like the reference engine
            y = self.run(x.reshape(n, c) if flat else x) + res
            return np.clip(y, np.float32(clamp[0]), np.float32(clamp[1])) if clamp is not None else y
        has_res = res is not None and not raw
        lo, hi = (np.float32(clamp[0]), np.float32(clamp[1])) if clamp is not None and not raw else (0.0, 0.0)
        with _serial_if_small(n * ho * wo * o * kh * kw * cw):
            bconv_kernel(
                xp,
                self.w,
                self.wpop,
                mul,
                add,
                res if has_res else _DUMMY4,
                has_res,
                np.float32(lo),
                np.float32(hi),
                clamp is not None and not raw,
                sh,
                sw,
                dh,
                dw,
                ph,
                pw,
                h,
                w,
                self.c,
                out,
            )
        if raw:
            out = out.astype(np.int64)
        return out.reshape(n, o) if flat else out


class FastOps(ref.ReferenceOps):
    """numba implementations of the heavy ops; the rest inherit the NumPy reference."""

    name = "fast"

    def __init__(self) -> None:
        self.prep: dict[str, _BinPrep] = {}
        self.plan = None

    # -- per node ----------------------------------------------------------------------------------------
    def _p(self, node: Node) -> _BinPrep:
        p = self.prep.get(node.name)
        if p is None:
            p = self.prep[node.name] = _BinPrep(node)
        return p

    def bdot(self, node: Node, x: np.ndarray) -> np.ndarray:
        p = self._p(node)
        if p.ternary:
            return super().bdot(node, x)
        return p.run(x, raw=True)

    def bconv(self, node: Node, x: np.ndarray, res=None, clamp=None) -> np.ndarray:
        p = self._p(node)
        if p.ternary:
            y = super().bconv(node, x) if node.op == "bconv" else super().blinear(node, x)
            if res is not None:
                y = y + res
            if clamp is not None:
                y = np.clip(y, np.float32(clamp[0]), np.float32(clamp[1]))
            return y
        return p.run(x, res=res, clamp=clamp)

    blinear = bconv

    def conv(self, node: Node, x: np.ndarray) -> np.ndarray:
        w = node.arrays["weight"]
        (ph, pw), (sh, sw), (dh, dw) = node.attrs["padding"], node.attrs["stride"], node.attrs["dilation"]
        o, c, kh, kw = w.shape
        key = node.name + "/w"
        wm = self.prep.get(key)
        if wm is None:  # (KH*KW*C, O) matching the im2col order (kh, kw, c)
            wm = self.prep[key] = np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(kh * kw * c, o))
        n, h, wd, _ = x.shape
        ho, wo = ref.out_hw(h, kh, sh, ph, dh), ref.out_hw(wd, kw, sw, pw, dw)
        xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0))) if ph or pw else x
        if kh == kw == 1:
            cols = np.ascontiguousarray(xp[:, : (ho - 1) * sh + 1 : sh, : (wo - 1) * sw + 1 : sw, :])
        else:
            cols = np.empty((n, ho, wo, kh, kw, c), dtype=np.float32)
            for i in range(kh):
                for j in range(kw):
                    cols[:, :, :, i, j, :] = xp[
                        :,
                        i * dh : i * dh + (ho - 1) * sh + 1 : sh,
                        j * dw : j * dw + (wo - 1) * sw + 1 : sw,
                        :,
                    ]
        y = cols.reshape(n * ho * wo, -1) @ wm
        y += node.arrays["bias"]
        return y.reshape(n, ho, wo, o)

    def maxpool(self, node: Node, x: np.ndarray) -> np.ndarray:
        (kh, kw), (sh, sw), (ph, pw) = node.attrs["kernel"], node.attrs["stride"], node.attrs["padding"]
        dh, dw = node.attrs.get("dilation", [1, 1])
        ceil = node.attrs.get("ceil_mode", False)
        n, h, w, c = x.shape
        ho, wo = ref.pool_out_hw(h, kh, sh, ph, dh, ceil), ref.pool_out_hw(w, kw, sw, pw, dw, ceil)
        out = np.empty((n, ho, wo, c), dtype=np.float32)
        with _serial_if_small(out.size * kh * kw // 8):
            maxpool_kernel(np.ascontiguousarray(x, dtype=np.float32), kh, kw, sh, sw, ph, pw, dh, dw, out)
        return out

    def avgpool(self, node: Node, x: np.ndarray) -> np.ndarray:
        (kh, kw), (sh, sw), (ph, pw) = node.attrs["kernel"], node.attrs["stride"], node.attrs["padding"]
        ceil = node.attrs.get("ceil_mode", False)
        n, h, w, c = x.shape
        ho, wo = ref.pool_out_hw(h, kh, sh, ph, 1, ceil), ref.pool_out_hw(w, kw, sw, pw, 1, ceil)
        out = np.empty((n, ho, wo, c), dtype=np.float32)
        include = bool(node.attrs.get("count_include_pad", True))
        with _serial_if_small(out.size * kh * kw // 8):
            avgpool_kernel(np.ascontiguousarray(x, dtype=np.float32), kh, kw, sh, sw, ph, pw, include, out)
        return out

    def prelu(self, node: Node, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.empty_like(x)
        a = node.arrays
        with _serial_if_small(x.size // 8):
            prelu_kernel(x, a["shift_in"], a["slope"], a["shift_out"], out)
        return out

    def affine(self, node: Node, x: np.ndarray, clamp=None) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.empty_like(x)
        lo, hi = clamp if clamp is not None else (0.0, 0.0)
        with _serial_if_small(x.size // 8):
            affine_clamp_kernel(
                x, node.arrays["mul"], node.arrays["add"], np.float32(lo), np.float32(hi), clamp is not None, out
            )
        return out

    # -- fused plan ------------------------------------------------------------------------------------
    def prepare(self, graph: PackedGraph) -> None:
        """Build a fused execution plan: bconv [-> add(residual)] [-> hardtanh] and affine -> hardtanh become
        one kernel call each, executed at the position of the last node of the group."""
        nodes = graph.nodes
        readers: dict[str, list[Node]] = {n.name: [] for n in nodes}
        for n in nodes:
            for i in n.inputs:
                readers[i].append(n)
        pos = {n.name: k for k, n in enumerate(nodes)}
        out_name = graph.output
        skip: set[str] = set()
        steps = []  # (result name, callable(env) -> array)

        def sole_reader(name: str, op: str) -> Node | None:
            rs = readers[name]
            if len(rs) == 1 and rs[0].op == op and name != out_name:
                return rs[0]
            return None

        for n in nodes:
            if n.name in skip:
                continue
            if n.op == "input":
                continue
            if n.op in ("bconv", "blinear"):
                self._p(n)
                last, res_name, clamp = n, None, None
                add = sole_reader(n.name, "add")
                if add is not None and n.op == "bconv" and add.name not in skip:
                    other = add.inputs[1] if add.inputs[0] == n.name else add.inputs[0]
                    if other != n.name:
                        res_name, last = other, add
                ht = sole_reader(last.name, "hardtanh")
                if ht is not None:
                    clamp, last = (ht.attrs["min"], ht.attrs["max"]), ht
                group = {n.name, last.name} | ({add.name} if res_name else set())
                skip |= group
                steps.append((pos[last.name], last.name, self._bin_step(n, res_name, clamp)))
                continue
            if n.op == "affine":
                ht = sole_reader(n.name, "hardtanh")
                if ht is not None:
                    skip.add(ht.name)
                    steps.append((pos[ht.name], ht.name, self._affine_step(n, (ht.attrs["min"], ht.attrs["max"]))))
                    continue
            steps.append((pos[n.name], n.name, self._plain_step(n)))
        steps.sort(key=lambda s: s[0])
        input_name = nodes[0].name
        order = [(name, fn) for _, name, fn in steps]

        def run(x: np.ndarray) -> np.ndarray:
            env = {input_name: x}
            for name, fn in order:
                env[name] = fn(env)
            return env[out_name]

        self.plan = run

    def _bin_step(self, node: Node, res_name: str | None, clamp):
        src = node.inputs[0]
        if res_name is None:
            return lambda env: self.bconv(node, env[src], None, clamp)
        return lambda env: self.bconv(node, env[src], np.ascontiguousarray(env[res_name], dtype=np.float32), clamp)

    def _affine_step(self, node: Node, clamp):
        src = node.inputs[0]
        return lambda env: self.affine(node, env[src], clamp)

    def _plain_step(self, node: Node):
        fn = getattr(self, node.op)
        ins = list(node.inputs)
        return lambda env: fn(node, *[env[i] for i in ins])


def warmup() -> None:
    """Compile (or load from cache) every kernel on tiny inputs."""
    x = np.zeros((1, 2, 2, 3), dtype=np.float32)
    xp = np.zeros((1, 4, 4, 1), dtype=np.uint64)
    pack_nhwc(x, np.zeros(3, np.float32), np.zeros(1, np.float32), 1, 1, xp)
    w = np.zeros((5, 3, 3, 1), dtype=np.uint64)
    out = np.empty((1, 2, 2, 5), dtype=np.float32)
    for has_res in (False, True):
        bconv_kernel(
            xp,
            w,
            np.zeros((5, 9), np.int64),
            np.ones(5, np.float32),
            np.zeros(5, np.float32),
            np.zeros((1, 2, 2, 5), np.float32),
            has_res,
            np.float32(-1),
            np.float32(1),
            True,
            1,
            1,
            1,
            1,
            1,
            1,
            2,
            2,
            3,
            out,
        )
    maxpool_kernel(x, 2, 2, 2, 2, 0, 0, 1, 1, np.empty((1, 1, 1, 3), np.float32))
    avgpool_kernel(x, 2, 2, 2, 2, 0, 0, True, np.empty((1, 1, 1, 3), np.float32))
    prelu_kernel(x, np.zeros(3, np.float32), np.ones(3, np.float32), np.zeros(3, np.float32), np.empty_like(x))
    affine_clamp_kernel(
        x,
        np.ones(3, np.float32),
        np.zeros(3, np.float32),
        np.float32(0),
        np.float32(0),
        False,
        np.empty_like(x),
    )
