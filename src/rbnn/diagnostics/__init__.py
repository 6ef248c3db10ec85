"""Training diagnostics: angles, quantization error, flip rates, oscillation, plots."""

from .weights import angle_degrees, cos_to_sign, flip_rate, quantization_error

__all__ = ["angle_degrees", "cos_to_sign", "flip_rate", "quantization_error"]
