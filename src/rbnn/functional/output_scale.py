"""RBNN's learned per-channel output scale lambda: applied to the weight, differentiated at the output.

``conv(x, lambda * b) == lambda * conv(x, b)``, and scaling the (small) weight rather than the (large) output
saves a forward pass and two backward passes over the activations. But autograd would then compute
``dL/dlambda_c = sum_j b_j * dL/dW_j``: a sum of large per-weight gradients that nearly cancel (BatchNorm follows
every conv, so dL/dlambda is ~1e-3 of the other gradients), which in float32 is ~70x noisier than the reference's
``sum(dL/dy_c * conv(x, b)_c)`` over the output. So lambda reaches the weight detached (``weight_side``), and its
gradient is taken from the output (``output_side``): ``sum(dL/dy_c * y_c) / lambda_c``, the reference's formula,
for one product-and-sum over the output in the backward. Channels whose |lambda| is too small to divide by
(exactly 0, say) keep the weight-side gradient, which is exact there.

The layer's output is returned as a view made inside a custom Function: modifying it in place while training
is an error (torch says so), as it would silently corrupt the saved output.
"""

from __future__ import annotations

import torch


def _routed(scale: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and scale.requires_grad


def _too_small(scale: torch.Tensor) -> torch.Tensor:
    # below sqrt(tiny) the output lambda * conv(x, b) may underflow and y / lambda lose its digits
    return scale.abs() < torch.finfo(scale.dtype).tiny ** 0.5


def weight_side(scale: torch.Tensor) -> torch.Tensor:
    """lambda as the weight (and bias) should be multiplied by: detached where ``output_side`` supplies its
    gradient, live on channels too small for that. Unchanged when no gradient is being recorded."""
    if not _routed(scale):
        return scale
    return torch.where(_too_small(scale), scale, scale.detach())


def output_side(y: torch.Tensor, scale: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
    """``y`` (the output of a layer whose weight was scaled by ``weight_side(scale)``) unchanged, with lambda's
    gradient ``sum(dL/dy * y) / lambda`` per channel along ``channel_dim`` added in the backward."""
    if not _routed(scale):
        return y
    return _OutputScaleGrad.apply(y, scale, channel_dim)


class _OutputScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y: torch.Tensor, scale: torch.Tensor, channel_dim: int) -> torch.Tensor:
        ctx.save_for_backward(y, scale)  # y is saved by the BatchNorm that follows too: no extra memory
        ctx.channel_dim = channel_dim % y.dim()
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        y, scale = ctx.saved_tensors
        grad_scale = None
        if ctx.needs_input_grad[1]:
            dims = [d for d in range(y.dim()) if d != ctx.channel_dim]
            dot = (grad * y).sum(dims) if dims else grad * y
            small = _too_small(scale)
            grad_scale = torch.where(small, 0.0, dot.to(scale.dtype) / torch.where(small, 1.0, scale))
        return grad, grad_scale, None
