"""Training diagnostics: angles, quantization error, flip rates, oscillation, plots."""

from .weights import cos_to_sign, flip_rate, quantization_error

__all__ = ["cos_to_sign", "flip_rate", "quantization_error"]
