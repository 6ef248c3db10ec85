"""The ``.rbnn`` file: one self-describing, versioned NumPy ``.npz`` archive (no pickle).

Layout of the archive (every entry is a plain array, so ``np.load(path, allow_pickle=False)`` reads it):

- ``__rbnn_magic__``  uint8 bytes of :data:`MAGIC`;
- ``__rbnn_header__`` uint8 bytes of a UTF-8 JSON header: format version, conventions (sign(0), padding, bit
  order, layout), model / method description, the op graph (nodes in topological order, each with its op,
  inputs, attributes and the names, shapes and dtypes of its arrays), and which layers stay float and why;
- one entry per array named in the header (``"<node>:<key>"``): packed binary weights (uint64), per-channel
  float32 affine terms, float32 weights of the layers that stay float.

Loading validates the magic, version, presence, dtype and shape of every array and the op-specific shape
invariants, and raises :class:`PackedFormatError` (one line: file and problem) on any mismatch.
This module imports NumPy only.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..atomic import atomic_write
from ..errors import RbnnError
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
            o, c = int(at["out_channels"]), int(at["in_channels"])
            k = c * (int(at["kernel"][0]) * int(at["kernel"][1]) if n.op == "bconv" else 1)
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
            c = int(at["channels"])
            for key in ("shift_in", "slope", "shift_out"):
                if a[key].shape != (c,):
                    return f"array {n.name}:{key} has shape {a[key].shape}, expected ({c},)"
        elif n.op in ("maxpool", "avgpool"):
            return _check_pool(n)
    except (KeyError, TypeError, ValueError) as e:
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


def read(path: str | os.PathLike) -> PackedGraph:
    """Read and validate a ``.rbnn`` file (NumPy only). Raises PackedFormatError with a one-line message."""
    p = os.fspath(path)

    def fail(problem: str) -> PackedFormatError:
        return PackedFormatError(f"{p}: {problem}")

    if not os.path.exists(p):
        raise fail("no such file")
    try:
        with np.load(p, allow_pickle=False) as z:
            files = set(z.files)
            if MAGIC_KEY not in files:
                raise fail("not an rbnn packed model (no magic entry)")
            if bytes(z[MAGIC_KEY].astype(np.uint8, copy=False)) != MAGIC:
                raise fail("bad magic: not an rbnn packed model")
            if HEADER_KEY not in files:
                raise fail("missing header")
            try:
                header = json.loads(bytes(z[HEADER_KEY]).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise fail(f"corrupt header ({e})") from None
            if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
                raise fail("header does not describe an rbnn-packed model")
            if header.get("version") != FORMAT_VERSION:
                raise fail(
                    f"format version {header.get('version')!r} is not supported "
                    f"(this rbnn reads version {FORMAT_VERSION})"
                )
            nodes = []
            for nd in header.get("nodes", []):
                arrays = {}
                for k, spec in nd.get("arrays", {}).items():
                    key = spec["key"]
                    if key not in files:
                        raise fail(f"missing array {key!r}")
                    arr = z[key]
                    if list(arr.shape) != list(spec["shape"]) or str(arr.dtype) != spec["dtype"]:
                        raise fail(
                            f"array {key!r} is {arr.dtype}{list(arr.shape)}, header says "
                            f"{spec['dtype']}{list(spec['shape'])}"
                        )
                    arrays[k] = arr
                nodes.append(
                    Node(nd["name"], nd["op"], list(nd["inputs"]), dict(nd.get("attrs", {})), arrays)
                )
    except PackedFormatError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, TypeError) as e:
        raise fail(f"unreadable or truncated archive ({type(e).__name__}: {e})") from None
    if not nodes:
        raise fail("header has no nodes")
    names: set[str] = set()
    for n in nodes:
        if n.op not in KNOWN_OPS:
            raise fail(f"node {n.name!r} has unknown op {n.op!r}")
        for i in n.inputs:
            if i not in names:
                raise fail(f"node {n.name!r} reads {i!r}, which is not defined before it")
        problem = _check_node(n)
        if problem:
            raise fail(problem)
        names.add(n.name)
    if nodes[0].op != "input":
        raise fail("first node is not the input")
    out = header.get("output")
    if out not in names:
        raise fail(f"output {out!r} is not a node")
    meta = {
        k: v for k, v in header.items() if k not in ("format", "version", "conventions", "output", "nodes")
    }
    return PackedGraph(nodes, out, meta)
