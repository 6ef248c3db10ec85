"""Loading and running a packed ``.rbnn`` model. NumPy (+ numba for ``backend="fast"``) only, never torch."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from . import format as fmt
from .format import Node, PackedFormatError, PackedGraph
from .reference import ReferenceOps

BACKENDS = ("reference", "fast")


def _ops(backend: str):
    if backend == "reference":
        return ReferenceOps()
    if backend == "fast":
        from .fast import FastOps

        return FastOps()
    raise ValueError(f"backend={backend!r}; expected one of {', '.join(BACKENDS)}")


class PackedModel:
    """A loaded packed model. ``predict(x)`` takes NCHW (or (N, F)) float input like the torch model."""

    def __init__(self, graph: PackedGraph, backend: str = "fast", path: str | None = None) -> None:
        self.graph = graph
        self.backend = backend
        self.path = path
        self.ops = _ops(backend)
        self.nodes = graph.nodes
        self.input_shape = tuple(graph.meta.get("input_shape", graph.nodes[0].attrs.get("shape", ())))
        if hasattr(self.ops, "prepare"):
            self.ops.prepare(graph)

    # ---- metadata ------------------------------------------------------------------------------------
    @property
    def meta(self) -> dict[str, Any]:
        return self.graph.meta

    @property
    def binary_layers(self) -> list[str]:
        return [n.attrs["module"] for n in self.nodes if n.op in ("bconv", "blinear")]

    def _binary_node(self, module: str) -> Node:
        for n in self.nodes:
            if n.op in ("bconv", "blinear") and n.attrs["module"] == module:
                return n
        raise KeyError(f"no binary layer named {module!r}; have: {', '.join(self.binary_layers)}")

    # ---- running -------------------------------------------------------------------------------------
    def _to_internal(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == len(self.input_shape):
            x = x[None]
        if x.ndim == 4:
            return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        return np.ascontiguousarray(x)

    def _check_input(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        want = self.input_shape
        if x.ndim == len(want) + 1:
            got = tuple(x.shape[1:])
            if got[0] != want[0] or (len(want) == 1 and got != want):
                raise ValueError(
                    f"input of shape {tuple(x.shape)} does not match the model input (N, "
                    f"{', '.join(map(str, want))})"
                )
        elif x.ndim != len(want):
            raise ValueError(f"input of rank {x.ndim}; expected (N, {', '.join(map(str, want))})")

    def run(self, x: np.ndarray, record: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Run the graph; with ``record`` also return each binary layer's integer pre-activations
        (module name -> int64, NCHW for convs), computed unfused."""
        self._check_input(x)
        env: dict[str, np.ndarray] = {}
        dots: dict[str, np.ndarray] = {}
        run_plan = self.ops.plan if (hasattr(self.ops, "plan") and not record) else None
        if run_plan is not None:
            out = run_plan(self._to_internal(x))
        else:
            for node in self.nodes:
                if node.op == "input":
                    env[node.name] = self._to_internal(x)
                    continue
                args = [env[i] for i in node.inputs]
                if record and node.op in ("bconv", "blinear"):
                    d = self.ops.bdot(node, args[0])
                    dots[node.attrs["module"]] = d.transpose(0, 3, 1, 2) if d.ndim == 4 else d
                    env[node.name] = (
                        d * node.arrays["out_mul"].astype(np.float64)
                        + node.arrays["out_add"].astype(np.float64)
                    ).astype(np.float32)
                else:
                    env[node.name] = getattr(self.ops, node.op)(node, *args)
            out = env[self.graph.output]
        if out.ndim == 4:
            out = out.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(out), dots

    def predict(self, x: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Logits (float32) for NCHW float input ``x``."""
        x = np.asarray(x, dtype=np.float32)
        if batch_size is None or x.shape[0] <= batch_size:
            return self.run(x)[0]
        return np.concatenate([self.run(x[i : i + batch_size])[0] for i in range(0, x.shape[0], batch_size)])

    def layer_outputs(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Integer pre-activations (int64; NCHW for convs) of every binary layer, by torch module name."""
        return self.run(x, record=True)[1]

    def binary_layer_dot(self, module: str, x: np.ndarray) -> np.ndarray:
        """Integer pre-activations of one binary layer given *its own input* ``x`` (NCHW or (N, F), as torch
        sees it). Used by :func:`rbnn.deploy.verify` to check each layer on exactly torch's input."""
        node = self._binary_node(module)
        xi = np.asarray(x, dtype=np.float32)
        xi = np.ascontiguousarray(xi.transpose(0, 2, 3, 1)) if xi.ndim == 4 else np.ascontiguousarray(xi)
        d = self.ops.bdot(node, xi)
        return d.transpose(0, 3, 1, 2) if d.ndim == 4 else d


def load(path: str | os.PathLike, backend: str = "fast") -> PackedModel:
    """Load and validate a ``.rbnn`` file. ``backend``: ``"fast"`` (numba) or ``"reference"`` (NumPy)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}; expected one of {', '.join(BACKENDS)}")
    graph = fmt.read(path)
    try:
        return PackedModel(graph, backend, os.fspath(path))
    except (KeyError, IndexError, TypeError) as e:
        raise PackedFormatError(f"{os.fspath(path)}: malformed graph ({type(e).__name__}: {e})") from None
