"""The ``.rbnn`` file: one self-describing, versioned NumPy ``.npz`` archive (no pickle).

Layout of the archive (every entry is a plain array, so ``np.load(path, allow_pickle=False)`` reads it):

- ``__rbnn_magic__``  uint8 bytes of :data:`MAGIC`;
- ``__rbnn_header__`` uint8 bytes of a UTF-8 JSON header: format version, conventions (sign(0), padding, bit
  order, layout), model / method description, the op graph (nodes in topological order, each with its op,
  inputs, attributes and the names, shapes and dtypes of its arrays), and which layers stay float and why;
- one entry per array named in the header (``"<node>:<key>"``): packed binary weights (uint64), per-channel
  float32 affine terms, float32 weights of the layers that stay float.

Loading validates, before reading any array data: the magic, the version, the JSON type of every header
field, the op-specific shape invariants of every array the header declares, and the whole graph by shape
propagation from the model's input (:mod:`.shapes`: strides, paddings, dilations, channel counts, classifier
widths). Then each array is read with its size capped to the declared one (an entry that inflates to more, or
holds less, is refused) and float arrays must be finite. Any problem raises :class:`PackedFormatError` (one
line: file and problem). This module imports NumPy only.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..atomic import atomic_write
from ..errors import RbnnError
from . import shapes
from .packing import n_words

MAGIC = b"RBNN-PACKED\x00"
FORMAT_NAME = "rbnn-packed"
FORMAT_VERSION = 1
MAGIC_KEY = "__rbnn_magic__"
HEADER_KEY = "__rbnn_header__"

CONVENTIONS = {
    "bit_order": "bit i of uint64 word j holds element 64*j+i of the packed axis (little-endian); "
    "bit 1 = -1, bit 0 = +1; unused high bits are 0",
    "weight_packing": "conv weights (O, KH, KW, ceil(C/64)) packed along input channels per (kh, kw) tap; "
    "linear weights (O, ceil(K/64)) packed along inputs",
    "activation_layout": "NHWC inside the engine, activations packed per pixel along channels; "
    "predict() takes NCHW float32 like torch",
    "padding": "zero padding applied after input binarization: border taps contribute 0, so "
    "dot = K_valid - 2*popcount(xor over valid taps)",
    "dot": "dot = popcount(m) - 2*popcount((a ^ w) & m), m = nonzero mask (all ones unless ternary)",
    "output": "binary layer output = dot * out_mul[c] + out_add[c] (weight scale, learned scale, bias and a "
    "following BatchNorm folded in float64, stored float32)",
}


class PackedFormatError(RbnnError):
    """A ``.rbnn`` file is missing, truncated, tampered with or of an unsupported version."""


@dataclass
class Node:
    name: str
    op: str
    inputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "op": self.op,
            "inputs": list(self.inputs),
            "attrs": self.attrs,
            "arrays": {
                k: {"key": f"{self.name}:{k}", "shape": list(v.shape), "dtype": str(v.dtype)}
                for k, v in self.arrays.items()
            },
        }


@dataclass
class PackedGraph:
    """What a ``.rbnn`` file holds: header metadata and the nodes (with their arrays)."""

    nodes: list[Node]
    output: str
    meta: dict[str, Any] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # per-image output shape of each node

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def header(self) -> dict:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "conventions": CONVENTIONS,
            **self.meta,
            "output": self.output,
            "nodes": [n.to_json() for n in self.nodes],
        }


def save(graph: PackedGraph, path: str | os.PathLike) -> int:
    """Write ``graph`` to ``path`` (an uncompressed .npz). Returns the file size in bytes."""
    header = json.dumps(graph.header(), sort_keys=False).encode("utf-8")
    entries: dict[str, np.ndarray] = {
        MAGIC_KEY: np.frombuffer(MAGIC, dtype=np.uint8),
        HEADER_KEY: np.frombuffer(header, dtype=np.uint8),
    }
    for n in graph.nodes:
        for k, v in n.arrays.items():
            entries[f"{n.name}:{k}"] = np.ascontiguousarray(v)
    atomic_write(path, lambda f: np.savez(f, **entries))
    return os.path.getsize(path)


# ---- validation ----------------------------------------------------------------------------------------
# required arrays per op: key -> dtype
_REQUIRED = {
    "bconv": {"w_bits": "uint64", "out_mul": "float32", "out_add": "float32"},
    "blinear": {"w_bits": "uint64", "out_mul": "float32", "out_add": "float32"},
    "conv": {"weight": "float32", "bias": "float32"},
    "linear": {"weight": "float32", "bias": "float32"},
    "affine": {"mul": "float32", "add": "float32"},
    "prelu": {"shift_in": "float32", "slope": "float32", "shift_out": "float32"},
}
KNOWN_OPS = {
    "input",
    "bconv",
    "blinear",
    "conv",
    "linear",
    "affine",
    "hardtanh",
    "relu",
    "prelu",
    "maxpool",
    "avgpool",
    "gap",
    "add",
    "slice",
    "pad",
    "flatten",
}


def _check_node(n: Node) -> str | None:
    """Op-specific shape invariants; returns a problem description or None."""
    a, at = n.arrays, n.attrs
    for key, dt in _REQUIRED.get(n.op, {}).items():
        if key not in a:
            return f"node {n.name!r} ({n.op}) lacks array {key!r}"
        if str(a[key].dtype) != dt:
            return f"array {n.name}:{key} has dtype {a[key].dtype}, expected {dt}"
    try:
        if n.op in ("bconv", "blinear"):
            o, c = shapes.attr_int(n, "out_channels", 1), shapes.attr_int(n, "in_channels", 1)
            kh, kw = shapes.attr_pair(n, "kernel", 1) if n.op == "bconv" else (1, 1)
            k = c * kh * kw
            shape = (o, n_words(k))
            if a["w_bits"].shape != shape:
                return f"array {n.name}:w_bits has shape {a['w_bits'].shape}, expected {shape}"
            if "w_mask" in a and a["w_mask"].shape != shape:
                return f"array {n.name}:w_mask has shape {a['w_mask'].shape}, expected {shape}"
            for key in ("out_mul", "out_add"):
                if a[key].shape != (o,):
                    return f"array {n.name}:{key} has shape {a[key].shape}, expected ({o},)"
            if at["act_transform"] == "shift" and a.get("act_shift", np.zeros(0)).shape != (c,):
                return f"array {n.name}:act_shift missing or not of shape ({c},)"
            if at["zero"] not in (0, 1):
                return f"node {n.name!r} has sign(0) convention {at['zero']!r}, expected 0 or 1"
        elif n.op in ("conv", "linear"):
            o = a["weight"].shape[0]
            if a["bias"].shape != (o,):
                return f"array {n.name}:bias has shape {a['bias'].shape}, expected ({o},)"
            if n.op == "conv" and a["weight"].ndim != 4 or n.op == "linear" and a["weight"].ndim != 2:
                return f"array {n.name}:weight has rank {a['weight'].ndim}"
        elif n.op == "affine":
            if a["mul"].shape != a["add"].shape or a["mul"].ndim != 1:
                return f"arrays {n.name}:mul/add have shapes {a['mul'].shape}/{a['add'].shape}"
        elif n.op == "prelu":
            c = shapes.attr_int(n, "channels", 1)
            for key in ("shift_in", "slope", "shift_out"):
                if a[key].shape != (c,):
                    return f"array {n.name}:{key} has shape {a[key].shape}, expected ({c},)"
        elif n.op in ("maxpool", "avgpool"):
            return _check_pool(n)
    except shapes.GraphProblem as e:
        return str(e)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        return f"node {n.name!r} ({n.op}) has malformed attributes ({type(e).__name__}: {e})"
    return None


def _check_pool(n: Node) -> str | None:
    """Pool attributes the engines rely on: positive kernel/stride/dilation pairs, padding at most half the
    (dilated) kernel as torch requires (so no window lies wholly in the padding), boolean flags."""
    at = n.attrs
    pairs = {k: at[k] for k in ("kernel", "stride", "padding")}
    pairs["dilation"] = at.get("dilation", [1, 1])
    for k, v in pairs.items():
        ints = isinstance(v, list) and len(v) == 2 and all(type(i) is int for i in v)
        if not ints:
            return f"node {n.name!r} ({n.op}) has {k}={v!r}, expected two integers"
        if min(v) < (0 if k == "padding" else 1):
            return f"node {n.name!r} ({n.op}) has {k}={v!r} out of range"
    eff = [(k - 1) * d + 1 for k, d in zip(pairs["kernel"], pairs["dilation"], strict=True)]
    if any(2 * p > e for p, e in zip(pairs["padding"], eff, strict=True)):
        return f"node {n.name!r} ({n.op}) has padding {pairs['padding']} larger than half the kernel"
    for k in ("ceil_mode", "count_include_pad"):
        if not isinstance(at.get(k, False), bool):
            return f"node {n.name!r} ({n.op}) has {k}={at[k]!r}, expected a boolean"
    return None


# ---- reading -------------------------------------------------------------------------------------------
MAX_HEADER_BYTES = 16 << 20  # the JSON header of a large model is well under 1 MB
_CHUNK = 1 << 20
# arrays a node may hold beyond the required ones (key -> dtype)
_OPTIONAL = {
    "bconv": {"w_mask": "uint64", "act_shift": "float32"},
    "blinear": {"w_mask": "uint64", "act_shift": "float32"},
}


def _npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran_order, dtype, header bytes) of the .npy stream ``f``, read without touching its data."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    return tuple(shape), bool(fortran), dtype, f.tell()


def _read_member(zf: zipfile.ZipFile, key: str, fail, want: tuple[tuple[int, ...], str] | None) -> np.ndarray:
    """One array of the archive. Its declared shape and dtype must be ``want`` (the JSON header's; ``None``: a
    1-D uint8 array of at most MAX_HEADER_BYTES), and the archive's uncompressed size of the entry must be
    exactly what that shape needs: both are checked before any data is decompressed. The data is then read in
    chunks into an array of the declared size, so a member that inflates to more is never held in memory."""
    try:
        info = zf.getinfo(key + ".npy")
    except KeyError:
        raise fail(f"missing array {key!r}") from None
    with zf.open(info) as f:
        shape, fortran, dtype, head = _npy_header(f)
        if want is None:
            if dtype != np.uint8 or len(shape) != 1 or shape[0] > MAX_HEADER_BYTES:
                raise fail(f"entry {key!r} is {dtype}{list(shape)}, expected at most {MAX_HEADER_BYTES} uint8 bytes")
        elif list(shape) != list(want[0]) or str(dtype) != want[1]:
            raise fail(f"array {key!r} is {dtype}{list(shape)}, header says {want[1]}{list(want[0])}")
        nbytes = math.prod(shape) * dtype.itemsize
        if info.file_size != head + nbytes:
            raise fail(
                f"array {key!r} holds {info.file_size - head} bytes in the archive, its shape {list(shape)} "
                f"needs {nbytes}"
            )
        arr = np.empty(shape[::-1] if fortran else shape, dtype)
        buf = arr.reshape(-1).view(np.uint8)
        pos = 0
        while pos < nbytes:
            chunk = f.read(min(_CHUNK, nbytes - pos))
            if not chunk:
                raise fail(f"array {key!r} is truncated: {pos} of {nbytes} bytes")
            buf[pos : pos + len(chunk)] = np.frombuffer(chunk, np.uint8)
            pos += len(chunk)
    return np.ascontiguousarray(arr.T) if fortran else arr


def _read_header(zf: zipfile.ZipFile, fail) -> dict:
    """The magic entry and the JSON header, checked for format and version."""
    if MAGIC_KEY + ".npy" not in zf.namelist():
        raise fail("not an rbnn packed model (no magic entry)")
    if _read_member(zf, MAGIC_KEY, fail, None).tobytes() != MAGIC:
        raise fail("bad magic: not an rbnn packed model")
    if HEADER_KEY + ".npy" not in zf.namelist():
        raise fail("missing header")
    try:
        header = json.loads(_read_member(zf, HEADER_KEY, fail, None).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise fail(f"corrupt header ({e})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise fail("header does not describe an rbnn-packed model")
    version = header.get("version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise fail(f"format version {version!r} is not supported (this rbnn reads version {FORMAT_VERSION})")
    if not isinstance(header.get("output"), str):
        raise fail(f"header field 'output' is {header.get('output')!r}, expected a node name")
    return header


def _stand_in(spec: Any, where: str, fail) -> tuple[str, np.ndarray]:
    """(archive key, a zero-byte array of the declared shape and dtype) of one array spec in the header: the
    graph is validated on these before any array data is read."""
    if not isinstance(spec, dict) or not isinstance(spec.get("key"), str):
        raise fail(f"{where} is {spec!r}, expected an object with key, shape and dtype")
    shape, dt = spec.get("shape"), spec.get("dtype")
    if not (isinstance(shape, list) and all(type(v) is int and v >= 0 for v in shape)):
        raise fail(f"{where} has shape {shape!r}, expected a list of integers >= 0")
    if not isinstance(dt, str) or dt not in ("uint64", "float32"):
        raise fail(f"{where} has dtype {dt!r}, expected uint64 or float32")
    return spec["key"], np.broadcast_to(np.zeros((), dtype=dt), shape)


def _parse_nodes(header: dict, fail) -> tuple[list[Node], dict[tuple[str, str], str]]:
    """The header's nodes with stand-in arrays, every field checked for its JSON type; and the archive key of
    each (node, array)."""
    raw = header.get("nodes")
    if not isinstance(raw, list) or not raw:
        raise fail("header field 'nodes' must be a non-empty list")
    nodes, keys = [], {}
    for i, nd in enumerate(raw):
        name = nd.get("name") if isinstance(nd, dict) else None
        if not isinstance(name, str) or not name:
            raise fail(f"header nodes[{i}] has no name (a non-empty string)")
        fields = {"op": str, "inputs": list, "attrs": dict, "arrays": dict}
        for k, t in fields.items():
            if not isinstance(nd.get(k, t()), t):
                raise fail(f"header node {name!r} field {k!r} is {nd[k]!r}, expected a {t.__name__}")
        if "op" not in nd or not all(isinstance(s, str) for s in nd["inputs"]):
            raise fail(f"header node {name!r} needs an op and a list of input names")
        arrays = {}
        for k, spec in nd.get("arrays", {}).items():
            keys[(name, k)], arrays[k] = _stand_in(spec, f"header node {name!r} array {k!r}", fail)
        nodes.append(Node(name, nd["op"], list(nd["inputs"]), dict(nd.get("attrs", {})), arrays))
    return nodes, keys


def _validate(nodes: list[Node], header: dict, fail) -> dict[str, tuple[int, ...]]:
    """Graph structure, each node's arrays and attributes, and shape propagation from the input."""
    names: set[str] = set()
    for n in nodes:
        if n.op not in KNOWN_OPS:
            raise fail(f"node {n.name!r} has unknown op {n.op!r}")
        if n.name in names:
            raise fail(f"node name {n.name!r} is used twice")
        for i in n.inputs:
            if i not in names:
                raise fail(f"node {n.name!r} reads {i!r}, which is not defined before it")
        allowed = {**_REQUIRED.get(n.op, {}), **_OPTIONAL.get(n.op, {})}
        for k, a in n.arrays.items():
            if k not in allowed:
                raise fail(f"node {n.name!r} ({n.op}) has an unexpected array {k!r}")
            if str(a.dtype) != allowed[k]:
                raise fail(f"array {n.name}:{k} has dtype {a.dtype}, expected {allowed[k]}")
        problem = _check_node(n)
        if problem:
            raise fail(problem)
        names.add(n.name)
    if nodes[0].op != "input" or any(n.op == "input" for n in nodes[1:]):
        raise fail("the first node, and only it, must be the input")
    if header["output"] not in names:
        raise fail(f"output {header['output']!r} is not a node")
    try:
        return shapes.propagate(nodes, header.get("input_shape"))
    except shapes.GraphProblem as e:
        raise fail(str(e)) from None


def _read_arrays(zf: zipfile.ZipFile, nodes: list[Node], keys: dict, fail) -> None:
    """Replace the stand-ins by the archive's arrays; float arrays must be finite."""
    for n in nodes:
        for k, a in list(n.arrays.items()):
            arr = _read_member(zf, keys[(n.name, k)], fail, (a.shape, str(a.dtype)))
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise fail(f"array {keys[(n.name, k)]!r} holds non-finite values (NaN or inf)")
            n.arrays[k] = arr


def read(path: str | os.PathLike) -> PackedGraph:
    """Read and validate a ``.rbnn`` file (NumPy only). Raises PackedFormatError with a one-line message.

    The header is checked first (JSON types, the graph by shape propagation, see :mod:`.shapes`), then each
    array is read with its size capped to what the header declares."""
    p = os.fspath(path)

    def fail(problem: str) -> PackedFormatError:
        return PackedFormatError(f"{p}: {problem}")

    if not os.path.exists(p):
        raise fail("no such file")
    try:
        with zipfile.ZipFile(p) as zf:
            header = _read_header(zf, fail)
            nodes, keys = _parse_nodes(header, fail)
            shp = _validate(nodes, header, fail)
            _read_arrays(zf, nodes, keys, fail)
    except PackedFormatError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, KeyError, TypeError,
            NotImplementedError, RuntimeError, zlib.error, struct.error) as e:
        raise fail(f"unreadable or truncated archive ({type(e).__name__}: {e})") from None
    meta = {
        k: v for k, v in header.items() if k not in ("format", "version", "conventions", "output", "nodes")
    }
    return PackedGraph(nodes, header["output"], meta, shp)
