"""True 1-bit deployment in one import (needs torch): the exporter of :mod:`rbnn.export` and the runtime of
:mod:`rbnn.runtime` under their former names.

    info = rbnn.deploy.export(model, "model.rbnn", input_shape=(3, 32, 32))
    packed = rbnn.deploy.load("model.rbnn")
    logits = packed.predict(x)                                  # x: NCHW float32 ndarray
    report = rbnn.deploy.verify(model, packed, x)               # integer-exact check

On a machine without torch import the runtime alone: ``from rbnn.runtime import load``.
"""

from __future__ import annotations

from ..export import export, export_onnx, size_report, verify
from ..runtime import BACKENDS, FORMAT_VERSION, PackedFormatError, PackedInputError, PackedModel, load

__all__ = [
    "BACKENDS",
    "FORMAT_VERSION",
    "PackedFormatError",
    "PackedInputError",
    "PackedModel",
    "export",
    "export_onnx",
    "load",
    "size_report",
    "verify",
]
