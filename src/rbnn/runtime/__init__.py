"""The torch-free runtime of packed 1-bit models: NumPy + numba only, installable without torch.

    packed = rbnn.runtime.load("model.rbnn")   # validates the whole file and graph
    logits = packed.predict(x)                 # x: NCHW float32 ndarray -> float32 logits

Modules: :mod:`.format` (the ``.rbnn`` file), :mod:`.packing` (bit packing), :mod:`.shapes` (shape
propagation that makes a loaded graph safe to run), :mod:`.reference` (the NumPy reference engine, the oracle),
:mod:`.kernels`, :mod:`.plan` and :mod:`.threads` (the numba fast engine: kernels, the fused execution plan,
the thread policy), :mod:`.model` (``load`` and ``PackedModel``), :mod:`.size` (size report of a file).
Nothing here imports torch; the exporter is :mod:`rbnn.export`.
"""

from __future__ import annotations

from .format import FORMAT_VERSION, PackedFormatError
from .model import BACKENDS, PackedInputError, PackedModel, load
from .size import size_report

__all__ = [
    "BACKENDS",
    "FORMAT_VERSION",
    "PackedFormatError",
    "PackedInputError",
    "PackedModel",
    "load",
    "size_report",
]
