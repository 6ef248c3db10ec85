"""True 1-bit deployment: export a binary model to a packed ``.rbnn`` file and run it without torch.

    info = rbnn.deploy.export(model, "model.rbnn", input_shape=(3, 32, 32))   # needs torch
    packed = rbnn.deploy.load("model.rbnn")                                   # NumPy + numba only
    logits = packed.predict(x)                                                # x: NCHW float32 ndarray
    report = rbnn.deploy.verify(model, packed, x)                             # integer-exact check

The runtime (``load``, ``PackedModel``, ``size_report`` of a path) never imports torch; ``export``,
``export_onnx``, ``verify`` and ``size_report`` of a module import it lazily.
"""

from __future__ import annotations

from .format import FORMAT_VERSION, PackedFormatError
from .runtime import BACKENDS, PackedInputError, PackedModel, load
from .size import size_report

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


def export(model, path, *, input_shape=None) -> dict:
    """Export ``model`` to ``path`` (see :func:`rbnn.deploy.exporter.export`)."""
    from .exporter import export as _export

    return _export(model, path, input_shape=input_shape)


def export_onnx(model, path, input_shape, **kw) -> str:
    """Export ``model`` to ONNX with training-exact sign semantics (see :mod:`rbnn.deploy.onnx_export`)."""
    from .onnx_export import export_onnx as _export_onnx

    return _export_onnx(model, path, input_shape, **kw)


def verify(model, path_or_packed, x, **kw) -> dict:
    """Check a packed model against the torch model (see :func:`rbnn.deploy.verifier.verify`)."""
    from .verifier import verify as _verify

    return _verify(model, path_or_packed, x, **kw)
