"""Epoch schedules of the surrogate gradients' sharpness t and gain k (pure functions of progress)."""

from __future__ import annotations

import math


def log_linear_t(epoch: int, total_epochs: int, t_min: float, t_max: float) -> float:
    """t(e) = 10^(log10 t_min + (log10 t_max - log10 t_min) * e / E), as in IR-Net's and RBNN's ``cpt_tk``."""
    if total_epochs <= 0:
        raise ValueError("total_epochs must be positive")
    lo, hi = math.log10(t_min), math.log10(t_max)
    return 10.0 ** (lo + (hi - lo) * epoch / total_epochs)


def tk_schedule(epoch: int, total_epochs: int, t_min: float, t_max: float) -> tuple[float, float]:
    """(t, k) with k = max(1/t, 1)."""
    t = log_linear_t(epoch, total_epochs, t_min, t_max)
    return t, max(1.0 / t, 1.0)
