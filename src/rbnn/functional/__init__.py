"""Pure tensor math: sign conventions, surrogate gradients, weight transforms and schedules."""

from .schedules import log_linear_t, tk_schedule
from .sign import sign
from .surrogates import ESTIMATORS, Estimator, binarize, register_estimator, surrogate_grad
from .transforms import libra_pb_scale, mean_abs_scale, standardize_filters, standardize_samples

__all__ = [
    "ESTIMATORS", "Estimator", "binarize", "libra_pb_scale", "log_linear_t", "mean_abs_scale", "register_estimator",
    "sign", "standardize_filters", "standardize_samples", "surrogate_grad", "tk_schedule",
]
