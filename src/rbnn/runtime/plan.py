"""The fast engine's plan: per-layer constants prepared once at load (:class:`_BinPrep`) and the fused
execution plan of a graph (:class:`FastOps`), calling the numba kernels of :mod:`.kernels` with the thread
policy of :mod:`.threads`. See :mod:`.kernels` for the design of the kernels."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

import numba
import numpy as np

from . import reference as ref
from .buffers import StepBuffers
from .format import Node, PackedGraph
from .kernels import (
    LITTLE_ENDIAN,
    NG_BITS,
    NG_NDW,
    NG_NKW,
    NG_NPH,
    NG_NPW,
    NG_STD,
    affine_clamp_kernel,
    avgpool_kernel,
    bconv_kernel,
    border_table,
    fconv_kernel,
    flinear_kernel,
    gap_kernel,
    maxpool_kernel,
    pack_rows,
    prelu_kernel,
    row_window_weights,
    strided_copy_kernel,
    tap_popcounts,
)
from .launches import Replayer, copy_into, launch
from .threads import SERIAL_BELOW, TiledRunner, run_managed, serial_if_small, switch_in_plan

# op kinds of PackedModel.profile(); a fused step counts as the kind of its first node (a binary conv's fused
# residual add and Hardtanh count as binary conv), the time between steps as "other"
PROFILE_KINDS = (
    "binary conv",
    "input packing",
    "float conv",
    "linear",
    "pooling",
    "affine/activation/residual",
    "other",
)
_KIND = {
    "bconv": "binary conv",
    "blinear": "binary conv",
    "conv": "float conv",
    "linear": "linear",
    "maxpool": "pooling",
    "avgpool": "pooling",
    "gap": "pooling",
    "affine": "affine/activation/residual",
    "hardtanh": "affine/activation/residual",
    "relu": "affine/activation/residual",
    "prelu": "affine/activation/residual",
    "add": "affine/activation/residual",
}

_DUMMY4 = np.zeros((1, 1, 1, 1), dtype=np.float32)
_DUMMY_BITS = np.zeros((1, 1, 1, 1), dtype=np.uint64)
_DUMMY_SHIFT = np.zeros(1, dtype=np.float32)
_DUMMY_THRESHOLDS = np.zeros((2, 1), dtype=np.int32)
_NO_BITS = np.zeros(6, dtype=np.int64)  # fconv_kernel's ng (kernels.NG_*): no next-layer bits
BITS = "bits"  # env[(name, BITS)]: the row windows a fused binary step wrote for its binary reader
SHARED = "shared"  # env[(input, SHARED)]: a 3x3 step's row windows of an input that a 1x1 step reads too
POOL_MIN_IMAGES = 2  # a plan run over at least this many images pools its float outputs (StepBuffers.take)


class _Bound(NamedTuple):
    """A binary conv's kernel call for one input shape, without its arrays (:meth:`_BinPrep.bind`)."""

    g: np.ndarray  # int64 geometry (kernels.G_*)
    cbase: np.ndarray  # the border table (kernels.border_table): per row class, column and channel
    rowcls: np.ndarray  # the row class of every output row
    lohi: np.ndarray  # the clamp bounds, float32
    oshape: tuple[int, ...]  # the float output's (and residual's) shape
    nshape: tuple[int, ...] | None  # the next layer's row windows' shape, when this conv writes them
    want_float: bool
    serial: bool  # small work: one thread
    nshift: np.ndarray  # the next layer's per-channel shift
    ithr: np.ndarray  # the next layer's bits by integer thresholds (with g[G_ITHR])


class _BinPrep:
    """Per-binary-layer constants prepared once at load."""

    def __init__(self, node: Node, buffers: StepBuffers | None = None) -> None:
        at = node.attrs
        self.node = node
        self.buffers = buffers if buffers is not None else StepBuffers()  # this layer's arrays reused per run
        self.ternary = bool(at.get("ternary", False)) or "w_mask" in node.arrays
        w = node.arrays["w_bits"]
        if node.op == "bconv":
            w = ref.tap_words(node)
        if node.op == "blinear":
            w = w.reshape(w.shape[0], 1, 1, w.shape[1])
            self.pad, self.stride, self.dil = (0, 0), (1, 1), (1, 1)
        else:
            self.pad, self.stride, self.dil = tuple(at["padding"]), tuple(at["stride"]), tuple(at["dilation"])
        o, kh, kw, _ = w.shape
        self.kshape = (o, kh, kw)
        self.wpop = tap_popcounts(w)
        self.c = int(at["in_channels"])
        if self.c * kh * kw >= 1 << 24:
            raise ValueError(f"{node.name}: C·KH·KW = {self.c * kh * kw} is too large for the float32 epilogue")
        self.rw = (kw * self.c + 63) // 64
        self._layouts: dict[tuple, tuple] = {}
        self._thresholds: dict[tuple, np.ndarray | None] = {}
        self.wcol = row_window_weights(w, self.c)
        # float64 copies: the epilogue computes in float64 like the reference's affine_out
        self.mul = np.ascontiguousarray(node.arrays["out_mul"], dtype=np.float64)
        self.add = np.ascontiguousarray(node.arrays["out_add"], dtype=np.float64)
        self.shift = (
            np.ascontiguousarray(node.arrays["act_shift"], dtype=np.float32)
            if at["act_transform"] == "shift"
            else np.zeros(self.c, dtype=np.float32)
        )
        self.standardize = at["act_transform"] == "standardize_sample"
        # fconv_kernel's ng (kernels.NG_*) when a float conv writes this layer's row windows
        self.float_feed = np.zeros(len(_NO_BITS), dtype=np.int64)
        self.float_feed[[NG_BITS, NG_STD, NG_NKW, NG_NDW, NG_NPH, NG_NPW]] = (
            1, self.standardize, self.kshape[2], self.dil[1], self.pad[0], self.pad[1])
        self.ones = np.ones(o, dtype=np.float64)
        self.zeros = np.zeros(o, dtype=np.float64)

    def pack(self, x: np.ndarray, times: dict[str, float] | None = None) -> np.ndarray:
        """This layer's input: NHWC float32 ``x`` binarized (threshold and sign as the reference) into row windows
        (N, H+2ph, Wq, Rw) (:func:`.kernels.pack_rows`). ``times``: add the seconds to ``times["input packing"]``."""
        t0 = time.perf_counter() if times is not None else 0.0
        n, h, w, _ = x.shape
        ph, pw = self.pad
        kw, dw = self.kshape[2], self.dil[1]
        mean = np.zeros(n, dtype=np.float32)  # the kernel writes the per-sample means when standardizing
        xw = self.buffers.get((self.node.name, "in"), (n, h + 2 * ph, w + 2 * pw - dw * (kw - 1), self.rw), np.uint64)
        if switch_in_plan(2 * x.size < SERIAL_BELOW):
            launch(pack_rows, x, self.shift, mean, self.standardize, ph, pw, kw, dw, xw)
        else:
            with serial_if_small(2 * x.size):
                launch(pack_rows, x, self.shift, mean, self.standardize, ph, pw, kw, dw, xw)
        if times is not None:
            times["input packing"] += time.perf_counter() - t0
        return xw

    def input_hw(self, xw: np.ndarray) -> tuple[int, int]:
        """The input's H and W from its row windows' shape."""
        (ph, pw), kw, dw = self.pad, self.kshape[2], self.dil[1]
        return xw.shape[1] - 2 * ph, xw.shape[2] - 2 * pw + dw * (kw - 1)

    def _layout(self, h: int, w: int, flags: tuple[int, ...], nxt: _BinPrep | None, clamp, xoff: int = 0) -> tuple:
        """Per input size, flags, next layer and clamp, computed once: the kernel's int64 geometry (``G_*``), the
        per-sample shapes of the float output and of the next layer's row windows, the clamp bounds as float32,
        the word operations per sample (the thread policy's work) and the border table (``border_table``)."""
        key = (h, w, flags, id(nxt), clamp, xoff)
        lay = self._layouts.get(key)
        if lay is None:
            (ph, pw), (sh, sw), (dh, dw) = self.pad, self.stride, self.dil
            o, kh, kw = self.kshape
            ho, wo = ref.out_hw(h, kh, sh, ph, dh), ref.out_hw(w, kw, sw, pw, dw)
            nkw, ndw, (nph, npw) = (nxt.kshape[2], nxt.dil[1], nxt.pad) if nxt is not None else (1, 1, (0, 0))
            geom = [kh, kw, sh, sw, dh, dw, ph, pw, h, w, self.c, ho, wo, o, nkw, ndw, nph, npw, *flags, xoff]
            g = np.array(geom, dtype=np.int64)
            nshape = (ho + 2 * nph, wo + 2 * npw - ndw * (nkw - 1), nxt.rw) if nxt is not None else None
            lohi = np.array(clamp if clamp is not None else (0.0, 0.0), dtype=np.float32)
            cbase, rowcls = border_table(self.wpop, g)
            lay = (g, (ho, wo, o), nshape, lohi, ho * wo * o * kh * self.rw, cbase, rowcls)
            if len(self._layouts) < 256:
                self._layouts[key] = lay
        return lay

    def bit_thresholds(self, nxt: _BinPrep, clamp) -> np.ndarray | None:
        """Per output channel, the integer rule that gives ``nxt``'s input bit straight from this layer's dot
        ``v = cn − 2·popcount`` (|v| ≤ K = C·KH·KW): the float epilogue ``float32(v·mul + add)`` (clamped), plus
        ``nxt``'s shift, then the sign bit, is monotone in ``v``, so the bit is ``v < t`` or ``−v < t``. Found by
        running exactly those float operations on every ``v`` in [−K, K] (so it is exact by construction) as
        (2, O) int32: 0/−1 (negate) and ``t``. None when a channel's bits are not a step in ``v`` (non-finite
        constants): then the float epilogue runs."""
        key = (id(nxt), clamp)
        if key in self._thresholds:
            return self._thresholds[key]
        o, kh, kw = self.kshape
        k = self.c * kh * kw
        v = np.arange(-k, k + 1, dtype=np.float64)[:, None]
        out = None
        with np.errstate(all="ignore"):
            y = (v * self.mul[None, :] + self.add[None, :]).astype(np.float32)
            if clamp is not None:
                y = np.minimum(np.maximum(y, np.float32(clamp[0])), np.float32(clamp[1]))
            z = ((y + nxt.shift[None, :]) - np.float32(0.0)) + np.float32(0.0)
        finite = all(np.isfinite(a).all() for a in (self.mul, self.add, nxt.shift))
        bits = np.signbit(z)  # (2K+1, O), row j is v = j − K
        steps = np.diff(bits.astype(np.int8), axis=0)
        if finite and not np.isnan(z).any() and ((steps != 0).sum(axis=0) <= 1).all():
            out = np.zeros((2, o), dtype=np.int32)
            down = (steps == -1).any(axis=0)  # ones, then zeros: v < first zero
            up = (steps == 1).any(axis=0)  # zeros, then ones: v >= first one, i.e. −v < 1 − first one
            first_zero = np.argmin(bits, axis=0) - k
            first_one = np.argmax(bits, axis=0) - k
            out[1] = np.where(bits[0], k + 1, -k)  # constant channels: always (v < K+1) or never (v < −K)
            out[1, down] = first_zero[down]
            out[0, up], out[1, up] = -1, 1 - first_one[up]
        self._thresholds[key] = out  # one per (reader, clamp): a layer has one reader and one clamp in a plan
        return out

    def bind(self, n: int, h: int, w: int, has_res: bool, clamp, want_float: bool, nxt: _BinPrep | None,
             xoff: int = 0) -> _Bound:
        """Everything a kernel call needs besides its input, residual and output arrays, for a batch of ``n``
        H x W inputs; :class:`_BinStep` keeps it per input shape so that a call does no Python work beyond
        allocating its outputs (at batch 1 that work was a third of ResNet-20's latency). ``xoff``: the words
        from a row window's start to this layer's operand (``kernels.G_XOFF``)."""
        cl = (float(clamp[0]), float(clamp[1])) if clamp is not None else None
        bits = nxt is not None
        std = bits and nxt.standardize  # bits after the whole output, from its per-sample mean: needs the floats
        # (kept in the kernel's scratch unless someone reads them)
        ithr = self.bit_thresholds(nxt, cl) if bits and not std and not want_float and not has_res else None
        flags = (int(has_res), int(cl is not None), int(want_float), int(bits and not std), int(ithr is not None),
                 int(std))
        g, oshape, nshape, lohi, work, cbase, rowcls = self._layout(h, w, flags, nxt, cl, xoff)
        return _Bound(
            g, cbase, rowcls, lohi, (n, *oshape), (n, *nshape) if bits else None, want_float, n * work < SERIAL_BELOW,
            nxt.shift if bits else _DUMMY_SHIFT, _DUMMY_THRESHOLDS if ithr is None else ithr,
        )

    def call(self, b: _Bound, xp: np.ndarray, res: np.ndarray | None, raw: bool = False, in_place: bool = False):
        """Run the kernel bound by :meth:`bind` on row windows ``xp``: ``(float output or None, the next
        layer's row windows or None)``. ``res``: a C-contiguous float32 residual of the output's shape;
        ``in_place``: write the float output over ``res`` (the caller knows no one reads it later; the kernel
        reads each residual value before it writes that output value)."""
        name = self.node.name
        if not b.want_float:
            out = _DUMMY4
        elif in_place and res is not None:
            out = res
        else:
            out = self.buffers.take((name, "out"), b.oshape, np.float32)
        # the kernel writes every row of the next layer's row windows but its padding rows: those stay zero
        nout = _DUMMY_BITS if b.nshape is None else self.buffers.get((name, "bits"), b.nshape, np.uint64, zeroed=True)
        mul, add = (self.ones, self.zeros) if raw else (self.mul, self.add)
        args = (xp, self.wcol, b.cbase, b.rowcls, b.g, mul, add, _DUMMY4 if res is None else res, b.lohi, out, b.nshift,
                nout, b.ithr)
        if switch_in_plan(b.serial):
            launch(bconv_kernel, *args)
        else:
            with serial_if_small(0 if b.serial else SERIAL_BELOW):
                launch(bconv_kernel, *args)
        return (out if b.want_float else None), (nout if b.nshape is not None else None)

    def conv(self, xp, h, w, res=None, clamp=None, raw=False, want_float=True, nxt: _BinPrep | None = None):
        """The conv of packed input ``xp`` (from :meth:`pack`, of an H x W input): ``(float32 output or None,
        the row windows of ``nxt``'s input or None)``; ``raw``: the integer dots (int64) as the output. With
        ``nxt`` the next binary layer's input is binarized in the epilogue (``nxt`` thresholds per channel)."""
        if raw:
            res, clamp, want_float, nxt = None, None, True, None
        b = self.bind(xp.shape[0], h, w, res is not None, clamp, want_float, nxt)
        if res is not None and res.shape != b.oshape:
            # the kernel indexes res without bounds checks: a residual of another shape (only a hand-made
            # graph has one) is added unfused, with NumPy's broadcasting like the reference engine
            y = self.conv(xp, h, w)[0] + res
            y = np.clip(y, np.float32(clamp[0]), np.float32(clamp[1])) if clamp is not None else y
            return y, (None if nxt is None else nxt.pack(np.ascontiguousarray(y, dtype=np.float32)))
        out, nout = self.call(b, xp, res, raw)
        return (out.astype(np.int64) if raw else out), nout

    def run(self, x, res=None, clamp=None, raw=False, times: dict[str, float] | None = None):
        """Binary layer on NHWC (or (N, F)) float32 ``x``; ``raw``: return integer dots (int64). ``times``: add
        the seconds spent binarizing and packing the input to ``times["input packing"]`` (profiling)."""
        flat = x.ndim == 2
        if flat:
            x = x.reshape(x.shape[0], 1, 1, x.shape[1])
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = self.conv(self.pack(x, times), x.shape[1], x.shape[2], res, clamp, raw)[0]
        return out.reshape(out.shape[0], -1) if flat else out


class _BinStep:
    """One fused binary step of the plan: [pack] -> bconv [-> add residual] [-> hardtanh] [-> the next binary
    layer's sign bits]. Reads its input as row windows (``env[(src, BITS)]``) when the step before wrote them,
    and writes ``env[(name, BITS)]`` when ``nxt`` is set; returns the float output, or None when no one reads
    it."""

    def __init__(self, ops: FastOps, node: Node, name: str, res_name, clamp, packed_in: bool, nxt, want_float):
        self.ops, self.node, self.name, self.src = ops, node, name, node.inputs[0]
        self.share = False  # keep this step's packed input in env[(src, SHARED)] for a 1x1 step (FastOps._shareable)
        # >= 0: read env[(src, SHARED)] (another step's 3-tap windows), this many words after a window's start
        # in the row below its padding row: the middle tap of window (row + 1, column) is input pixel (row, column)
        self.shared_xoff = -1
        self.prep = ops._p(node)
        self.res_name, self.clamp, self.packed_in, self.nxt, self.want_float = (
            res_name, clamp, packed_in, nxt, want_float)
        self.bound: dict[tuple[int, ...], _Bound] = {}  # by input row-window shape
        self.res_dies = False  # no later step reads the residual: the output may overwrite it (set by the plan)
        self.direct = node.op == "bconv" and not self.prep.ternary  # else the generic op (flat input, ternary)

    def __call__(self, env: dict) -> np.ndarray | None:
        p = self.prep
        if self.shared_xoff >= 0:
            xp = env[(self.src, SHARED)]
        elif self.packed_in:
            xp = env[(self.src, BITS)]
            if self.share:
                env[(self.src, SHARED)] = xp
        elif not self.direct:
            return self.ops.bconv(self.node, env[self.src], self._res(env), self.clamp)
        else:
            xp = p.pack(np.ascontiguousarray(env[self.src], dtype=np.float32),
                        getattr(self.ops._profiling, "times", None))
            if self.share:
                env[(self.src, SHARED)] = xp
        b = self.bound.get(xp.shape)
        if b is None:
            if self.shared_xoff >= 0:  # another step's 3-tap, pad-1 windows: H + 2 rows, W windows
                (h, w), xoff = (xp.shape[1] - 2, xp.shape[2]), xp.shape[2] * xp.shape[3] + self.shared_xoff
            else:
                (h, w), xoff = p.input_hw(xp), 0
            b = p.bind(xp.shape[0], h, w, self.res_name is not None, self.clamp, self.want_float, self.nxt, xoff)
            if len(self.bound) < 64:
                self.bound[xp.shape] = b
        res = self._res(env)
        if res is not None and res.shape != b.oshape:
            out, nout = p.conv(xp, *p.input_hw(xp), res, self.clamp, False, self.want_float, self.nxt)
        else:
            out, nout = p.call(b, xp, res, in_place=self.res_dies and self.ops.buffers.owns(res, env.values()))
        if nout is not None:
            env[(self.name, BITS)] = nout
        return out

    def _res(self, env: dict) -> np.ndarray | None:
        if self.res_name is None:
            return None
        return np.ascontiguousarray(env[self.res_name], dtype=np.float32)


def to_internal(x: np.ndarray) -> np.ndarray:
    """A batch in the model's layout (NCHW images) as the engine's internal one (NHWC, C-contiguous)."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1) if x.ndim == 4 else x)


def _nhwc_slices(node: Node) -> list[tuple]:
    """A 4-D ``slice`` node's (start, stop, step) per NHWC axis (it stores them in NCHW order)."""
    n, c, h, w = node.attrs["nchw_slices"]
    return [tuple(n), tuple(h), tuple(w), tuple(c)]


class FastOps(ref.ReferenceOps):
    """numba implementations of the heavy ops; the rest inherit the NumPy reference."""

    name = "fast"

    def __init__(self) -> None:
        if not LITTLE_ENDIAN:
            raise RuntimeError("the fast engine needs a little-endian CPU; use backend='reference'")
        self.prep: dict[str, _BinPrep] = {}
        self.plan = None
        self.input_name, self.input_nchw = "", False  # the plan's input; NCHW when only float convs read it
        self.steps: list[tuple[str, str, Callable]] = []  # (result name, op kind, callable(env) -> array)
        self.tiles = TiledRunner()
        self.buffers = StepBuffers()  # each step's output arrays, reused by the next plan run on the same thread
        self._profiling = threading.local()  # .times: seconds per op kind while profile() runs on this thread

    # -- per node ----------------------------------------------------------------------------------------
    def _p(self, node: Node) -> _BinPrep:
        p = self.prep.get(node.name)
        if p is None:
            p = self.prep[node.name] = _BinPrep(node, self.buffers)
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
        return p.run(x, res=res, clamp=clamp, times=getattr(self._profiling, "times", None))

    blinear = bconv

    def _float_weight(self, node: Node) -> np.ndarray:
        """The float weight with the output axis last: (KH, KW, C, O) for a conv, (F, O) for a linear."""
        key = node.name + "/wt"
        wt = self.prep.get(key)
        if wt is None:
            w = node.arrays["weight"]
            wt = self.prep[key] = np.ascontiguousarray(w.transpose(2, 3, 1, 0) if w.ndim == 4 else w.T)
        return wt

    def conv(self, node: Node, x: np.ndarray, clamp=None) -> np.ndarray:
        """Float conv; ``clamp``: a fused Hardtanh's (min, max)."""
        return self.conv_bits(node, x, clamp)[0]

    def conv_bits(self, node: Node, x: np.ndarray, clamp=None, nxt: _BinPrep | None = None, nchw: bool = False):
        """Float conv (``clamp``: a fused Hardtanh's (min, max)): ``(float32 output, the row windows of binary layer
        ``nxt``'s input or None)``: with ``nxt`` the kernel binarizes its output for ``nxt`` as ``nxt.pack`` would.
        ``nchw``: ``x`` is NCHW (the model's input, which the kernel wants planar anyway), else NHWC."""
        (ph, pw), (sh, sw), (dh, dw) = node.attrs["padding"], node.attrs["stride"], node.attrs["dilation"]
        wt = self._float_weight(node)
        kh, kw, _, o = wt.shape
        n, c, h, wd = x.shape if nchw else (x.shape[0], x.shape[3], x.shape[1], x.shape[2])
        oshape = (n, ref.out_hw(h, kh, sh, ph, dh), ref.out_hw(wd, kw, sw, pw, dw), o)
        out = self.buffers.take((node.name, "out"), oshape, np.float32)
        # planar and zero-padded (see the kernel): only the interior is written, so a kept copy's border stays 0
        xp = self.buffers.get((node.name, "in"), (n, c, h + 2 * ph, wd + 2 * pw), np.float32, zeroed=True)
        launch(copy_into, xp[:, :, ph : ph + h, pw : pw + wd], x if nchw else x.transpose(0, 3, 1, 2))
        nout, nshift, ng = _DUMMY_BITS, _DUMMY_SHIFT, _NO_BITS
        if nxt is not None:
            (nph, npw), nkw, ndw = nxt.pad, nxt.kshape[2], nxt.dil[1]
            ho, wo = oshape[1], oshape[2]
            nshape = (n, ho + 2 * nph, wo + 2 * npw - ndw * (nkw - 1), nxt.rw)
            nout = self.buffers.get((node.name, "bits"), nshape, np.uint64, zeroed=True)  # padding rows stay 0
            nshift, ng = nxt.shift, nxt.float_feed
        with serial_if_small(out.size * c * kh * kw // 8):
            lo, hi = np.float32(clamp[0] if clamp else 0), np.float32(clamp[1] if clamp else 0)
            launch(fconv_kernel, xp, wt, node.arrays["bias"], sh, sw, dh, dw, clamp is not None, lo, hi, out, nshift,
                   nout, ng)
        return out, (nout if nxt is not None else None)

    def linear(self, node: Node, x: np.ndarray) -> np.ndarray:
        if x.ndim != 2:
            return super().linear(node, x)
        wt = self._float_weight(node)
        out = self.buffers.get((node.name, "out"), (x.shape[0], wt.shape[1]), np.float32)
        with serial_if_small(x.shape[0] * wt.size // 8):
            launch(flinear_kernel, np.ascontiguousarray(x, dtype=np.float32), wt, node.arrays["bias"], out)
        return out

    def maxpool(self, node: Node, x: np.ndarray) -> np.ndarray:
        (kh, kw), (sh, sw), (ph, pw) = node.attrs["kernel"], node.attrs["stride"], node.attrs["padding"]
        dh, dw = node.attrs.get("dilation", [1, 1])
        ceil = node.attrs.get("ceil_mode", False)
        n, h, w, c = x.shape
        ho, wo = ref.pool_out_hw(h, kh, sh, ph, dh, ceil), ref.pool_out_hw(w, kw, sw, pw, dw, ceil)
        out = self.buffers.get((node.name, "out"), (n, ho, wo, c), np.float32)
        with serial_if_small(out.size * kh * kw // 8):
            launch(maxpool_kernel, np.ascontiguousarray(x, dtype=np.float32), kh, kw, sh, sw, ph, pw, dh, dw, out)
        return out

    def avgpool(self, node: Node, x: np.ndarray) -> np.ndarray:
        (kh, kw), (sh, sw), (ph, pw) = node.attrs["kernel"], node.attrs["stride"], node.attrs["padding"]
        ceil = node.attrs.get("ceil_mode", False)
        n, h, w, c = x.shape
        ho, wo = ref.pool_out_hw(h, kh, sh, ph, 1, ceil), ref.pool_out_hw(w, kw, sw, pw, 1, ceil)
        out = self.buffers.get((node.name, "out"), (n, ho, wo, c), np.float32)
        include = bool(node.attrs.get("count_include_pad", True))
        with serial_if_small(out.size * kh * kw // 8):
            launch(avgpool_kernel, np.ascontiguousarray(x, dtype=np.float32), kh, kw, sh, sw, ph, pw, include, out)
        return out

    def gap(self, node: Node, x: np.ndarray) -> np.ndarray:
        """Global average pool in one kernel call, NumPy's summation order (NumPy's ``mean`` machinery cost
        15-20 µs per call at batch 1)."""
        if x.ndim != 4:
            return super().gap(node, x)
        out = self.buffers.get((node.name, "out"), (x.shape[0], 1, 1, x.shape[3]), np.float32)
        launch(gap_kernel, np.ascontiguousarray(x, dtype=np.float32), out)
        return out

    @staticmethod
    def slice_pad(index: tuple[slice, ...], width: list[tuple[int, int]], x: np.ndarray, out=None) -> np.ndarray:
        """An option-A shortcut (a strided slice ``index`` of NHWC ``x``, then zero padding ``width``) as one
        allocation and one copy (two plan steps cost ~25 µs at batch 1); the same values as the two ops.
        ``out``: the result's array, zero outside the copied part (a kept one from an earlier call is)."""
        view = x[index]
        shape = tuple(s + a + b for s, (a, b) in zip(view.shape, width))
        out = np.zeros(shape, dtype=x.dtype) if out is None else out
        launch(copy_into, out[tuple(slice(a, a + s) for s, (a, _) in zip(view.shape, width))], view)
        return out

    def pad(self, node: Node, x: np.ndarray) -> np.ndarray:
        """Zero padding by one allocation and one copy: ``np.pad`` cost 70-80 µs per call in Python (15 % of
        ResNet-20's batch-1 latency, two option-A shortcuts); the same values."""
        width = ref.pad_width(node, x.ndim)
        if any(a < 0 or b < 0 for a, b in width):
            return super().pad(node, x)
        shape = tuple(s + a + b for s, (a, b) in zip(x.shape, width))
        out = self.buffers.get((node.name, "out"), shape, x.dtype, zeroed=True)  # only the interior is written
        launch(copy_into, out[tuple(slice(a, a + s) for s, (a, _) in zip(x.shape, width))], x)
        return out

    def prelu(self, node: Node, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = self.buffers.get((node.name, "out"), x.shape, np.float32)
        a = node.arrays
        with serial_if_small(x.size // 8):
            launch(prelu_kernel, x, a["shift_in"], a["slope"], a["shift_out"], out)
        return out

    def affine(self, node: Node, x: np.ndarray, clamp=None) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = self.buffers.get((node.name, "out"), x.shape, np.float32)
        lo, hi = clamp if clamp is not None else (0.0, 0.0)
        with serial_if_small(x.size // 8):
            launch(affine_clamp_kernel, x, node.arrays["mul"], node.arrays["add"], np.float32(lo), np.float32(hi),
                   clamp is not None, out)
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
        self.input_name = nodes[0].name
        in_readers = readers[self.input_name]
        self.input_nchw = bool(in_readers) and all(r.op == "conv" and r.name != graph.output for r in in_readers)
        pos = {n.name: k for k, n in enumerate(nodes)}
        out_name = graph.output
        skip: set[str] = set()
        steps = []  # (position, result name, first node of the group, callable(env) -> array)
        bins = []  # binary groups: (first node, last node's name, residual's name, clamp)
        fconvs = []  # float convs: (node, last node's name, clamp)
        members: dict[str, set[str]] = {}  # a step's result name -> the names of the nodes it runs

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
                members[last.name] = group
                steps.append((pos[last.name], last.name, n, None))
                bins.append((n, last.name, res_name, clamp))
                continue
            if n.op == "slice" and len(n.attrs["nchw_slices"]) == 4:
                pd = sole_reader(n.name, "pad")
                if pd is not None and len(pd.attrs["torch_pad"]) <= 6 and min(pd.attrs["torch_pad"]) >= 0:
                    skip.add(pd.name)
                    members[pd.name] = {n.name, pd.name}
                    steps.append((pos[pd.name], pd.name, n, self._slice_pad_step(n, pd)))
                    continue
            if n.op == "conv":  # a Hardtanh that follows is clamped inside the same kernel
                ht = sole_reader(n.name, "hardtanh")
                clamp, last = (None, n) if ht is None else ((ht.attrs["min"], ht.attrs["max"]), ht)
                skip.add(last.name)
                members[last.name] = {n.name, last.name}
                steps.append((pos[last.name], last.name, n, None))
                fconvs.append((n, last.name, clamp))
                continue
            if n.op == "affine":  # a Hardtanh that follows is clamped inside the same kernel
                ht = sole_reader(n.name, "hardtanh")
                if ht is not None:
                    skip.add(ht.name)
                    members[ht.name] = {n.name, ht.name}
                    steps.append((pos[ht.name], ht.name, n, self._clamped_step(n, (ht.attrs["min"], ht.attrs["max"]))))
                    continue
            members[n.name] = {n.name}
            steps.append((pos[n.name], n.name, n, self._plain_step(n)))
        bin_steps = self._feed_steps(bins, fconvs, readers, pos)
        steps = [(k, name, node, fn or bin_steps[node.name]) for k, name, node, fn in sorted(steps, key=lambda s: s[0])]
        self.output_name = out_name
        self.steps = [(name, _KIND.get(node.op, "other"), fn) for _, name, node, fn in steps]
        self.dies = self._dead_values(nodes, pos, members, out_name)  # per step, the values no later step reads
        for (_, _, fn), dead in zip(self.steps, self.dies):
            if isinstance(fn, _BinStep) and fn.res_name is not None:
                fn.res_dies = fn.res_name in dead and fn.res_name != self.input_name
        self.plan = self._make_run(graph, out_name)

    def _feed_steps(self, bins: list[tuple], fconvs: list[tuple], readers: dict[str, list[Node]],
                    pos: dict[str, int]) -> dict[str, Callable]:
        """The binary groups' steps and the float convs' steps (by first node's name). A float conv (the stem)
        whose only binary reader binarizes per channel or per sample writes that reader's row windows itself
        (the reader packs nothing)."""
        firsts = {first.name for first, _, _, _ in bins}
        float_feeds: dict[str, Node] = {}
        for n, last, _ in fconvs:
            binary = [r for r in readers[last] if r.op in ("bconv", "blinear")]
            if len(binary) == 1 and binary[0].name in firsts and self._reads_bits(binary[0], last):
                float_feeds[n.name] = binary[0]
        steps: dict[str, Callable] = dict(self._bin_steps(bins, readers, pos, {c.name for c in float_feeds.values()}))
        for n, last, clamp in fconvs:
            c = float_feeds.get(n.name)
            steps[n.name] = self._float_conv_step(n, clamp, last, None if c is None else self._p(c))
        return steps

    def _dead_values(self, nodes: list[Node], pos: dict[str, int], members: dict[str, set[str]],
                     out_name: str) -> list[list[str]]:
        """Per step of :attr:`steps`, the values that no later step reads (the output never dies)."""
        by_node = {m: name for name, group in members.items() for m in group}
        last_read = {}
        for k, (name, _, _) in enumerate(self.steps):
            for m in members[name]:
                for i in nodes[pos[m]].inputs:
                    if by_node.get(i) != name:
                        last_read[i] = k
        dies: list[list[str]] = [[] for _ in self.steps]
        for v, k in last_read.items():
            if v != out_name:
                dies[k].append(v)
        return dies

    def _make_run(self, graph: PackedGraph, out_name: str) -> Callable[[np.ndarray], np.ndarray]:
        """The plan as one callable on a batch in the model's layout (NCHW images), tiled on large batches."""
        order = [(name, fn, dead) for (name, _, fn), dead in zip(self.steps, self.dies)]
        input_name, buffers, entry = self.input_name, self.buffers, self._entry
        replayer = self.replayer = Replayer()  # a new plan forgets the old plan's recordings

        def execute(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """(the plan's input, its result) for batch ``x``; the result may be a kept array."""
            # a tile's float outputs share a pool of arrays, handed on once their value is dead, so that a
            # step writes into memory a step before it just left in cache (each step's own array was cold:
            # a tile's activations do not fit the caches); batch 1's small arrays stay per step
            pool = x.shape[0] >= POOL_MIN_IMAGES
            first = entry(x)  # per tile, on the tile's thread
            env = {input_name: first}
            buffers.pooling(pool)
            try:
                for name, fn, dead in order:
                    env[name] = fn(env)
                    if pool:
                        for v in dead:
                            buffers.give(env.pop(v), env.values())
            finally:
                buffers.pooling(False)
            return first, env[out_name]

        def run(x: np.ndarray) -> np.ndarray:
            if not buffers.activate():  # a run inside a run shares the outer run's arrays
                return execute(x)[1]
            try:  # the same kept (or pooled) arrays every run of a shape: its launches can be replayed
                return replayer.run(execute, entry, x)
            finally:
                buffers.deactivate()

        # the largest activation of one image at the model's input size (float32), scaled to the input's pixels
        shapes = graph.shapes or {}
        in_size = int(np.prod(shapes.get(input_name, (1,))))
        act_bytes = 4 * max((int(np.prod(s)) for s in shapes.values()), default=0)
        return lambda x: self.tiles(run, x, int(act_bytes * x[0].size / max(1, in_size)))

    def _entry(self, x: np.ndarray) -> np.ndarray:
        """The plan's input from a batch in the model's layout: NCHW images stay NCHW when only float convs read
        them (the conv wants them planar: the round trip through NHWC cost 3 µs per CIFAR image), else NHWC."""
        return x if self.input_nchw and x.ndim == 4 else to_internal(x)

    def profile(self, x: np.ndarray, repeats: int = 5) -> dict[str, float]:
        """Median seconds per op kind (:data:`PROFILE_KINDS`) over ``repeats`` runs of the plan on input ``x`` in
        the model's layout (NCHW images), untiled on this thread with the kernels' usual thread counts: where the
        time goes."""
        runs = [run_managed(self._profile_once, x, numba.get_num_threads()) for _ in range(max(1, repeats))]
        return {k: statistics.median(r[k] for r in runs) for k in PROFILE_KINDS}

    def _profile_once(self, x: np.ndarray) -> dict[str, float]:
        times = dict.fromkeys(PROFILE_KINDS, 0.0)
        self._profiling.times = times
        env = {self.input_name: self._entry(x)}
        outer = self.buffers.activate()  # the arrays a plan run reuses, as in a real run
        start = time.perf_counter()
        try:
            for name, kind, fn in self.steps:
                packed_before, t0 = times["input packing"], time.perf_counter()
                env[name] = fn(env)
                # a binary step's packing was added to "input packing" inside it: count it once
                times[kind] += time.perf_counter() - t0 - (times["input packing"] - packed_before)
        finally:
            self._profiling.times = None
            if outer:
                self.buffers.deactivate()
        times["other"] += max(0.0, time.perf_counter() - start - sum(times.values()))
        return times

    def _bin_steps(self, bins: list[tuple], readers: dict[str, list[Node]], pos: dict[str, int],
                   float_fed: set[str]) -> dict[str, _BinStep]:
        """A :class:`_BinStep` per binary group (by its first node's name). A downsampling block's 1x1 shortcut
        conv reads the middle tap of its 3x3 sibling's row windows of their common input (see
        :meth:`_shareable`). A group whose only other binary reader is the bconv of the next group, thresholding
        per channel (or not at all), writes that reader's row windows in its epilogue (which its shortcut
        sibling then reads too), and its floats only when someone else reads them (a residual path, the output).
        ``float_fed``: the groups whose row windows a float conv writes."""
        firsts = {first.name: (first, res_name) for first, _, res_name, _ in bins}
        order = {first.name: pos[last] for first, last, _, _ in bins}
        shares: dict[str, str] = {}  # 1x1 reader -> the 3x3 sibling whose windows it reads
        for a, _ in firsts.values():
            for b, b_res in firsts.values():
                if (b.name not in shares and a.name not in shares.values() and order[a.name] < order[b.name]
                        and self._shareable(a, b, b_res)):
                    shares[b.name] = a.name
        feeds: dict[str, Node] = {}
        for first, last, _, _ in bins:
            binary = [r for r in readers[last] if r.op in ("bconv", "blinear")]
            names = {r.name for r in binary}
            binary = [r for r in binary if shares.get(r.name) not in names]  # served by its sibling's windows
            if len(binary) == 1 and binary[0].name in firsts and self._feeds_bits(first, binary[0], last):
                feeds[first.name] = binary[0]
        packed_in = {c.name for c in feeds.values()} | float_fed
        steps = {}
        for first, last, res_name, clamp in bins:
            c = feeds.get(first.name)
            want_float = c is None or any(r is not c and shares.get(r.name) != c.name for r in readers[last])
            nxt = None if c is None else self._p(c)
            steps[first.name] = _BinStep(self, first, last, res_name, clamp, first.name in packed_in, nxt, want_float)
        for b, a in shares.items():
            steps[a].share, steps[b].shared_xoff = True, steps[a].prep.c // 64
        return steps

    def _shareable(self, a: Node, b: Node, b_res: str | None) -> bool:
        """Whether 1x1 binary conv ``b`` (its group's residual ``b_res``) can read 3x3 binary conv ``a``'s row
        windows of their common float input instead of packing it again: the same binarization (shift,
        per-sample mean), whole 64-bit words per pixel (so the middle tap's words are a pixel's words), ``a``
        padded by 1 so that window w's middle tap is pixel w."""
        if a.op != "bconv" or b.op != "bconv" or a.inputs[0] != b.inputs[0] or b_res is not None:
            return False
        pa, pb = self._p(a), self._p(b)
        return (
            not pa.ternary and not pb.ternary and pa.c == pb.c and pa.c % 64 == 0
            and pa.kshape[1:] == (3, 3) and pa.pad == (1, 1) and pa.dil == (1, 1)
            and pb.kshape[1:] == (1, 1) and pb.pad == (0, 0) and pb.dil == (1, 1)
            and pa.standardize == pb.standardize and np.array_equal(pa.shift, pb.shift)
        )

    def _feeds_bits(self, producer: Node, consumer: Node, last: str) -> bool:
        """Whether ``producer``'s epilogue can binarize ``consumer``'s input (``last``, its group's result)."""
        return producer.op == "bconv" and not self._p(producer).ternary and self._reads_bits(consumer, last)

    def _reads_bits(self, consumer: Node, last: str) -> bool:
        """Whether binary ``consumer`` can read its input ``last`` as row windows its producer wrote: a direct
        bconv (not ternary) binarizing by sign (zero -> +1) after no transform, a shift or the per-sample mean."""
        at = consumer.attrs
        return (
            consumer.op == "bconv" and not self._p(consumer).ternary and consumer.inputs[0] == last
            and at.get("zero") == 1 and at["act_transform"] in ("none", "shift", "standardize_sample")
        )

    def _float_conv_step(self, node: Node, clamp, last: str, nxt: _BinPrep | None):
        """A float conv (with its Hardtanh's clamp, or None); with ``nxt``, also binarizing its output into the
        row windows ``env[(last, BITS)]`` that binary layer ``nxt`` reads."""
        src = node.inputs[0]
        nchw = src == self.input_name and self.input_nchw

        def run(env: dict) -> np.ndarray:
            out, nout = self.conv_bits(node, env[src], clamp, nxt, nchw)
            if nout is not None:
                env[(last, BITS)] = nout
            return out

        return run

    def _slice_pad_step(self, sl: Node, pad: Node):
        src = sl.inputs[0]
        index = tuple(slice(*s) for s in _nhwc_slices(sl))
        width = ref.pad_width(pad, 4)

        copies: dict[tuple, tuple] = {}  # per input shape: the kernel's start, step, count and offset per axis

        def run(env: dict) -> np.ndarray:
            x = env[src]
            if x.ndim != 4:
                return self.pad(pad, self.slice(sl, x))
            plan = copies.get(x.shape)
            if plan is None:
                view_shape = x[index].shape
                ranges = [range(*s.indices(d)) for s, d in zip(index, x.shape)]
                plan = (tuple(s + a + b for s, (a, b) in zip(view_shape, width)),
                        np.array([r.start for r in ranges], np.int64), np.array([r.step for r in ranges], np.int64),
                        np.array(view_shape, np.int64), np.array([a for a, _ in width], np.int64))
                if len(copies) < 64:
                    copies[x.shape] = plan
            out = self.buffers.get((pad.name, "out"), plan[0], x.dtype, zeroed=True)
            if x.dtype != np.float32 or not x.flags.c_contiguous:
                return self.slice_pad(index, width, x, out)
            launch(strided_copy_kernel, x, *plan[1:], out)  # only the copied part is written: the rest stays zero
            return out

        return run

    def _clamped_step(self, node: Node, clamp):
        """An affine node with its Hardtanh's (min, max) clamp fused (a float conv's: :meth:`_float_conv_step`)."""
        fn, src = getattr(self, node.op), node.inputs[0]
        return lambda env: fn(node, env[src], clamp)

    def _plain_step(self, node: Node):
        fn = getattr(self, node.op)
        ins = list(node.inputs)
        return lambda env: fn(node, *[env[i] for i in ins])


