"""Per-layer size report of a packed model: real packed bytes beside float32 bytes."""

from __future__ import annotations

import math
import os

from . import format as fmt
from .format import PackedGraph


def _rows(graph: PackedGraph) -> list[dict]:
    rows = []
    for n in graph.nodes:
        nbytes = int(sum(a.nbytes for a in n.arrays.values()))
        if n.op in ("bconv", "blinear"):
            k = n.attrs["in_channels"] * (math.prod(n.attrs["kernel"]) if n.op == "bconv" else 1)
            params = int(n.attrs["out_channels"] * k)
            rows.append(
                {
                    "name": n.attrs["module"],
                    "kind": "binary",
                    "op": n.op,
                    "params": params,
                    "packed_bytes": nbytes,
                    "weight_packed_bytes": int(n.arrays["w_bits"].nbytes),
                    "float32_bytes": 4 * params,
                    "folded": n.attrs.get("folded", []),
                }
            )
        elif n.op in ("conv", "linear"):
            params = int(n.arrays["weight"].size + n.arrays["bias"].size)
            rows.append(
                {
                    "name": n.attrs["module"],
                    "kind": "float",
                    "op": n.op,
                    "params": params,
                    "packed_bytes": nbytes,
                    "weight_packed_bytes": int(n.arrays["weight"].nbytes),
                    "float32_bytes": 4 * params,
                    "folded": n.attrs.get("folded", []),
                    "why": "kept float32 (first/last layer or float_layers of the recipe)",
                }
            )
        elif n.arrays:
            params = int(sum(a.size for a in n.arrays.values()))
            rows.append(
                {
                    "name": n.attrs.get("module", n.name),
                    "kind": "float",
                    "op": n.op,
                    "params": params,
                    "packed_bytes": nbytes,
                    "weight_packed_bytes": 0,
                    "float32_bytes": 4 * params,
                    "folded": [],
                    "why": "BatchNorm not directly after a conv (kept as a float affine)",
                }
            )
    return rows


def size_report(path: str | os.PathLike) -> list[dict]:
    """Per-layer dicts ``{name, kind ('binary'|'float'), op, params, packed_bytes, weight_packed_bytes,
    float32_bytes, folded}`` of the ``.rbnn`` file ``path`` followed by one ``{"name": "total", "kind": "total",
    ...}`` row that also holds ``file_bytes`` (the real size on disk), ``binary_params``, ``float_params`` and
    ``binary_weight_ratio`` (float32 bytes / packed bytes of the binary weights). NumPy only; the report of a
    torch model is :func:`rbnn.export.size_report`."""
    path = os.fspath(path)
    return graph_report(fmt.read(path), os.path.getsize(path))


def graph_report(graph: PackedGraph, file_bytes: int) -> list[dict]:
    """:func:`size_report` of a graph whose file takes ``file_bytes`` bytes."""
    rows = _rows(graph)
    binary = [r for r in rows if r["kind"] == "binary"]
    bw = sum(r["weight_packed_bytes"] for r in binary)
    total = {
        "name": "total",
        "kind": "total",
        "op": "",
        "params": sum(r["params"] for r in rows),
        "packed_bytes": sum(r["packed_bytes"] for r in rows),
        "float32_bytes": sum(r["float32_bytes"] for r in rows),
        "binary_params": sum(r["params"] for r in binary),
        "float_params": sum(r["params"] for r in rows if r["kind"] == "float"),
        "binary_weight_packed_bytes": bw,
        "binary_weight_ratio": (sum(r["float32_bytes"] for r in binary) / bw) if bw else None,
        "file_bytes": int(file_bytes),
    }
    return rows + [total]


def format_size_report(rows: list[dict]) -> str:
    """A plain-text table of :func:`size_report` rows (for ``rbnn summary``)."""
    lines = [f"{'layer':40s} {'kind':7s} {'params':>10s} {'packed B':>10s} {'float32 B':>11s}"]
    for r in rows:
        lines.append(
            f"{r['name'][:40]:40s} {r['kind']:7s} {r['params']:>10d} {r['packed_bytes']:>10d} "
            f"{r['float32_bytes']:>11d}"
        )
    t = rows[-1]
    lines.append(
        f"file on disk: {t['file_bytes']} bytes ({t['float32_bytes'] / max(t['file_bytes'], 1):.1f}x "
        "smaller than float32)"
    )
    return "\n".join(lines)
