"""Sign with surrogate gradients, as autograd Functions.

Every estimator's forward is the exact sign (with the chosen sign(0) convention); only the backward differs.
Each ``*_grad`` function is the closed-form derivative used by the backward, exposed so tests and plots can
compare against it.

- ``ste``:          identity                                   (Bengio et al. 2013)
- ``clipped_ste``:  1{|x| <= 1}                                 (BNN, XNOR-Net)
- ``approx``:       Bi-Real ApproxSign/PPF, 2 - 2|x| on |x| < 1   (Bi-Real, ReActNet, ReBNN activations)
- ``ede``:          IR-Net EDE, k * t * (1 - tanh^2(t x))
- ``rbnn``:         RBNN training-aware, k * max(0, sqrt2 t - t^2 |x|)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .sign import sign

SQRT2 = math.sqrt(2.0)


def ste_grad(x: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(x)


# The closed forms below are written as one fresh tensor updated in place: the same operations in the same
# order as the plain expressions in the comments (bit for bit, tested), without an allocation per operation,
# which matters because every binary layer runs one of them over its whole input tensor in every backward.


def clipped_ste_grad(x: torch.Tensor) -> torch.Tensor:
    return (x.abs() <= 1).to(x.dtype)


def approx_sign_grad(x: torch.Tensor) -> torch.Tensor:
    # clamp(2 - 2|x|, min=0)
    return x.abs().mul_(2.0).neg_().add_(2.0).clamp_(min=0.0)


def ede_grad(x: torch.Tensor, t: float | torch.Tensor, k: float | torch.Tensor) -> torch.Tensor:
    # k * t * (1 - tanh(t x)^2)
    y = torch.mul(x, t).tanh_()
    return y.mul_(y).neg_().add_(1.0).mul_(k * t)


def rbnn_grad(x: torch.Tensor, t: float | torch.Tensor, k: float | torch.Tensor) -> torch.Tensor:
    # k * clamp(sqrt2 t - t^2 |x|, min=0)
    return x.abs().mul_(t * t).neg_().add_(SQRT2 * t).clamp_(min=0.0).mul_(k)


def rbnn_forward(x: torch.Tensor, t: float, k: float) -> torch.Tensor:
    """RBNN's F(x) of paper Eq. 12 (for plots)."""
    inside = x.abs() < SQRT2 / t
    return k * torch.where(inside, SQRT2 * t * x - torch.sign(x) * (t * x) ** 2 / 2, torch.sign(x))


class _SignBase(torch.autograd.Function):
    @staticmethod
    def setup_context(ctx, inputs, output):  # noqa: D401 - torch protocol
        ctx.save_for_backward(inputs[0])
        ctx.extra = inputs[1:]


class SignSTE(_SignBase):
    @staticmethod
    def forward(x, zero):
        return sign(x, zero)

    @staticmethod
    def backward(ctx, g):
        return g, None


class SignClippedSTE(_SignBase):
    @staticmethod
    def forward(x, zero):
        return sign(x, zero)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return clipped_ste_grad(x).mul_(g), None


class SignApprox(_SignBase):
    @staticmethod
    def forward(x, zero):
        return sign(x, zero)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return approx_sign_grad(x).mul_(g), None


class SignEDE(_SignBase):
    @staticmethod
    def forward(x, zero, t, k):
        return sign(x, zero)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        _, t, k = ctx.extra
        return ede_grad(x, t, k).mul_(g), None, None, None


class SignRBNN(_SignBase):
    @staticmethod
    def forward(x, zero, t, k):
        return sign(x, zero)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        _, t, k = ctx.extra
        return rbnn_grad(x, t, k).mul_(g), None, None, None


@dataclass(frozen=True)
class Estimator:
    """A sign estimator: the exact sign in the forward (with the sign(0) convention), a surrogate in the backward.

    ``function`` is the autograd Function (``apply(x, zero)``, or ``apply(x, zero, t, k)`` when ``scheduled``);
    ``grad(x, t, k)`` is the closed-form derivative its backward multiplies by (tests and plots compare with it).
    """

    name: str
    function: type[torch.autograd.Function]
    grad: Callable[[torch.Tensor, float | torch.Tensor, float | torch.Tensor], torch.Tensor]
    scheduled: bool = False  # uses the schedule values t, k

    def __call__(self, x: torch.Tensor, zero: int = 1, t: float | torch.Tensor = 1.0,
                 k: float | torch.Tensor = 1.0) -> torch.Tensor:
        if self.scheduled:
            return self.function.apply(x, zero, t, k)
        return self.function.apply(x, zero)


ESTIMATORS: dict[str, Estimator] = {}


def register_estimator(estimator: Estimator) -> Estimator:
    """Make ``estimator`` available by name to recipes (``weight_estimator`` / ``act_estimator``)."""
    if estimator.name in ESTIMATORS:
        raise ValueError(f"estimator {estimator.name!r} already registered")
    ESTIMATORS[estimator.name] = estimator
    return estimator


register_estimator(Estimator("ste", SignSTE, lambda x, t, k: ste_grad(x)))
register_estimator(Estimator("clipped_ste", SignClippedSTE, lambda x, t, k: clipped_ste_grad(x)))
register_estimator(Estimator("approx", SignApprox, lambda x, t, k: approx_sign_grad(x)))
register_estimator(Estimator("ede", SignEDE, ede_grad, scheduled=True))
register_estimator(Estimator("rbnn", SignRBNN, rbnn_grad, scheduled=True))


def get_estimator(name: str) -> Estimator:
    est = ESTIMATORS.get(name)
    if est is None:
        raise ValueError(f"unknown estimator {name!r}; expected one of {', '.join(ESTIMATORS)}")
    return est


def binarize(x: torch.Tensor, estimator: str, zero: int = 1, t: float = 1.0, k: float = 1.0) -> torch.Tensor:
    """Exact sign of ``x`` in the forward, ``estimator``'s surrogate in the backward.

    ``t`` and ``k`` are floats or 0-d tensors (schedule values held as buffers, so no host sync is needed);
    only ``ede`` and ``rbnn`` use them.
    """
    return get_estimator(estimator)(x, zero, t, k)


def surrogate_grad(x: torch.Tensor, estimator: str, t: float = 1.0, k: float = 1.0) -> torch.Tensor:
    """Closed-form derivative of ``estimator`` at ``x`` (what the backward multiplies by)."""
    return get_estimator(estimator).grad(x, t, k)
