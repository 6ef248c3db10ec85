"""Size report of a torch model: exported to a temporary ``.rbnn`` file to measure its real size on disk."""

from __future__ import annotations

import os
import tempfile

from torch import nn

from ..runtime import format as fmt
from ..runtime import size as runtime_size
from .exporter import build_graph


def size_report(model_or_path: nn.Module | str | os.PathLike, input_shape=None) -> list[dict]:
    """The rows of :func:`rbnn.runtime.size.size_report` for a torch model (exported to a temporary file to
    measure the real size) or for a path to a ``.rbnn`` file."""
    if isinstance(model_or_path, str | os.PathLike):
        return runtime_size.size_report(model_or_path)
    graph = build_graph(model_or_path, input_shape)
    with tempfile.TemporaryDirectory() as d:
        file_bytes = fmt.save(graph, os.path.join(d, "m.rbnn"))
    return runtime_size.graph_report(graph, file_bytes)
