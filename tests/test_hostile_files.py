"""Hostile packed models, predict inputs, IDX files and dataset sizes: each is refused with one line naming the
file or the field (never a segfault, NaN logits or gigabytes of memory), or, for inputs the model can run on
(NaN pixels, an empty batch, another image size of a fully convolutional model), computes what torch does."""

import gzip
import json
import math
import os
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from test_deploy_helpers import randomize, tiny

import rbnn.deploy as deploy
from rbnn.config import DataConfig, load_config
from rbnn.data import build_loaders, load_arrays
from rbnn.data.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx
from rbnn.deploy import PackedFormatError
from rbnn.errors import DataError, RbnnError
from rbnn.train import engine

ROOT = Path(__file__).resolve().parents[1]
SYN = ["threads=1", "data=synthetic", "data.subset=256", "data.test_subset=128", "batch_size=64",
       "export=false", "model=smallnet", "diagnostics=false", "device=cpu"]
GIB = 1 << 30


def _one_line(err: BaseException, *names: str) -> str:
    text = str(err)
    assert "\n" not in text, text
    for name in names:
        assert name in text, text
    return text


# ---- a valid file to tamper with -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """smallnet / xnor for 1x28x28 (flatten + Linear classifier, a strided slice and a channel pad)."""
    torch.manual_seed(0)
    model = randomize(engine.build_model(load_config(None, [*SYN, "method=xnor"]), 10, (1, 28, 28)))
    path = tmp_path_factory.mktemp("small") / "m.rbnn"
    deploy.export(model, path, input_shape=(1, 28, 28))
    return path, model


@pytest.fixture(scope="module")
def gapnet(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """TinyNet / xnor for 3x8x8: fully convolutional (global average pool before the classifier)."""
    model = tiny("xnor")
    path = tmp_path_factory.mktemp("gap") / "t.rbnn"
    deploy.export(model, path, input_shape=(3, 8, 8))
    return path, model


def _entries(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _save(entries: dict[str, np.ndarray], dst: Path) -> Path:
    with open(dst, "wb") as f:
        np.savez(f, **entries)
    return dst


def _edit_header(src: Path, dst: Path, edit) -> Path:
    e = _entries(src)
    h = json.loads(bytes(e["__rbnn_header__"]).decode())
    edit(h, e)
    e["__rbnn_header__"] = np.frombuffer(json.dumps(h).encode(), dtype=np.uint8)
    return _save(e, dst)


def _node(h: dict, op: str, k: int = 0) -> dict:
    return [n for n in h["nodes"] if n["op"] == op][k]


def _attr(op: str, key: str, value, k: int = 0):
    return lambda h, e: _node(h, op, k)["attrs"].__setitem__(key, value)


def _replace_array(name: str, key: str, arr: np.ndarray):
    """Replace one array in the archive and in the header (a consistent file whose shapes disagree elsewhere)."""

    def edit(h, e):
        n = next(n for n in h["nodes"] if n["name"] == name)
        n["arrays"][key]["shape"] = list(arr.shape)
        e[n["arrays"][key]["key"]] = arr

    return edit


def _set(path: list, value):
    def edit(h, e):
        obj = h
        for p in path[:-1]:
            obj = obj[p]
        obj[path[-1]] = value

    return edit


def _node_field(op: str, key: str, value):
    return lambda h, e: _node(h, op).__setitem__(key, value)


def _array_spec(op: str, key: str, field: str, value):
    return lambda h, e: _node(h, op)["arrays"][key].__setitem__(field, value)


def _nan_out_mul(h, e):
    key = _node(h, "bconv")["arrays"]["out_mul"]["key"]
    e[key] = e[key].copy()
    e[key][3] = np.nan


def _duplicate_name(h, e):
    _node(h, "hardtanh", 1)["name"] = _node(h, "hardtanh", 0)["name"]


def _add_reads_other_shapes(h, e):
    _node(h, "add", 1)["inputs"] = [_node(h, "bconv", 1)["name"], _node(h, "hardtanh", 1)["name"]]


def _huge_input(h, e):
    h["input_shape"] = [1, 100000, 100000]
    h["nodes"][0]["attrs"]["shape"] = [1, 100000, 100000]


EDITS = [  # (case, edit of the smallnet file, words the one-line message must contain)
    ("negative padding", _attr("bconv", "padding", [-1, 1]), "padding"),
    ("stride 0", _attr("bconv", "stride", [0, 1]), "stride"),
    ("huge dilation", _attr("bconv", "dilation", [1000, 1]), "dilation"),
    ("dilation 0", _attr("bconv", "dilation", [1, 0]), "dilation"),
    ("kernel as strings", _attr("bconv", "kernel", ["3", "3"]), "kernel"),
    ("stride as floats", _attr("bconv", "stride", [1.0, 1.0]), "stride"),
    ("stride as booleans", _attr("bconv", "stride", [True, True]), "stride"),
    ("padding as one int", _attr("bconv", "padding", 1), "padding"),
    ("in_channels as a string", _attr("bconv", "in_channels", "32"), "in_channels"),
    ("out_channels negative", _attr("bconv", "out_channels", -32), "out_channels"),
    ("sign(0) of 2", _attr("bconv", "zero", 2), "sign(0)"),
    ("unknown act_transform", _attr("bconv", "act_transform", "tanh"), "act_transform"),
    ("ternary flag disagrees", _attr("bconv", "ternary", True), "ternary"),
    ("module not a string", _attr("bconv", "module", 7), "module"),
    ("float conv stride 0", _attr("conv", "stride", [0, 2]), "stride"),
    ("float conv negative padding", _attr("conv", "padding", [1, -2]), "padding"),
    ("stem weight of other channels", _replace_array("conv1", "weight", np.zeros((32, 3, 3, 3), np.float32)),
     "conv1"),
    ("classifier of another width", _replace_array("fc", "weight", np.zeros((10, 3135), np.float32)), "fc"),
    ("binary conv whose input has other channels",
     lambda h, e: (_attr("bconv", "in_channels", 64, 1)(h, e),
                   _replace_array("conv3", "w_bits", np.zeros((64, 9), np.uint64))(h, e)), "conv3"),
    ("hardtanh bound a string", _attr("hardtanh", "min", "-1"), "min"),
    ("hardtanh bound NaN", _attr("hardtanh", "max", float("nan")), "max"),
    ("hardtanh min > max", _attr("hardtanh", "min", 2.0), "min"),
    ("slice step 0", _attr("slice", "nchw_slices", [[None, None, None], [None, None, None], [None, None, 0]]),
     "step"),
    ("slice of the batch", _attr("slice", "nchw_slices", [[0, 1, None]]), "batch"),
    ("slice of the wrong type", _attr("slice", "nchw_slices", "::2"), "nchw_slices"),
    ("negative pad", _attr("pad", "torch_pad", [0, 0, 0, 0, 16, -16]), "torch_pad"),
    ("pad of odd length", _attr("pad", "torch_pad", [1, 1, 1]), "torch_pad"),
    ("add of two shapes", _add_reads_other_shapes, "adds tensors"),
    ("add with one input", lambda h, e: _node(h, "add")["inputs"].pop(), "inputs"),
    ("version as a boolean", _set(["version"], True), "version"),
    ("nodes not a list", _set(["nodes"], {"x": 1}), "nodes"),
    ("output not a string", _set(["output"], ["fc"]), "output"),
    ("node name not a string", lambda h, e: h["nodes"][2].__setitem__("name", 5), "nodes[2]"),
    ("node inputs a string", _node_field("hardtanh", "inputs", "conv1"), "inputs"),
    ("node attrs a list", _node_field("hardtanh", "attrs", [-1, 1]), "attrs"),
    ("array shape a string", _array_spec("linear", "weight", "shape", "10x3136"), "shape"),
    ("array shape negative", _array_spec("linear", "weight", "shape", [-10, 3136]), "shape"),
    ("array dtype object", _array_spec("linear", "weight", "dtype", "object"), "dtype"),
    ("array spec a string", lambda h, e: _node(h, "linear")["arrays"].__setitem__("bias", "fc:bias"), "bias"),
    ("unexpected array", lambda h, e: _node(h, "hardtanh")["arrays"].__setitem__(
        "w", {"key": "fc:bias", "shape": [10], "dtype": "float32"}), "unexpected array"),
    ("input_shape disagrees", _set(["input_shape"], [1, 32, 32]), "input_shape"),
    ("input shape negative", lambda h, e: h["nodes"][0]["attrs"].__setitem__("shape", [1, -28, 28]), "shape"),
    ("input of 10^10 pixels", _huge_input, "values per image"),
    ("duplicate node name", _duplicate_name, "used twice"),
    ("second input node", lambda h, e: _node(h, "hardtanh").__setitem__("op", "input"), "input"),
    ("NaN weights", _nan_out_mul, "non-finite"),
]


@pytest.mark.parametrize("case,edit,words", EDITS, ids=[c for c, _, _ in EDITS])
@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_edited_file_is_refused_at_load(small, tmp_path, case, edit, words, backend):
    bad = _edit_header(small[0], tmp_path / "bad.rbnn", edit)
    with pytest.raises(PackedFormatError) as e:
        deploy.load(bad, backend=backend)
    _one_line(e.value, str(bad), words)


POOL_EDITS = [
    ("pool kernel 0", _attr("maxpool", "kernel", [0, 2]), "kernel"),
    ("pool dilation as float", _attr("maxpool", "dilation", [1.5, 1]), "dilation"),
    ("pool huge dilation", _attr("maxpool", "dilation", [50, 50]), "does not fit"),
    ("pool ceil_mode a string", _attr("maxpool", "ceil_mode", "yes"), "ceil_mode"),
    ("affine of other channels", lambda h, e: (_replace_array(_node(h, "affine")["name"], "mul",
                                                              np.ones(5, np.float32))(h, e),
                                               _replace_array(_node(h, "affine")["name"], "add",
                                                              np.ones(5, np.float32))(h, e)), "arrays"),
    ("classifier on an image", _node_field("flatten", "op", "relu"), "(features,)"),
]


@pytest.mark.parametrize("case,edit,words", POOL_EDITS, ids=[c for c, _, _ in POOL_EDITS])
def test_edited_pool_and_affine_are_refused(gapnet, tmp_path, case, edit, words):
    bad = _edit_header(gapnet[0], tmp_path / "bad.rbnn", edit)
    with pytest.raises(PackedFormatError) as e:
        deploy.load(bad, backend="fast")
    _one_line(e.value, str(bad), words)


# ---- hand-made archives: truncated and inflating members ------------------------------------------------
def _zip(path: Path, members: list[tuple[str, bytes, int, int, int]]) -> Path:
    """A zip archive written by hand: (name, stored bytes, method, crc, declared uncompressed size) per entry,
    so that an entry may declare any size and hold any deflate stream."""
    out, central = bytearray(), bytearray()
    for name, payload, method, crc, size in members:
        nb = name.encode()
        off = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, crc, len(payload), size, len(nb), 0)
        out += nb + payload
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0, crc, len(payload), size,
                               len(nb), 0, 0, 0, 0, 0, off) + nb
    eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(out), 0)
    path.write_bytes(bytes(out + central + eocd))
    return path


def _deflate_zeros(prefix: bytes, n_mib: int) -> bytes:
    """A raw deflate stream of ``prefix`` then ``n_mib`` MiB of zeros, about 1 KB per MiB: after a full flush
    the compressor starts afresh, so every MiB of zeros compresses to the same bytes."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    return head + block * n_mib + c.flush()


def _members(path: Path) -> list[tuple[str, bytes, int, int, int]]:
    with zipfile.ZipFile(path) as zf:
        return [(i.filename, zf.read(i), zipfile.ZIP_STORED, i.CRC, i.file_size) for i in zf.infolist()]


def _npy_head(arr: np.ndarray) -> bytes:
    b = bytearray()

    class W:
        def write(self, d):
            b.extend(d)

    np.lib.format.write_array_header_1_0(W(), np.lib.format.header_data_from_array_1_0(arr))
    return bytes(b)


def _bounded(fn) -> tuple[BaseException, float, int]:
    """Run ``fn`` (which must raise RbnnError); return the error, seconds taken and tracemalloc's peak bytes."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(RbnnError) as e:
            fn()
        return e.value, time.perf_counter() - t0, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _with_member(path: Path, dst: Path, key: str, payload: bytes, method: int, crc: int, size: int) -> Path:
    members = [m if m[0] != key + ".npy" else (m[0], payload, method, crc, size) for m in _members(path)]
    return _zip(dst, members)


def _bconv_key(path: Path) -> str:
    h = json.loads(bytes(_entries(path)["__rbnn_header__"]).decode())
    return _node(h, "bconv")["arrays"]["w_bits"]["key"]


def test_member_that_inflates_to_2_gib_is_refused_fast_with_bounded_memory(small, tmp_path):
    key = _bconv_key(small[0])
    arr = _entries(small[0])[key]
    head = _npy_head(arr)
    stream = _deflate_zeros(head, 2048)  # the entry inflates to 2 GiB and says so in the zip directory
    bad = _with_member(small[0], tmp_path / "bomb.rbnn", key, stream, zipfile.ZIP_DEFLATED, 0, len(head) + 2 * GIB)
    assert bad.stat().st_size < 4 << 20
    err, seconds, peak = _bounded(lambda: deploy.load(bad, backend="reference"))
    _one_line(err, str(bad), key)
    assert seconds < 5 and peak < 64 << 20, (seconds, peak)


def test_header_member_that_inflates_to_2_gib_is_refused(small, tmp_path):
    head = _npy_head(np.zeros(2 * GIB, np.uint8))
    stream = _deflate_zeros(head, 2048)
    bad = _with_member(small[0], tmp_path / "hbomb.rbnn", "__rbnn_header__", stream, zipfile.ZIP_DEFLATED, 0,
                       len(head) + 2 * GIB)
    err, seconds, peak = _bounded(lambda: deploy.load(bad, backend="reference"))
    _one_line(err, str(bad), "__rbnn_header__")
    assert seconds < 5 and peak < 64 << 20, (seconds, peak)


def test_member_whose_npy_header_declares_2_gib_is_refused(small, tmp_path):
    key = _bconv_key(small[0])
    head = _npy_head(np.broadcast_to(np.zeros((), np.uint64), (GIB // 4, 1)))
    stream = _deflate_zeros(head, 2048)
    bad = _with_member(small[0], tmp_path / "nbomb.rbnn", key, stream, zipfile.ZIP_DEFLATED, 0, len(head) + 2 * GIB)
    err, seconds, peak = _bounded(lambda: deploy.load(bad, backend="reference"))
    _one_line(err, str(bad), "header says")
    assert seconds < 5 and peak < 64 << 20, (seconds, peak)


def test_member_holding_less_than_its_shape_is_refused(small, tmp_path):
    key = _bconv_key(small[0])
    arr = _entries(small[0])[key]
    payload = _npy_head(arr) + arr.tobytes()[:-8]
    bad = _with_member(small[0], tmp_path / "short.rbnn", key, payload, zipfile.ZIP_STORED, zlib.crc32(payload),
                       len(payload))
    with pytest.raises(PackedFormatError) as e:
        deploy.load(bad)
    _one_line(e.value, str(bad), key, "needs")


def test_member_holding_more_than_its_shape_is_refused(small, tmp_path):
    key = _bconv_key(small[0])
    arr = _entries(small[0])[key]
    payload = _npy_head(arr) + arr.tobytes() + bytes(4096)
    bad = _with_member(small[0], tmp_path / "long.rbnn", key, payload, zipfile.ZIP_STORED, zlib.crc32(payload),
                       len(payload))
    with pytest.raises(PackedFormatError) as e:
        deploy.load(bad)
    _one_line(e.value, str(bad), key)


def test_member_with_a_bad_checksum_is_refused(small, tmp_path):
    key = _bconv_key(small[0])
    name, payload, method, crc, size = next(m for m in _members(small[0]) if m[0] == key + ".npy")
    flipped = payload[:-1] + bytes([payload[-1] ^ 1])
    bad = _with_member(small[0], tmp_path / "crc.rbnn", key, flipped, method, crc, size)
    with pytest.raises(PackedFormatError) as e:
        deploy.load(bad)
    _one_line(e.value, str(bad))


def test_compressed_archive_loads_and_predicts_the_same(small, tmp_path):
    """A legitimate re-zip with deflate (not what rbnn writes) reads back identically."""
    z = tmp_path / "deflated.rbnn"
    with zipfile.ZipFile(small[0]) as src, zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as dst:
        for i in src.infolist():
            dst.writestr(i.filename, src.read(i))
    x = np.random.default_rng(1).standard_normal((3, 1, 28, 28)).astype(np.float32)
    np.testing.assert_array_equal(deploy.load(z, backend="reference").predict(x),
                                  deploy.load(small[0], backend="reference").predict(x))


# ---- predict inputs -------------------------------------------------------------------------------------
BAD_INPUTS = [
    ("1000x1000", (2, 1, 1000, 1000), "classifier"),
    ("32x32", (2, 1, 32, 32), "32"),
    ("4x4", (2, 1, 4, 4), "4"),
    ("3 channels", (2, 3, 28, 28), "(N, 1, 28, 28)"),
    ("rank 2", (2, 784), "(N, 1, 28, 28)"),
    ("rank 5", (2, 1, 1, 28, 28), "(N, 1, 28, 28)"),
    ("no channel axis", (5, 28, 28), "(N, 1, 28, 28)"),
    ("empty batch of another size", (0, 1, 32, 32), "32"),
]


@pytest.mark.parametrize("case,shape,words", BAD_INPUTS, ids=[c for c, _, _ in BAD_INPUTS])
@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_predict_refuses_inputs_the_model_cannot_run(small, case, shape, words, backend):
    m = deploy.load(small[0], backend=backend)
    x = np.zeros(shape, np.float32)
    with pytest.raises(deploy.PackedInputError) as e:
        m.predict(x)
    _one_line(e.value, str(small[0]), "does not", words.replace("classifier", "fc"))
    with pytest.raises(RbnnError):
        m.layer_outputs(x)


@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_predict_refuses_non_numbers_and_bad_batch_sizes(small, backend):
    m = deploy.load(small[0], backend=backend)
    with pytest.raises(deploy.PackedInputError) as e:
        m.predict(np.array([["a"]]))
    _one_line(e.value, "not an array of numbers")
    x = np.zeros((3, 1, 28, 28), np.float32)
    for bs in (0, -1, 1.5):
        with pytest.raises(deploy.PackedInputError) as e:
            m.predict(x, batch_size=bs)
        _one_line(e.value, "batch_size")


@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_empty_batch_gives_empty_results(small, gapnet, backend):
    m = deploy.load(small[0], backend=backend)
    y = m.predict(np.zeros((0, 1, 28, 28), np.float32))
    assert y.shape == (0, 10) and y.dtype == np.float32
    assert m.predict(np.zeros((0, 1, 28, 28), np.float32), batch_size=4).shape == (0, 10)
    dots = m.layer_outputs(np.zeros((0, 1, 28, 28), np.float32))
    assert {k: v.shape for k, v in dots.items()} == {"conv2": (0, 32, 14, 14), "conv3": (0, 64, 7, 7),
                                                      "conv4": (0, 64, 7, 7)}
    assert m.binary_layer_dot("conv3", np.zeros((0, 32, 14, 14), np.float32)).shape == (0, 64, 7, 7)
    g = deploy.load(gapnet[0], backend=backend)
    assert g.predict(np.zeros((0, 3, 8, 8), np.float32)).shape == (0, 5)


@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_binary_layer_dot_refuses_a_wrong_layer_input(small, backend):
    m = deploy.load(small[0], backend=backend)
    with pytest.raises(deploy.PackedInputError) as e:
        m.binary_layer_dot("conv3", np.zeros((1, 16, 14, 14), np.float32))
    _one_line(e.value, "conv3", "channels")


def _torch_logits(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("net,backend", [("small", "reference"), ("small", "fast"), ("gapnet", "reference"),
                                         ("gapnet", "fast")])
def test_nan_and_inf_pixels_compute_what_torch_computes(request, net, backend):
    """A NaN pixel reaches the first binary layer as a NaN of positive sign (a NaN from inf - inf is negative):
    torch binarizes it to +1. The residual model ("small") carries NaN to all logits, the other one not."""
    path, model = request.getfixturevalue(net)
    shape = (1, 28, 28) if net == "small" else (3, 8, 8)
    x = np.random.default_rng(3).standard_normal((4, *shape)).astype(np.float32)
    x[1, 0, 3, 4] = np.nan
    x[2, 0, 5, 5] = np.inf
    x[3, -1, 0, 0] = -np.inf
    want = _torch_logits(model, x)
    got = deploy.load(path, backend=backend).predict(x)
    assert got.shape == want.shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.nanmax(np.abs(want)), equal_nan=True)
    assert np.isfinite(got[0]).all()


@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_fully_convolutional_model_runs_other_sizes_like_torch(gapnet, backend):
    """Size independence is kept where the graph allows it (global pool before the classifier)."""
    path, model = gapnet
    m = deploy.load(path, backend=backend)
    x = np.random.default_rng(4).standard_normal((2, 3, 11, 13)).astype(np.float32)
    np.testing.assert_allclose(m.predict(x), _torch_logits(model, x), rtol=1e-4, atol=1e-4)
    with pytest.raises(deploy.PackedInputError) as e:  # no pixels: the first conv has no output
        m.predict(np.zeros((1, 3, 0, 4), np.float32))
    _one_line(e.value, str(path), "does not fit")


# ---- IDX files ------------------------------------------------------------------------------------------
def _idx_bytes(arr: np.ndarray, magic: int | None = None, dims=None) -> bytes:
    magic = magic if magic is not None else (IMAGES_MAGIC if arr.ndim == 3 else LABELS_MAGIC)
    dims = arr.shape if dims is None else dims
    return struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims) + arr.astype(np.uint8).tobytes()


def _gz_bomb(path: Path, head: bytes, n_mib: int) -> Path:
    """``head`` then ``n_mib`` MiB of zeros as a gzip file of about 1 KB per MiB (concatenated gzip members,
    which gzip readers decompress as one stream)."""
    member = gzip.compress(bytes(1 << 20), 9)
    path.write_bytes(gzip.compress(head) + member * n_mib)
    return path


IDX_CASES = [  # (case, file bytes (gzip applied by the test when gz), gz, words)
    ("bad magic", _idx_bytes(np.zeros((4, 28, 28)), magic=0x0801), True, "magic number"),
    ("magic of another type", _idx_bytes(np.zeros((4, 28, 28)), magic=0x0D03), False, "magic number"),
    ("zero dimensions", struct.pack(">I", 0x0800), False, "magic number"),
    ("header cut", struct.pack(">II", IMAGES_MAGIC, 4), True, "truncated"),
    ("dims larger than the data", _idx_bytes(np.zeros((4, 28, 28)), dims=(5, 28, 28)), False, "truncated"),
    ("dims smaller than the data", _idx_bytes(np.zeros((4, 28, 28)), dims=(3, 28, 28)), False, "longer"),
    ("gz dims larger than the data", _idx_bytes(np.zeros((4, 28, 28)), dims=(5, 28, 28)), True, "truncated"),
    ("gz dims smaller than the data", _idx_bytes(np.zeros((4, 28, 28)), dims=(3, 28, 28)), True, "longer"),
    ("dims of 2**32-1 images", _idx_bytes(np.zeros((1, 28, 28)), dims=(2**32 - 1, 28, 28)), True, "declares"),
    ("raw dims of 2**32-1 images", _idx_bytes(np.zeros((1, 28, 28)), dims=(2**32 - 1, 28, 28)), False, "truncated"),
    ("labels file read as images", _idx_bytes(np.zeros(4)), True, "magic number"),
    ("empty file", b"", False, "truncated"),
]


@pytest.mark.parametrize("case,blob,gz,words", IDX_CASES, ids=[c[0] for c in IDX_CASES])
def test_bad_idx_file_is_refused(tmp_path, case, blob, gz, words):
    p = tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    p.write_bytes(gzip.compress(blob) if gz else blob)
    err, seconds, peak = _bounded(lambda: read_idx(p, IMAGES_MAGIC))
    assert isinstance(err, DataError)
    _one_line(err, str(p), words)
    assert peak < 8 << 20, peak


def test_truncated_gzip_stream_is_refused(tmp_path):
    p = tmp_path / "t10k-images-idx3-ubyte.gz"
    p.write_bytes(gzip.compress(_idx_bytes(np.random.default_rng(0).integers(0, 256, (64, 28, 28))))[:3000])
    with pytest.raises(DataError) as e:
        read_idx(p, IMAGES_MAGIC)
    _one_line(e.value, str(p), "gzip")


def test_gzip_that_inflates_to_2_gib_is_refused_fast_with_bounded_memory(tmp_path):
    p = _gz_bomb(tmp_path / "train-images-idx3-ubyte.gz", _idx_bytes(np.zeros((1000, 28, 28))), 2048)
    assert p.stat().st_size < 4 << 20
    err, seconds, peak = _bounded(lambda: read_idx(p, IMAGES_MAGIC))
    _one_line(err, str(p), "longer than its header says")
    assert seconds < 5 and peak < 16 << 20, (seconds, peak)  # the header allows 784 KB; the stream holds 2 GiB


def test_gzip_whose_header_claims_gigabytes_is_refused_before_inflating(tmp_path):
    dims = (3_000_000, 28, 28)  # 2.2 GB declared, the file holds 2 MiB of zeros
    p = _gz_bomb(tmp_path / "train-images-idx3-ubyte.gz", struct.pack(">4I", IMAGES_MAGIC, *dims), 2)
    err, seconds, peak = _bounded(lambda: read_idx(p, IMAGES_MAGIC))
    _one_line(err, str(p), "declares")
    assert seconds < 1 and peak < 1 << 20, (seconds, peak)


def test_valid_idx_still_reads_exactly(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    for gz in (False, True):
        p = tmp_path / f"x{int(gz)}"
        blob = _idx_bytes(arr)
        p.write_bytes(gzip.compress(blob) if gz else blob)
        np.testing.assert_array_equal(read_idx(p, IMAGES_MAGIC), arr)


# ---- dataset sizes --------------------------------------------------------------------------------------
def _idx_root(root: Path, hw: int, n: int = 8) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split in ("train", "t10k"):
        (root / f"{split}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(_idx_bytes(rng.integers(0, 256, (n, hw, hw)))))
        (root / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(np.arange(n) % 10)))
    return root


SIZE_CASES = [
    ("synthetic 100000x100000", dict(name="synthetic", image_size=100_000, subset=8, test_subset=8), "synthetic"),
    ("synthetic default counts 30000", dict(name="synthetic", image_size=30_000), "synthetic"),
    ("idx resized to 28000", dict(name="idx", image_size=28_000), "data.image_size=28000"),
    ("fashion-mnist resized to 100000", dict(name="fashion-mnist", image_size=100_000), "data.image_size=100000"),
]


@pytest.mark.parametrize("case,fields,words", SIZE_CASES, ids=[c for c, _, _ in SIZE_CASES])
def test_dataset_too_large_for_memory_is_refused_before_allocating(tmp_path, case, fields, words):
    cfg = DataConfig(root=str(_idx_root(tmp_path / "d", 28)), **fields)
    err, seconds, peak = _bounded(lambda: load_arrays(cfg))
    assert isinstance(err, DataError)
    text = _one_line(err, words, "needs", "available")
    assert "TiB" in text or "GiB" in text or "PiB" in text
    assert seconds < 5 and peak < 32 << 20, (seconds, peak)


def test_imagenet_image_size_too_large_is_refused(tmp_path):
    cfg = DataConfig(name="imagenet", root=str(tmp_path), image_size=100_000)
    with pytest.raises(DataError) as e:
        build_loaders(cfg, 256, 256, 0)
    _one_line(e.value, "data.image_size=100000", "needs")


# ---- through the CLI ------------------------------------------------------------------------------------
def _rbnn(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "rbnn", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _cli_refused(p: subprocess.CompletedProcess, *words: str) -> str:
    lines = [ln for ln in p.stderr.splitlines() if "error:" in ln]
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "accuracy" not in p.stdout
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("hw,backend", [(32, "reference"), (1000, "fast")])
def test_cli_predict_on_images_of_another_size(small, tmp_path, hw, backend):
    root = _idx_root(tmp_path / f"idx{hw}", hw, n=2)
    p = _rbnn("predict", str(small[0]), "--data", "idx", "--data-root", str(root), "--backend", backend)
    _cli_refused(p, str(small[0]), f"1, {hw}, {hw}")


def test_cli_predict_with_a_tampered_model(small, tmp_path):
    bad = _edit_header(small[0], tmp_path / "neg.rbnn", _attr("bconv", "padding", [-1, -1]))
    root = _idx_root(tmp_path / "idx", 28, n=2)
    p = _rbnn("predict", str(bad), "--data", "idx", "--data-root", str(root), "--backend", "fast")
    _cli_refused(p, str(bad), "padding")


def test_cli_predict_on_matching_images_prints_accuracy(small, tmp_path):
    root = _idx_root(tmp_path / "idx", 28, n=4)
    p = _rbnn("predict", str(small[0]), "--data", "idx", "--data-root", str(root), "--backend", "reference")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["images"] == 4


def test_cli_train_with_a_huge_synthetic_image_size(tmp_path):
    out = tmp_path / "run"
    p = _rbnn("train", *SYN, "method=xnor", "data.image_size=100000", f"out={out}")
    _cli_refused(p, "data.image_size", "needs")
    assert not out.exists()


# runs the CLI and reports the process's peak resident memory on its last stderr line: VmHWM of this process
# image (getrusage's ru_maxrss would include the forking pytest process's, as it is kept across exec)
_RSS = ("import runpy, sys\n"
        "sys.argv = ['rbnn', *sys.argv[1:]]\n"
        "try:\n"
        "    runpy.run_module('rbnn', run_name='__main__')\n"
        "finally:\n"
        "    hwm = [ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmHWM:')][0]\n"
        "    print('maxrss_kib', hwm, file=sys.stderr)\n")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_cli_train_on_an_idx_gzip_bomb(tmp_path):
    """A 2 MB gzip that inflates to 2 GiB: refused fast, and the whole process never holds the 2 GiB."""
    root = _idx_root(tmp_path / "fm", 28, n=8)
    _gz_bomb(root / "train-images-idx3-ubyte.gz", _idx_bytes(np.zeros((8, 28, 28))), 2048)
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-c", _RSS, "train", "model=smallnet", "method=xnor", "threads=1", "epochs=1",
                        "export=false", "data=fashion-mnist", f"data.root={root}", f"out={out}"],
                       env=env, capture_output=True, text=True, timeout=300)
    _cli_refused(p, "train-images-idx3-ubyte.gz", "longer than its header says")
    rss = int(p.stderr.split("maxrss_kib")[-1].split()[0]) * 1024
    assert rss < GIB, rss  # torch alone is a few hundred MiB; inflating the stream would add 2 GiB
    assert not out.exists()


def test_size_arithmetic_of_the_bombs():
    """The hostile files above are what they claim: 2 GiB of output from a few MiB."""
    stream = _deflate_zeros(b"x" * 10, 8)
    assert len(zlib.decompress(stream, -15)) == 10 + 8 * (1 << 20)
    assert math.prod((3_000_000, 28, 28)) > 2 * 10**9
