"""RBNN's activation path, sign(standardize_samples(a)), as one autograd node.

Same forward values and the same gradients as composing ``standardize_samples`` and ``binarize`` (the tests
check both in float64), but with far fewer passes over the activation tensor: the positive std never changes
a sign, so the forward is sign(a - mean) and only the backward needs a-hat = (a - mean) / s. On this CPU the
composed version cost RBNN ~35 % over XNOR-Net per training step; most of it was torch's generic ``std``
and its backward, which this replaces with a mean, one dot product per sample and in-place updates.

Backward, with c = a - mean, s = std + eps, n elements per sample and g_hat = g * F'(c / s):

    dL/da = (g_hat - mean(g_hat)) / s  -  c * sum(g_hat * c) / (s^2 * std * (n - 1))

(the second term is the gradient through the unbiased std; it is 0 where std = 0, which only happens for a
constant map, where c = 0 too — the composed version gives NaN there even with eps > 0).
"""

from __future__ import annotations

import math

import torch

from .surrogates import ESTIMATORS, surrogate_grad

SQRT2 = math.sqrt(2.0)


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape[0], *([1] * (like.dim() - 1)))


def _channels_last(t: torch.Tensor) -> bool:
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _flat(t: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
    """(N, -1) view of ``t`` without a copy: a channels_last tensor is flattened in its memory order (NHWC),
    which per-sample reductions do not see; ``reshape(N, -1)`` would copy it into NCHW order. ``like``
    decides the order, so two tensors flattened like the same one line up element for element."""
    if _channels_last(t if like is None else like):
        t = t.permute(0, 2, 3, 1)
    return t.reshape(t.shape[0], -1)


def _unflat(flat: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_flat`: ``like``'s shape and memory format."""
    if _channels_last(like):
        n, c, h, w = like.shape
        return flat.reshape(n, h, w, c).permute(0, 3, 1, 2)
    return flat.reshape(like.shape)


class StandardizedSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, estimator: str, zero: int, eps: float, t, k):
        n = a[0].numel()
        flat = _flat(a)
        mean = flat.mean(dim=1, keepdim=True)
        # a - (+0.0) keeps a = -0.0 as -0.0, which copysign would send to -1; subtracting -0.0 instead gives
        # +0.0 for both zeros and changes nothing else. (No host sync: this runs on every layer every step.)
        mean = torch.where(mean == 0, torch.full_like(mean, -0.0), mean)
        c = flat - mean
        std = torch.linalg.vector_norm(c, dim=1) / math.sqrt(n - 1)  # unbiased, one fast reduction
        s = std + eps if eps else std
        c = _unflat(c, a)
        # sign(c / s) == sign(c) for s > 0. For a constant map with eps = 0 the reference computes sign(0/0):
        # torch.sign(nan) = 0 = sign(c) in the faithful sign(0)=0 mode, so no special case is needed there
        # (sign(0)=+1 together with eps = 0 is not a shipped recipe; it gives +1 here).
        if zero == 1:
            out = torch.copysign(torch.ones((), dtype=c.dtype, device=c.device), c)
        else:
            out = torch.sign(c)
        ctx.save_for_backward(c, std, s, t if torch.is_tensor(t) else torch.tensor(t),
                              k if torch.is_tensor(k) else torch.tensor(k))
        ctx.estimator, ctx.n = estimator, n
        return out

    @staticmethod
    def backward(ctx, g):
        c, std, s, t, k = ctx.saved_tensors
        if ctx.estimator == "rbnn":
            # k * max(0, sqrt2 t - t^2 |c| / s) = beta * min(0, |c| - sqrt2 s / t) with beta = -k t^2 / s:
            # four in-place passes; the per-sample beta is applied to the reductions and the final scale
            u = c.abs().sub_(_per_sample(SQRT2 * s / t, c)).clamp_max_(0).mul_(g)
            beta = -k * t * t / s
        else:
            u = surrogate_grad(c / _per_sample(s, c), ctx.estimator, t, k).mul_(g)
            beta = torch.ones_like(s)
        u_flat, c_flat = _flat(u, c), _flat(c)
        gh_mean = beta * u_flat.mean(dim=1)
        dot = beta * torch.linalg.vecdot(u_flat, c_flat, dim=1)
        denom = s * s * std * (ctx.n - 1)
        coef = torch.where(std > 0, dot / torch.where(std > 0, denom, torch.ones_like(denom)), torch.zeros_like(dot))
        # grad = (beta u - mean(gh)) / s - c * coef
        grad = u_flat.mul_((beta / s).unsqueeze(1)).addcmul_(c_flat, coef.unsqueeze(1), value=-1.0)
        grad.sub_((gh_mean / s).unsqueeze(1))
        return _unflat(grad, c), None, None, None, None, None


def standardized_sign(a: torch.Tensor, estimator: str, zero: int = 1, eps: float = 0.0,
                      t: float | torch.Tensor = 1.0, k: float | torch.Tensor = 1.0) -> torch.Tensor:
    """sign((a - mean) / (std + eps)) per sample, with ``estimator``'s surrogate backward through the
    standardization (unbiased std, as the RBNN reference code)."""
    if zero not in (0, 1):
        raise ValueError(f"zero must be 0 or 1, got {zero!r}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; expected one of {', '.join(ESTIMATORS)}")
    return StandardizedSign.apply(a, estimator, zero, eps, t, k)
