"""Weight and activation transforms applied before the sign."""

from __future__ import annotations

import torch


def standardize_filters(w: torch.Tensor, eps: float = 0.0, unbiased: bool = True) -> torch.Tensor:
    """Per-output-filter (w - mean) / std over all but dim 0.

    The reference codes (IR-Net, RBNN) use the unbiased std and no eps; gradients flow through mean and std.
    ``eps`` > 0 guards against constant filters.
    """
    dims = tuple(range(1, w.dim()))
    mean = w.mean(dim=dims, keepdim=True)
    centred = w - mean
    std = centred.std(dim=dims, keepdim=True, unbiased=unbiased)
    return centred / (std + eps) if eps else centred / std


def standardize_samples(a: torch.Tensor, eps: float = 0.0, unbiased: bool = True) -> torch.Tensor:
    """Per-sample (a - mean) / std over all but the batch dim (RBNN's activation standardization, code only)."""
    return standardize_filters(a, eps=eps, unbiased=unbiased)


def mean_abs_scale(w: torch.Tensor) -> torch.Tensor:
    """XNOR-Net alpha = ||W_c||_1 / n per output filter, shaped to broadcast against ``w``."""
    dims = tuple(range(1, w.dim()))
    return w.abs().mean(dim=dims, keepdim=True)


def libra_pb_scale(w_hat: torch.Tensor) -> torch.Tensor:
    """IR-Net's power-of-two scale 2^round(log2 mean|w_hat_c|), detached (a bit shift at inference)."""
    with torch.no_grad():
        return torch.pow(2.0, torch.round(torch.log2(mean_abs_scale(w_hat))))
