"""What binarization does to the weights: angles, quantization error, flips (RBNN paper §4.3, Eq. 1-2).

All functions take a weight tensor shaped (C_out, ...) and work per output filter.
"""

from __future__ import annotations

import torch


def _flat(w: torch.Tensor) -> torch.Tensor:
    return w.detach().reshape(w.shape[0], -1).double()


def _sign(w: torch.Tensor) -> torch.Tensor:
    return torch.where(w >= 0, torch.ones_like(w), -torch.ones_like(w))


def cos_to_sign(w: torch.Tensor) -> torch.Tensor:
    """cos angle(w_c, sign(w_c)) per filter = ||w_c||_1 / (sqrt(n) ||w_c||_2)."""
    f = _flat(w)
    return f.abs().sum(1) / (f.shape[1] ** 0.5 * f.norm(dim=1).clamp_min(1e-30))


def quantization_error(w: torch.Tensor) -> torch.Tensor:
    """min_lambda ||lambda sign(w_c) - w_c||^2 = ||w_c||^2 sin^2(angle), per filter, divided by n."""
    f = _flat(w)
    cos = cos_to_sign(w)
    return f.pow(2).sum(1) * (1 - cos**2) / f.shape[1]


def flip_rate(before: torch.Tensor, after: torch.Tensor) -> float:
    """Fraction of entries whose sign differs between two tensors of the same shape."""
    return float((_sign(before.detach()) != _sign(after.detach())).double().mean())
