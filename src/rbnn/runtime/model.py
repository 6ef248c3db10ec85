"""Loading and running a packed ``.rbnn`` model. NumPy (+ numba for ``backend="fast"``) only, never torch."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import RbnnError
from . import format as fmt
from . import shapes
from .format import Node, PackedFormatError, PackedGraph
from .plan import FastOps, to_internal
from .reference import ReferenceOps

BACKENDS = ("reference", "fast")


class PackedInputError(RbnnError, ValueError):
    """Input that a loaded packed model cannot run on (wrong shape, not numbers, a bad batch size)."""


def _ops(backend: str):
    if backend == "reference":
        return ReferenceOps()
    if backend == "fast":
        return FastOps()
    raise ValueError(f"backend={backend!r}; expected one of {', '.join(BACKENDS)}")


class PackedModel:
    """A loaded packed model. ``predict(x)`` takes NCHW (or (N, F)) float input like the torch model."""

    def __init__(self, graph: PackedGraph, backend: str = "fast", path: str | None = None) -> None:
        self.graph = graph
        self.backend = backend
        self.path = path
        self.nodes = graph.nodes
        if not graph.shapes:  # a graph built in memory rather than read (and validated) by format.read
            try:
                graph.shapes = shapes.propagate(graph.nodes, graph.meta.get("input_shape"))
            except shapes.GraphProblem as e:
                raise PackedFormatError(f"{path or 'packed graph'}: {e}") from None
        self.input_shape = graph.shapes[graph.nodes[0].name]
        self.output_shape = graph.shapes[graph.output]
        self._shape_cache = {self.input_shape: graph.shapes}
        self.ops = _ops(backend)
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
    def _batched(self, x: np.ndarray) -> np.ndarray:
        """``x`` as float32 with a batch axis (the model's layout: NCHW for images)."""
        x = np.asarray(x, dtype=np.float32)
        return x[None] if x.ndim == len(self.input_shape) else x

    def _to_internal(self, x: np.ndarray) -> np.ndarray:
        return to_internal(self._batched(x))

    def _input_error(self, problem: str) -> PackedInputError:
        return PackedInputError(f"{self.path or 'packed model'}: {problem}")

    def _check_input(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, tuple[int, ...]]]:
        """``x`` as float32 with a batch axis, and every node's output shape on it. The channels (or features)
        must be the model's; another image size is accepted only when every op can run on it, as in torch
        (a fully convolutional model), never when, say, the classifier's width would not match: the kernels
        index without bounds checks. Shapes are propagated once per image size and cached."""
        try:
            x = np.asarray(x, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise self._input_error(f"input is not an array of numbers ({e})") from None
        want, given = self.input_shape, tuple(x.shape)
        if x.ndim == len(want):
            x = x[None]
        sample = tuple(x.shape[1:])
        found = self._shape_cache.get(sample)
        if found is not None:
            return x, found
        expect = f"the model input (N, {', '.join(map(str, want))})"
        if len(sample) != len(want) or sample[0] != want[0] or (len(want) == 1 and sample != want):
            raise self._input_error(f"input of shape {given} does not match {expect}")
        try:
            found = shapes.propagate(self.nodes, sample=sample)
        except shapes.GraphProblem as e:
            raise self._input_error(f"input of shape {given} does not fit {expect}: {e}") from None
        if len(self._shape_cache) < 64:
            self._shape_cache[sample] = found
        return x, found

    def run(self, x: np.ndarray, record: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Run the graph; with ``record`` also return each binary layer's integer pre-activations
        (module name -> int64, NCHW for convs), computed unfused."""
        x, shp = self._check_input(x)
        env: dict[str, np.ndarray] = {}
        dots: dict[str, np.ndarray] = {}
        if x.shape[0] == 0:  # no images: empty results of the right shapes, nothing run
            if record:
                dots = {
                    n.attrs["module"]: np.zeros((0, *shp[n.name]), dtype=np.int64)
                    for n in self.nodes
                    if n.op in ("bconv", "blinear")
                }
            return np.zeros((0, *shp[self.graph.output]), dtype=np.float32), dots
        run_plan = self.ops.plan if (hasattr(self.ops, "plan") and not record) else None
        if run_plan is not None:
            out = run_plan(self._batched(x))  # each tile goes to the internal layout on its own thread
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
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1
        ):
            raise self._input_error(f"batch_size={batch_size!r}: expected a positive integer")
        x = self._check_input(x)[0]
        if batch_size is None or x.shape[0] <= batch_size:
            return self.run(x)[0]
        return np.concatenate([self.run(x[i : i + batch_size])[0] for i in range(0, x.shape[0], batch_size)])

    def profile(self, x: np.ndarray, repeats: int = 5) -> dict[str, float]:
        """Median seconds per op kind over ``repeats`` runs of the fast engine's plan on NCHW input ``x``
        (kinds: binary conv with its fused epilogue, input packing, float conv, linear, pooling,
        affine/activation/residual, other = the rest and the glue between ops). The plan runs untiled on the
        calling thread, so at large batches the sum can exceed ``predict``'s time on several threads."""
        if not isinstance(self.ops, FastOps) or self.ops.plan is None:
            raise PackedInputError(
                f"{self.path or 'packed model'}: profile() times the fast engine's plan; "
                f"load the model with backend='fast' (it has backend={self.backend!r})"
            )
        if isinstance(repeats, bool) or not isinstance(repeats, int | np.integer) or repeats < 1:
            raise self._input_error(f"repeats={repeats!r}: expected a positive integer")
        x = self._check_input(x)[0]
        if x.shape[0] == 0:
            raise self._input_error("profile() needs at least one image")
        return self.ops.profile(self._batched(x), int(repeats))

    def layer_outputs(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Integer pre-activations (int64; NCHW for convs) of every binary layer, by torch module name."""
        return self.run(x, record=True)[1]

    def binary_layer_dot(self, module: str, x: np.ndarray) -> np.ndarray:
        """Integer pre-activations of one binary layer given *its own input* ``x`` (NCHW or (N, F), as torch
        sees it). Used by :func:`rbnn.export.verify` to check each layer on exactly torch's input."""
        node = self._binary_node(module)
        xi = np.asarray(x, dtype=np.float32)
        try:
            out = shapes.infer(node, tuple(xi.shape[1:]))
        except shapes.GraphProblem as e:
            raise self._input_error(f"input of shape {tuple(xi.shape)} for layer {module!r}: {e}") from None
        if xi.shape[0] == 0:
            return np.zeros((0, *out), dtype=np.int64)
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
