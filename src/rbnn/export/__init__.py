"""The torch side of deployment: export a binary model to a packed ``.rbnn`` file (or to ONNX), verify a
packed model against it layer by layer, and report the size of a module. Runs where torch is; what it writes
is run by the torch-free :mod:`rbnn.runtime`.

    info = rbnn.export.export(model, "model.rbnn", input_shape=(3, 32, 32))
    report = rbnn.export.verify(model, "model.rbnn", x)   # integer-exact per binary layer
"""

from __future__ import annotations

from .exporter import ExportError, export
from .onnx_export import export_onnx
from .size import size_report
from .verifier import verify

__all__ = ["ExportError", "export", "export_onnx", "size_report", "verify"]
