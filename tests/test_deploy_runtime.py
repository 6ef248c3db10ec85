"""Packed runtime: fast vs reference engines, odd shapes, pack/unpack properties, tampered files, no torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numba
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_deploy_helpers import mlp, rand_input, randomize, tiny
from torch import nn

import rbnn.deploy as deploy
from rbnn.deploy import PackedFormatError
from rbnn.errors import RbnnError
from rbnn.methods import prepare
from rbnn.runtime.packing import n_words, pack_bits, pack_signs, unpack_bits, unpack_signs

SRC = str(Path(deploy.__file__).resolve().parents[2])


# ---- packing properties ---------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(1, 200), st.integers(0, 2**32 - 1))
def test_pack_unpack_roundtrip(rows, k, seed):
    bits = np.random.default_rng(seed).random((rows, k)) < 0.5
    words = pack_bits(bits)
    assert words.dtype == np.uint64 and words.shape == (rows, n_words(k))
    np.testing.assert_array_equal(unpack_bits(words, k), bits)
    # unused high bits are zero
    assert int(np.bitwise_count(words).sum()) == int(bits.sum())


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 150), st.integers(0, 2**32 - 1))
def test_xnor_popcount_equals_dot(k, seed):
    rng = np.random.default_rng(seed)
    a = np.where(rng.random(k) < 0.5, -1.0, 1.0)
    b = np.where(rng.random(k) < 0.5, -1.0, 1.0)
    pa, pb = pack_signs(a), pack_signs(b)
    dot = k - 2 * int(np.bitwise_count(pa ^ pb).sum())
    assert dot == int(a @ b)
    np.testing.assert_array_equal(unpack_signs(pa, k), a)


def test_bit_order_is_little_endian_bit1_negative():
    v = np.ones(70)
    v[0] = v[65] = -1
    w = pack_signs(v)
    assert w.tolist() == [1, 2]


# ---- fast vs reference --------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["xnor", "rbnn", "irnet", "bireal", "rbnn-faithful"])
@pytest.mark.parametrize("n", [1, 6])
@pytest.mark.parametrize("c1,c2", [(67, 130), (16, 24), (5, 21)])
def test_fast_matches_reference_exactly(method, n, c1, c2, tmp_path):
    # channels 67/130 (not multiples of 64) and narrow ones (16/24, 5/21: the fast engine packs several taps
    # of a kernel row into one word), spatial 7x9 (Wo not a multiple of 4), stride 2, dilation
    m = tiny(method, c1=c1, c2=c2)
    p = tmp_path / "m.rbnn"
    deploy.export(m, p, input_shape=(3, 7, 9))
    x = rand_input((3, 7, 9), n, seed=n)
    fast, refm = deploy.load(p, backend="fast"), deploy.load(p, backend="reference")
    lf, lr = fast.layer_outputs(x), refm.layer_outputs(x)
    assert lf.keys() == lr.keys()
    for k in lf:
        np.testing.assert_array_equal(lf[k], lr[k])
    np.testing.assert_array_equal(fast.predict(x), refm.predict(x))  # every float op equal bit for bit
    rep = deploy.verify(m, fast, x)
    assert rep["ok"], rep


@pytest.mark.parametrize("method", ["xnor", "rebnn", "rbnn"])  # threshold none / per-channel shift / mean
@pytest.mark.parametrize("c1,c2", [(16, 24), (67, 130)])
def test_fused_next_layer_bits_equal_reference(method, c1, c2, tmp_path):
    # a binary layer whose only binary reader thresholds per channel writes that reader's row windows in its
    # epilogue (conv3 -> conv4: 1x3 kernel, padding (0, 2), dilation 2) and skips its floats when nothing else
    # reads them; a reader that subtracts the per-sample mean (rbnn) gets them from a second pass over the
    # floats; the logits must still equal the reference's bit for bit, NaN and infinite pixels included
    m = tiny(method, c1=c1, c2=c2)
    p = tmp_path / "m.rbnn"
    deploy.export(m, p, input_shape=(3, 7, 9))
    fast, refm = deploy.load(p, backend="fast"), deploy.load(p, backend="reference")
    fused = [(s.nxt is not None, s.packed_in, s.want_float) for _, _, s in fast.ops.steps if hasattr(s, "nxt")]
    # the float stem writes the first binary layer's windows (packed_in) since it has no other binary reader
    assert fused == [(True, True, True), (True, True, False), (False, True, True)]
    x = rand_input((3, 7, 9), 5, seed=3)
    x[1, 0, 2, 3], x[2, 1, 4, 4], x[3, 2, 0, 0] = np.nan, np.inf, -np.inf
    np.testing.assert_array_equal(fast.predict(x), refm.predict(x))
    np.testing.assert_array_equal(fast.predict(x[:1]), refm.predict(x[:1]))


@pytest.mark.parametrize(
    "o,c,hw,k,s,p",
    [
        (5, 3, 6, 3, 1, 1),
        (9, 65, 5, 3, 2, 1),
        (13, 130, 11, 1, 1, 0),
        (4, 64, 4, 3, 1, 2),
        (7, 200, 9, 5, 3, 2),
        (6, 16, 7, 3, 2, 1),
        (5, 21, 6, 3, 1, 1),
        (4, 32, 5, 5, 1, 2),
        (3, 33, 5, 3, 1, 1),
    ],
)
def test_bconv_odd_shapes(o, c, hw, k, s, p, tmp_path):
    torch.manual_seed(o)
    net = nn.Sequential(nn.Conv2d(2, c, 1), nn.Conv2d(c, o, k, stride=s, padding=p), nn.Flatten())
    prepare(net, "xnor", skip=["0"])
    randomize(net)
    path = tmp_path / "m.rbnn"
    deploy.export(net, path, input_shape=(2, hw, hw + 1))
    for n in (1, 3):
        x = rand_input((2, hw, hw + 1), n, seed=n)
        rep = deploy.verify(net, path, x)
        assert rep["ok"], rep
        lr = deploy.load(path, backend="reference").layer_outputs(x)
        lf = deploy.load(path, backend="fast").layer_outputs(x)
        np.testing.assert_array_equal(lr["1"], lf["1"])


def test_binary_linear_fast(tmp_path):
    m = mlp("xnor")
    p = tmp_path / "m.rbnn"
    deploy.export(m, p, input_shape=(70,))
    rep = deploy.verify(m, p, rand_input((70,), 5))
    assert rep["ok"], rep


def _tiled(monkeypatch, tile: int, tile_min: int) -> None:
    from rbnn.runtime import threads

    monkeypatch.setattr(threads, "TILE", tile)
    monkeypatch.setattr(threads, "TILE_MIN", tile_min)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="tiles run on parallel threads: needs 2 numba threads")
@pytest.mark.parametrize("method", ["rbnn", "bireal"])
def test_fast_tiled_batch_equals_untiled(method, monkeypatch, tmp_path):
    # a large batch runs as tiles on parallel threads; every op is per sample (RBNN's mean included), so the
    # logits must equal the untiled run bit for bit, whatever the tile boundaries
    m = tiny(method, c1=16, c2=24)
    p = tmp_path / "m.rbnn"
    deploy.export(m, p, input_shape=(3, 7, 9))
    x = rand_input((3, 7, 9), 11, seed=3)
    packed = deploy.load(p, backend="fast")
    prev = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        _tiled(monkeypatch, 10**9, 10**9)
        untiled = packed.predict(x)
        _tiled(monkeypatch, 3, 1)  # 11 images -> tiles of 3, 3, 3, 2 on 2 threads
        tiled = packed.predict(x)
        assert packed.ops.tiles.pool is not None  # the tiled path ran
        with ThreadPoolExecutor(2) as pool:  # two callers at once on one model
            concurrent = list(pool.map(packed.predict, [x, x[::-1]]))
    finally:
        numba.set_num_threads(prev)
    np.testing.assert_array_equal(tiled, untiled)
    np.testing.assert_array_equal(concurrent[0], untiled)
    np.testing.assert_array_equal(concurrent[1], untiled[::-1])
    np.testing.assert_allclose(tiled, deploy.load(p, backend="reference").predict(x), rtol=1e-5, atol=1e-5)


def test_fast_large_batch_with_workqueue_layer(tmp_path):
    # numba's fallback threading layer (no OpenMP/TBB on the machine) aborts on concurrent use from Python
    # threads: the engine must then run a large batch untiled, with the same logits
    p = tmp_path / "m.rbnn"
    deploy.export(tiny("rbnn"), p, input_shape=(3, 7, 9))
    x = rand_input((3, 7, 9), 16, seed=5)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "want.npy", deploy.load(p, backend="fast").predict(x))
    code = (
        "import numpy as np, numba, rbnn.runtime as d\n"
        f"m = d.load({str(p)!r}, backend='fast')\n"
        f"y = m.predict(np.load({str(tmp_path / 'x.npy')!r}))\n"
        "assert numba.threading_layer() == 'workqueue', numba.threading_layer()\n"
        f"assert np.array_equal(y, np.load({str(tmp_path / 'want.npy')!r}))\n"
    )
    env = {**os.environ, "NUMBA_THREADING_LAYER": "workqueue", "NUMBA_NUM_THREADS": "2"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.parametrize("k,s,p,d", [(3, 1, 1, 1), (5, 2, 3, 2), (1, 2, 0, 1), (7, 2, 3, 1)])
def test_fast_float_conv_and_linear_match_reference(k, s, p, d):
    # the fast engine's float layers are its own numba kernels (no BLAS), summed in the reference's order:
    # the same float32 values bit for bit, for strides, paddings and dilations (a float that differed in its
    # last bit could binarize differently in the next binary layer)
    from rbnn.runtime.format import Node
    from rbnn.runtime.plan import FastOps
    from rbnn.runtime.reference import ReferenceOps

    rng = np.random.default_rng(k + s)
    c = 67 if k == 1 else 3  # a 1x1 conv: a downsample shortcut's width
    w = rng.standard_normal((11, c, k, k)).astype(np.float32)
    conv = Node(
        "c",
        "conv",
        ["x"],
        {"padding": [p, p], "stride": [s, s], "dilation": [d, d]},
        {"weight": w, "bias": rng.standard_normal(11).astype(np.float32)},
    )
    x = rng.standard_normal((2, 13, 10, c)).astype(np.float32)
    np.testing.assert_array_equal(FastOps().conv(conv, x), ReferenceOps().conv(conv, x))
    lin = Node(
        "l",
        "linear",
        ["x"],
        {},
        {"weight": rng.standard_normal((9, 70)).astype(np.float32), "bias": rng.standard_normal(9).astype(np.float32)},
    )
    xf = rng.standard_normal((5, 70)).astype(np.float32)
    np.testing.assert_array_equal(FastOps().linear(lin, xf), ReferenceOps().linear(lin, xf))


@pytest.mark.parametrize("method", ["xnor", "rbnn"])
def test_fast_binary_epilogue_equals_reference_bit_for_bit(method, tmp_path):
    # dot·out_mul + out_add: the reference computes it in float64 and rounds once; the fast kernel's fused
    # epilogue (with the residual add and Hardtanh after it) must give the same float32, not one rounded twice
    from rbnn.runtime.plan import FastOps
    from rbnn.runtime.reference import ReferenceOps

    p = tmp_path / "m.rbnn"
    deploy.export(tiny(method, c1=67, c2=130), p, input_shape=(3, 7, 9))
    nodes = [n for n in deploy.load(p, backend="reference").graph.nodes if n.op == "bconv"]
    rng = np.random.default_rng(7)
    for node in nodes:
        x = rng.standard_normal((3, 6, 5, node.attrs["in_channels"])).astype(np.float32)
        want = ReferenceOps().bconv(node, x)
        np.testing.assert_array_equal(FastOps().bconv(node, x), want)
        res = rng.standard_normal(want.shape).astype(np.float32)
        got = FastOps().bconv(node, x, res, (-0.5, 0.5))
        np.testing.assert_array_equal(got, np.clip(want + res, np.float32(-0.5), np.float32(0.5)))


@pytest.mark.parametrize("shape", [(3, 7), (4, 16384), (2, 100003)])
def test_fast_sample_mean_equals_numpy_float64_mean(shape):
    # RBNN's activation threshold: the fast engine's mean must round to the same float32 as the reference's
    from rbnn.runtime.kernels import sample_mean_kernel

    x = (np.random.default_rng(shape[1]).standard_normal(shape) * 3 + 0.25).astype(np.float32)
    out = np.empty(shape[0], np.float32)
    sample_mean_kernel(x, out)
    np.testing.assert_array_equal(out, x.mean(axis=1, dtype=np.float64).astype(np.float32))


def test_profile_splits_time_by_op_kind(tmp_path):
    # the time per op kind of the fast plan: every kind the benchmark prints, the kinds this model has timed,
    # and the sum near a predict's time (generous: the cores are shared)
    from rbnn.runtime.plan import PROFILE_KINDS

    p = tmp_path / "m.rbnn"
    deploy.export(tiny("rbnn", c1=32, c2=48), p, input_shape=(3, 16, 16))
    packed = deploy.load(p, backend="fast")
    x = rand_input((3, 16, 16), 8, seed=2)
    want = packed.predict(x)
    split = packed.profile(x, repeats=3)
    assert list(split) == list(PROFILE_KINDS)
    assert all(v >= 0 for v in split.values())
    # no "input packing": the float stem and every binary layer write their binary reader's row windows
    for kind in ("binary conv", "float conv", "linear", "pooling", "affine/activation/residual"):
        assert split[kind] > 0, (kind, split)
    assert split["input packing"] == 0.0
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        packed.predict(x)
        times.append(time.perf_counter() - t0)
    # the least of three profiles: on oversubscribed cores (CI beside other jobs) a profile's parallel regions
    # can each wait a scheduler tick for their second thread (seen once: 48 ms against a 0.68 ms predict)
    total = min(sum(split.values()), *(sum(packed.profile(x, repeats=3).values()) for _ in range(2)))
    predict_s = sorted(times)[2]
    assert predict_s / 10 < total < predict_s * 10, (total, predict_s)
    np.testing.assert_array_equal(packed.predict(x), want)  # profiling leaves no trace
    with pytest.raises(RbnnError, match="backend='fast'"):
        deploy.load(p, backend="reference").profile(x)
    with pytest.raises(RbnnError, match="repeats"):
        packed.profile(x, repeats=0)


# ---- tampered files ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("t") / "m.rbnn"
    deploy.export(tiny("xnor"), p, input_shape=(3, 8, 8))
    return p


def _rewrite(src: Path, dst: Path, edit) -> Path:
    entries = dict(np.load(src, allow_pickle=False))
    edit(entries)
    with open(dst, "wb") as f:
        np.savez(f, **entries)
    return dst


def _header_edit(fn):
    def edit(e):
        h = json.loads(bytes(e["__rbnn_header__"]).decode())
        fn(h)
        e["__rbnn_header__"] = np.frombuffer(json.dumps(h).encode(), dtype=np.uint8)

    return edit


def _bconv_key(e):
    return next(k for k in e if k.endswith(":w_bits"))


@pytest.mark.parametrize(
    "case,edit,msg",
    [
        (
            "magic",
            lambda e: e.__setitem__("__rbnn_magic__", np.frombuffer(b"NOTRBNN-PACK", np.uint8)),
            "bad magic",
        ),
        ("nomagic", lambda e: e.pop("__rbnn_magic__"), "no magic"),
        ("version", _header_edit(lambda h: h.__setitem__("version", 99)), "version 99"),
        ("missing", lambda e: e.pop(_bconv_key(e)), "missing array"),
        ("shape", lambda e: e.__setitem__(_bconv_key(e), e[_bconv_key(e)][:-1]), "header says"),
        ("dtype", lambda e: e.__setitem__(_bconv_key(e), e[_bconv_key(e)].astype(np.int64)), "header says"),
        (
            "header",
            lambda e: e.__setitem__("__rbnn_header__", np.frombuffer(b"{nope", np.uint8)),
            "corrupt header",
        ),
        ("op", _header_edit(lambda h: h["nodes"][1].__setitem__("op", "softmax")), "unknown op"),
        (
            "attrs",
            _header_edit(
                lambda h: next(n for n in h["nodes"] if n["op"] == "bconv")["attrs"].__setitem__("in_channels", 999)
            ),
            "expected",
        ),
    ],
)
def test_tampered_files(good_file, tmp_path, case, edit, msg):
    bad = _rewrite(good_file, tmp_path / f"{case}.rbnn", edit)
    with pytest.raises(PackedFormatError, match=msg) as ei:
        deploy.load(bad)
    text = str(ei.value)
    assert "\n" not in text and str(bad) in text
    assert isinstance(ei.value, RbnnError)


def test_truncated_and_garbage(good_file, tmp_path):
    data = good_file.read_bytes()
    trunc = tmp_path / "trunc.rbnn"
    trunc.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.rbnn"
    garbage.write_bytes(b"hello world" * 10)
    for p in (trunc, garbage, tmp_path / "absent.rbnn"):
        with pytest.raises(PackedFormatError, match=str(p.name)):
            deploy.load(p)


def test_not_zip_but_npy(tmp_path):
    p = tmp_path / "x.rbnn"
    with open(p, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(PackedFormatError):
        deploy.load(p)


def test_readable_with_plain_numpy(good_file):
    with np.load(good_file, allow_pickle=False) as z:
        assert "__rbnn_header__" in z.files
        assert all(z[k].dtype != object for k in z.files)
    assert zipfile.is_zipfile(good_file)


# ---- no torch in the runtime ----------------------------------------------------------------------------
def test_runtime_does_not_import_torch(good_file, tmp_path):
    x = rand_input((3, 8, 8), 2)
    np.save(tmp_path / "x.npy", x)
    code = (
        "import sys, numpy as np\n"
        "sys.modules['torch'] = None  # any import of torch now raises ImportError\n"
        "import rbnn.runtime as d\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        "for be in ('reference', 'fast'):\n"
        f"    m = d.load({str(good_file)!r}, backend=be)\n"
        "    y = m.predict(x); m.layer_outputs(x)\n"
        f"d.size_report({str(good_file)!r})\n"
        "assert sys.modules['torch'] is None, 'torch was imported'\n"
        "print(y.shape)\n"
    )
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "(2, 5)" in r.stdout


def test_size_report_rows(good_file):
    rows = deploy.size_report(good_file)
    kinds = {r["name"]: r["kind"] for r in rows}
    assert kinds["conv1"] == "float" and kinds["fc"] == "float" and kinds["conv2"] == "binary"
    total = rows[-1]
    assert total["kind"] == "total" and total["file_bytes"] == os.path.getsize(good_file)
    conv2 = next(r for r in rows if r["name"] == "conv2")
    assert conv2["params"] == 24 * 16 * 9 and conv2["weight_packed_bytes"] == 24 * 3 * 8


def test_tile_holds_what_fits_the_tile_bytes():
    # images per tile from the model's largest activation: ResNet-20 (16x32x32 float32 = 64 KB) 64 images,
    # resnet18_cifar (64x32x32 = 256 KB) 16, an ImageNet stem activation (64x112x112 = 3.2 MB) 1, never 0
    from rbnn.runtime import threads

    assert threads.TILE_BYTES == 4 << 20
    assert [threads.tile_images(b) for b in (65536, 262144, 3211264, 0, 1)] == [64, 16, 1, threads.TILE, threads.TILE]
