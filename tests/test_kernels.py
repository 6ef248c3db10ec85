"""The fast engine's building blocks against NumPy on values chosen to be hard: signed zeros, NaNs with either
sign bit, infinities, values within one ulp of the threshold, channel counts that are not multiples of 8."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from rbnn.runtime import kernels as K
from rbnn.runtime.format import Node
from rbnn.runtime.packing import pack_signs
from rbnn.runtime.plan import FastOps, _BinPrep, _nhwc_slices
from rbnn.runtime.reference import ReferenceOps, pad_width


@njit(cache=False)
def _row_signs_words(y, shift, m, npw):
    prow = np.zeros((y.shape[0] + 2 * npw, (y.shape[1] + 63) // 64), dtype=np.uint64)
    K._row_signs(y, shift, m, prow, npw)
    return prow


def _expected_words(y, shift, m, npw):
    """The reference engine's rule: bit = sign bit of ((y + shift) - m) + 0, in float32; channel o at bit o."""
    z = ((y + shift) - np.float32(m)) + np.float32(0.0)
    bits = (z.view(np.uint32) >> 31).astype(np.uint64)
    words = np.zeros((y.shape[0] + 2 * npw, (y.shape[1] + 63) // 64), dtype=np.uint64)
    for o in range(y.shape[1]):
        words[npw : npw + y.shape[0], o // 64] |= bits[:, o] << np.uint64(o % 64)
    return words


def _hard_values(rng, shape, shift, m):
    y = rng.standard_normal(shape).astype(np.float32)
    flat = y.reshape(-1)
    k = flat.size
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan], dtype=np.float32)
    flat[rng.choice(k, size=k // 4, replace=False)] = rng.choice(special, size=k // 4)
    # values at the threshold and one ulp either side: y + shift - m lands on ±0 or the smallest step off it
    at = (np.float32(m) - shift)[None, :].repeat(shape[0], 0).reshape(-1)
    pick = rng.choice(k, size=k // 4, replace=False)
    nudge = rng.choice([-1, 0, 1], size=pick.size)
    toward = np.where(nudge > 0, np.float32(np.inf), np.float32(-np.inf))
    flat[pick] = np.where(nudge == 0, at[pick], np.nextafter(at[pick], toward))
    return y


@pytest.mark.parametrize("channels", [8, 16, 21, 24, 64, 67, 88, 130])
@pytest.mark.parametrize("m", [0.0, 0.3])
def test_row_signs_equal_the_reference_rule_bit_for_bit(channels, m):
    rng = np.random.default_rng(channels)
    shift = (rng.standard_normal(channels) * 0.5).astype(np.float32)
    shift[: min(4, channels)] = [0.0, -0.0, 1e-30, -1e-30][: min(4, channels)]
    y = _hard_values(rng, (9, channels), shift, m)
    got = _row_signs_words(y, shift, np.float32(m), 2)
    np.testing.assert_array_equal(got, _expected_words(y, shift, m, 2))
    # the padding pixels' words stay zero
    assert not got[:2].any() and not got[-2:].any()


@pytest.mark.parametrize("out_channels", [5, 8, 16, 32])
@pytest.mark.parametrize("stride,dilation,padding", [(1, 1, 1), (2, 1, 1), (1, 2, 2), (2, 1, 0)])
def test_float_conv_kernel_equals_the_reference_order(stride, dilation, padding, out_channels):
    """The float conv sums in float32 in (kh, kw, c) order like the reference engine: equal bit for bit (5
    channels: the row-accumulator loops, stride 2 the strided one; 8 channels at stride 1: pixel-vector register
    blocks; 16 and 32: 8-pixel x 16-channel blocks clamped in registers; both with a tail of pixels; values
    spread over orders of magnitude, so any other order rounds differently)."""
    rng = np.random.default_rng(stride * 10 + dilation)
    x = (rng.standard_normal((3, 11, 13, 3)) * rng.choice([1e-3, 1.0, 1e3], size=(3, 11, 13, 3))).astype(np.float32)
    x[0, 0, 0, 0], x[1, 5, 5, 1], x[2, 3, 3, 2] = -0.0, np.float32(1e-38), np.nan
    node = Node(name="c", op="conv", inputs=["x"],
                attrs={"padding": [padding, padding], "stride": [stride, stride], "dilation": [dilation, dilation]},
                arrays={"weight": rng.standard_normal((out_channels, 3, 3, 3)).astype(np.float32),
                        "bias": rng.standard_normal(out_channels).astype(np.float32)})
    fast, ref = FastOps().conv(node, x), ReferenceOps().conv(node, x)
    assert fast.shape == ref.shape
    np.testing.assert_array_equal(fast.view(np.uint32), ref.view(np.uint32))
    # with a fused Hardtanh: the reference's conv, then np.clip
    clamped = FastOps().conv(node, x, clamp=(-1.0, 1.0))
    np.testing.assert_array_equal(clamped, np.clip(ref, np.float32(-1), np.float32(1)))


@pytest.mark.parametrize("index", [(slice(None), slice(None, None, 2), slice(None, None, 2), slice(None)),
                                   (slice(1, None), slice(1, 8, 3), slice(None, None, -2), slice(2, None, 3))])
def test_strided_copy_kernel_equals_the_numpy_assignment(index):
    """The option-A shortcut's copy (a strided slice into the middle of a zero-padded array) as NumPy does it,
    contiguous and strided channels, negative steps included."""
    x = np.random.default_rng(0).standard_normal((3, 9, 10, 16)).astype(np.float32)
    view = x[index]
    at = (0, 1, 0, 8)
    out = np.zeros(tuple(s + 2 * a for s, a in zip(view.shape, at)), np.float32)
    want = out.copy()
    want[tuple(slice(a, a + s) for s, a in zip(view.shape, at))] = view
    ranges = [range(*s.indices(d)) for s, d in zip(index, x.shape)]
    K.strided_copy_kernel(x, np.array([r.start for r in ranges]), np.array([r.step for r in ranges]),
                          np.array(view.shape, dtype=np.int64), np.array(at, dtype=np.int64), out)
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("torch_pad,shape", [([0, 0, 0, 0, 8, 8], (2, 5, 5, 16)), ([1, 2, 3, 0], (1, 4, 6, 3)),
                                             ([2, 1], (3, 7)), ([0, 0, 0, 0, -1, 2], (1, 3, 3, 4))])
def test_fast_pad_equals_numpy_pad(torch_pad, shape):
    """The fast engine's pad (one allocation and a copy instead of np.pad) gives the reference's array, bits and
    all; a negative (cropping) width takes the reference path."""
    rng = np.random.default_rng(len(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    x.reshape(-1)[:3] = [-0.0, np.nan, -np.inf]
    node = Node(name="p", op="pad", inputs=["x"], attrs={"torch_pad": torch_pad})
    if min(torch_pad) < 0:
        for ops in (ReferenceOps(), FastOps()):
            with pytest.raises(ValueError):
                ops.pad(node, x)
        return
    fast, ref = FastOps().pad(node, x), ReferenceOps().pad(node, x)
    assert fast.shape == ref.shape and fast.dtype == ref.dtype
    np.testing.assert_array_equal(fast.view(np.uint32), ref.view(np.uint32))


def _bconv_node(name, c, o, mul, add, shift=None):
    rng = np.random.default_rng(o * 7 + c)
    arrays = {
        "w_bits": pack_signs(rng.standard_normal((o, 9 * c))),
        "out_mul": np.asarray(mul, np.float32),
        "out_add": np.asarray(add, np.float32),
    }
    if shift is not None:
        arrays["act_shift"] = np.asarray(shift, np.float32)
    attrs = {
        "in_channels": c, "out_channels": o, "kernel": [3, 3], "padding": [1, 1], "stride": [1, 1],
        "dilation": [1, 1], "act_transform": "none" if shift is None else "shift", "zero": 1, "module": name,
    }
    return Node(name, "bconv", ["x"], attrs, arrays)


@pytest.mark.parametrize("o", [16, 21, 64, 70])
@pytest.mark.parametrize("clamp", [None, (-1.0, 1.0), (0.0, 0.5)])
def test_threshold_bits_equal_the_float_epilogue(o, clamp):
    # a layer whose only reader is binary writes that reader's bits from its integer dots by per-channel
    # thresholds (no float epilogue): the bits must equal the float path's for constants chosen so that
    # y + shift lands exactly on 0 for some dot, one ulp off it, with a negative, zero or tiny scale, a shift
    # beyond the clamp and values that overflow float32
    c = 16
    rng = np.random.default_rng(o)
    mul = (rng.standard_normal(o) * 0.3).astype(np.float32)
    add = rng.standard_normal(o).astype(np.float32)
    shift = (rng.standard_normal(o) * 0.2).astype(np.float32)
    mul[:8] = [0.5, -0.25, 0.0, 1e-30, -3.0, 2.0 ** -10, 1e38, -0.5]
    add[:8] = [-1.5, 0.75, 0.3, -1e-30, 0.0, np.nextafter(np.float32(0.5), np.float32(1)), 1e38, 0.0]
    shift[:8] = [0.0, -0.0, -0.3, 0.0, 0.7, -0.5, 0.0, 0.5]
    shift[8:12] = [-5.0, 5.0, np.float32(-0.5), np.float32(-1.0)]
    prod = _BinPrep(_bconv_node("p", c, o, mul, add))
    cons = _BinPrep(_bconv_node("c", o, 8, np.ones(8), np.zeros(8), shift))
    thr = prod.bit_thresholds(cons, clamp)
    assert thr is not None and thr.shape == (2, o) and set(np.unique(thr[0])) <= {0, -1}
    x = rng.standard_normal((3, 9, 11, c)).astype(np.float32)
    xp = prod.pack(x)
    _, by_thr = prod.conv(xp, 9, 11, clamp=clamp, want_float=False, nxt=cons)  # thresholds
    y, by_float = prod.conv(xp, 9, 11, clamp=clamp, want_float=True, nxt=cons)  # float epilogue, then signs
    assert y is not None
    np.testing.assert_array_equal(by_thr, by_float)
    # and the float path's bits are the reference rule on its floats
    np.testing.assert_array_equal(by_float, cons.pack(y))


def test_threshold_bits_fall_back_on_non_finite_constants():
    o, c = 8, 16
    mul = np.full(o, 0.5, np.float32)
    mul[3] = np.nan
    prod = _BinPrep(_bconv_node("p", c, o, mul, np.zeros(o)))
    cons = _BinPrep(_bconv_node("c", o, 8, np.ones(8), np.zeros(8), np.zeros(o)))
    assert prod.bit_thresholds(cons, None) is None
    x = np.random.default_rng(0).standard_normal((2, 5, 6, c)).astype(np.float32)
    xp = prod.pack(x)
    np.testing.assert_array_equal(
        prod.conv(xp, 5, 6, want_float=False, nxt=cons)[1], prod.conv(xp, 5, 6, want_float=True, nxt=cons)[1]
    )


@pytest.mark.parametrize("shape", [(3, 8, 8, 64), (2, 7, 7, 130), (1, 1, 1, 5), (2, 14, 14, 24)])
def test_fast_gap_equals_numpy_mean_bit_for_bit(shape):
    # float32 sums depend on their order: values spread over 6 orders of magnitude make any other order differ
    rng = np.random.default_rng(shape[1])
    x = (rng.standard_normal(shape) * rng.choice([1e-3, 1.0, 1e3], size=shape)).astype(np.float32)
    node = Node("gap", "gap", ["x"])
    want = ReferenceOps().gap(node, x)
    got = FastOps().gap(node, x)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("torch_pad", [[0, 0, 0, 0, 8, 8], [0, 0, 0, 0, 0, 3], [1, 0, 0, 2, 4, 4]])
def test_fused_slice_pad_equals_the_two_ops(torch_pad):
    x = np.random.default_rng(1).standard_normal((2, 9, 10, 16)).astype(np.float32)
    slices = [[None, None, None], [None, None, None], [None, None, 2], [1, None, 2]]
    sl = Node("s", "slice", ["x"], {"nchw_slices": slices})
    pad = Node("p", "pad", ["s"], {"torch_pad": torch_pad})
    ref = ReferenceOps()
    want = ref.pad(pad, ref.slice(sl, x))
    index = tuple(slice(*s) for s in _nhwc_slices(sl))
    got = FastOps.slice_pad(index, pad_width(pad, 4), x)
    np.testing.assert_array_equal(got, want)


def _geometry(c, o, hw, ho, stride, pad):
    g = np.zeros(K.GEOM_LEN, np.int64)
    g[[K.G_KH, K.G_KW, K.G_SH, K.G_SW, K.G_DH, K.G_DW, K.G_PH, K.G_PW]] = (3, 3, stride, stride, 1, 1, pad, pad)
    g[[K.G_H, K.G_W, K.G_C, K.G_HO, K.G_WO, K.G_O]] = (hw, hw, c, ho, ho, o)
    g[[K.G_NKW, K.G_NDW, K.G_FLOAT]] = 1
    return g


@pytest.mark.parametrize("c,o", [(16, 16), (32, 24), (40, 8), (64, 64), (128, 72), (200, 16)])
@pytest.mark.parametrize("hw,stride", [(9, 1), (7, 2), (6, 1)])
def test_binary_conv_kernel_equals_the_integer_conv(c, o, hw, stride):
    """bconv_kernel with ``mul`` 1 and ``add`` 0 writes the ±1 dot over the valid taps (zero padding): the same
    integers as a NumPy conv of ±1 activations and weights, for widths that are not multiples of the kernel's
    pixel and channel blocks and operands of 1 to 29 words."""
    rng = np.random.default_rng(c * 1000 + o + hw)
    n, pad = 2, 1
    ho = (hw + 2 * pad - 3) // stride + 1
    xs = np.where(rng.random((n, hw, hw, c)) < 0.5, -1.0, 1.0).astype(np.float32)
    ws = np.where(rng.random((o, 3, 3, c)) < 0.5, -1.0, 1.0)
    wb = pack_signs(ws)
    xw = np.empty((n, hw + 2 * pad, hw + 2 * pad - 2, (3 * c + 63) // 64), np.uint64)
    K.pack_rows(xs, np.zeros(c, np.float32), np.zeros(n, np.float32), False, pad, pad, 3, 1, xw)
    out = np.empty((n, ho, ho, o), np.float32)
    dummy, dummy_bits = np.zeros((1, 1, 1, 1), np.float32), np.zeros((1, 1, 1, 1), np.uint64)
    g = _geometry(c, o, hw, ho, stride, pad)
    K.bconv_kernel(xw, K.row_window_weights(wb, c), *K.border_table(K.tap_popcounts(wb), g), g, np.ones(o),
                   np.zeros(o), dummy, np.zeros(2, np.float32), out, np.zeros(c, np.float32), dummy_bits,
                   np.zeros((2, o), np.int32))
    xp = np.pad(xs, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    want = np.zeros((n, ho, ho, o))
    for kh in range(3):
        for kw in range(3):
            patch = xp[:, kh : kh + stride * (ho - 1) + 1 : stride, kw : kw + stride * (ho - 1) + 1 : stride]
            want += patch @ ws[:, kh, kw, :].T
    np.testing.assert_array_equal(out, want.astype(np.float32))


@pytest.mark.parametrize("o", [16, 24, 40, 64, 72, 136])
def test_fused_epilogue_writes_the_floats_and_the_next_layers_bits(o):
    """The fused epilogue (border table, ``·mul + add`` in float64, + residual, clamp, then the next layer's sign
    bits) equals the same steps in NumPy: the float output bit for bit, and the next layer's row windows equal
    ``pack_rows`` of that output, for channel counts on and off the 16- and 8-channel blocks and over 64."""
    rng = np.random.default_rng(o)
    n, c, hw = 2, 24, 6
    xs = np.where(rng.random((n, hw, hw, c)) < 0.5, -1.0, 1.0).astype(np.float32)
    ws = np.where(rng.random((o, 3, 3, c)) < 0.5, -1.0, 1.0)
    wb = pack_signs(ws)
    xw = np.empty((n, hw + 2, hw, 2), np.uint64)
    K.pack_rows(xs, np.zeros(c, np.float32), np.zeros(n, np.float32), False, 1, 1, 3, 1, xw)
    mul = rng.standard_normal(o).astype(np.float32).astype(np.float64)
    add = rng.standard_normal(o).astype(np.float32).astype(np.float64)
    res = rng.standard_normal((n, hw, hw, o)).astype(np.float32)
    nshift = (rng.standard_normal(o) * 0.3).astype(np.float32)
    lohi = np.array([-1.5, 1.25], np.float32)
    g = _geometry(c, o, hw, hw, 1, 1)
    g[[K.G_NKW, K.G_NDW, K.G_NPH, K.G_NPW, K.G_RES, K.G_CLAMP, K.G_FLOAT, K.G_BITS]] = (3, 1, 1, 1, 1, 1, 1, 1)
    out = np.empty((n, hw, hw, o), np.float32)
    rw_next = (3 * o + 63) // 64
    nout = np.zeros((n, hw + 2, hw, rw_next), np.uint64)
    K.bconv_kernel(xw, K.row_window_weights(wb, c), *K.border_table(K.tap_popcounts(wb), g), g, mul, add, res,
                   lohi, out, nshift, nout, np.zeros((2, o), np.int32))
    xp = np.pad(xs, ((0, 0), (1, 1), (1, 1), (0, 0)))
    dots = np.zeros((n, hw, hw, o))
    for kh in range(3):
        for kw in range(3):
            dots += xp[:, kh : kh + hw, kw : kw + hw] @ ws[:, kh, kw, :].T
    want = np.clip((dots * mul + add).astype(np.float32) + res, lohi[0], lohi[1])
    np.testing.assert_array_equal(out, want)
    want_bits = np.zeros_like(nout)
    K.pack_rows(want, nshift, np.zeros(n, np.float32), False, 1, 1, 3, 1, want_bits)
    np.testing.assert_array_equal(nout, want_bits)


def test_binary_conv_kernel_refuses_a_short_geometry():
    """A geometry without its last flags would make the kernel read beyond the array (the benchmark's old one did)."""
    g = _geometry(16, 16, 6, 6, 1, 1)[:-1]
    x, w = np.zeros((1, 8, 6, 1), np.uint64), np.zeros((3, 16), np.uint64)
    with pytest.raises(ValueError, match="GEOM_LEN"):
        K.bconv_kernel(x, w, np.zeros((3, 6, 16), np.int32), np.zeros(6, np.int32), g, np.ones(16), np.zeros(16),
                       np.zeros((1, 1, 1, 1), np.float32), np.zeros(2, np.float32),
                       np.zeros((1, 6, 6, 16), np.float32), np.zeros(16, np.float32),
                       np.zeros((1, 1, 1, 1), np.uint64), np.zeros((2, 16), np.int32))


def test_warmup_compiles_every_kernel():
    """warmup() builds its own inputs (a geometry among them): it must run against the kernels as they are."""
    K.warmup()
