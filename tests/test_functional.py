"""Sign conventions, surrogate backwards against closed forms, scales against hand-computed values."""

import math

import pytest
import torch

from rbnn.functional import (
    binarize,
    libra_pb_scale,
    mean_abs_scale,
    sign,
    standardize_filters,
    standardize_samples,
    tk_schedule,
)
from rbnn.functional.surrogates import rbnn_forward

X = torch.tensor([-2.0, -1.0, -0.5, -0.1, 0.0, 0.1, 0.5, 0.99, 1.0, 1.5, 3.0], dtype=torch.float64)


def test_sign_conventions():
    assert sign(X).tolist() == [-1, -1, -1, -1, 1, 1, 1, 1, 1, 1, 1]
    assert sign(X, zero=0).tolist() == [-1, -1, -1, -1, 0, 1, 1, 1, 1, 1, 1]
    with pytest.raises(ValueError):
        sign(X, zero=2)


def _grad(estimator, t=1.0, k=1.0):
    x = X.clone().requires_grad_(True)
    y = binarize(x, estimator, 1, t, k)
    assert set(y.tolist()) <= {-1.0, 1.0}
    g = torch.linspace(0.5, 1.5, len(X), dtype=torch.float64)
    y.backward(g)
    return x.grad / g


def test_ste_and_clipped_ste():
    assert _grad("ste").tolist() == [1.0] * len(X)
    assert _grad("clipped_ste").tolist() == [0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0]


def test_approx_sign_ppf():
    expected = [max(0.0, 2 - 2 * abs(v)) for v in X.tolist()]
    assert torch.allclose(_grad("approx"), torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("t", [0.01, 0.1, 1.0, 3.0, 10.0])
def test_ede(t):
    k = max(1 / t, 1)
    expected = torch.tensor([k * t * (1 - math.tanh(t * v) ** 2) for v in X.tolist()], dtype=torch.float64)
    assert torch.allclose(_grad("ede", t, k), expected)


@pytest.mark.parametrize("t", [0.01, 0.1, 1.0, 3.0, 10.0])
def test_rbnn_training_aware(t):
    k = max(1 / t, 1)
    expected = torch.tensor([k * max(0.0, math.sqrt(2) * t - t * t * abs(v)) for v in X.tolist()],
                            dtype=torch.float64)
    assert torch.allclose(_grad("rbnn", t, k), expected)


@pytest.mark.parametrize("t", [0.5, 1.0, 4.0])
def test_rbnn_backward_is_derivative_of_paper_F(t):
    # F'(x) of Eq. 12 by finite differences equals the backward (away from the kinks)
    x = torch.tensor([-0.3, -0.05, 0.07, 0.2], dtype=torch.float64) / t
    h = 1e-6
    fd = (rbnn_forward(x + h, t, 1.0) - rbnn_forward(x - h, t, 1.0)) / (2 * h)
    xr = x.clone().requires_grad_(True)
    binarize(xr, "rbnn", 1, t, 1.0).sum().backward()
    assert torch.allclose(xr.grad, fd, atol=1e-5)


def test_tensor_schedule_values_accepted():
    x = X.clone().requires_grad_(True)
    t, k = torch.tensor(2.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    binarize(x, "rbnn", 1, t, k).sum().backward()
    assert torch.allclose(x.grad, torch.clamp(math.sqrt(2) * 2 - 4 * X.abs(), min=0))


def test_schedule_values_match_spec():
    # spec §1.6: E=1000 -> t = 0.01, 0.0998, 0.995, 9.93 at e = 0, 333, 666, 999
    for e, t_ref in [(0, 0.01), (333, 0.0998), (666, 0.995), (999, 9.93)]:
        t, k = tk_schedule(e, 1000, 1e-2, 10.0)
        assert t == pytest.approx(t_ref, rel=2e-3)
        assert k == pytest.approx(max(1 / t, 1))


def test_xnor_scale_hand_computed():
    w = torch.tensor([[[[1.0, -2.0], [3.0, -4.0]]], [[[0.5, 0.5], [-0.5, 0.5]]]])
    assert mean_abs_scale(w).flatten().tolist() == [2.5, 0.5]


def test_libra_pb_scale_is_power_of_two():
    w = torch.tensor([[0.3, -0.3, 0.3, -0.3], [0.9, -0.9, 0.7, -0.7], [3.0, -3.0, 3.0, -3.0]])
    # mean|w| = 0.3 -> 2^round(log2 .3)=2^-2; 0.8 -> 2^0; 3 -> 2^2 (round(1.58)=2)
    assert libra_pb_scale(w).flatten().tolist() == [0.25, 1.0, 4.0]


def test_standardize_unbiased_no_eps():
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    s = standardize_filters(w)
    std = math.sqrt(((1.5**2) * 2 + (0.5**2) * 2) / 3)
    assert torch.allclose(s, (w - 2.5) / std)
    assert torch.isnan(standardize_filters(torch.ones(1, 4))).all()  # reference: 0/0
    assert torch.isfinite(standardize_filters(torch.ones(1, 4), eps=1e-5)).all()


# ---- fused activation path (RBNN's per-sample standardization + sign) -----------------------------------------
@pytest.mark.parametrize("estimator", ["ste", "clipped_ste", "approx", "ede", "rbnn"])
@pytest.mark.parametrize("zero,eps", [(0, 0.0), (1, 1e-12), (1, 1e-3)])
def test_standardized_sign_equals_composition(estimator, zero, eps):
    from rbnn.functional.standardized_sign import standardized_sign

    gen = torch.Generator().manual_seed(3)
    for t in (0.01, 0.7, 4.0):
        spread = torch.tensor([1, 5, 0.1, 2, 30.0], dtype=torch.float64).reshape(-1, 1, 1, 1)
        x = torch.randn(5, 3, 4, 6, dtype=torch.float64, generator=gen) * spread
        tt, kk = torch.tensor(t, dtype=torch.float64), torch.tensor(max(1 / t, 1.0), dtype=torch.float64)
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya = standardized_sign(a, estimator, zero, eps, tt, kk)
        yb = binarize(standardize_samples(b, eps=eps), estimator, zero, tt, kk)
        g = torch.randn(ya.shape, dtype=torch.float64, generator=gen)
        (ya * g).sum().backward()
        (yb * g).sum().backward()
        assert torch.equal(ya, yb)
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12)


def test_standardized_sign_constant_map_and_negative_zero():
    from rbnn.functional.standardized_sign import standardized_sign

    # a constant map with eps > 0: forward +1 (sign(0) = +1), gradient finite (0 through the std term)
    x = torch.full((2, 3, 4, 4), 0.5, requires_grad=True)
    y = standardized_sign(x, "rbnn", 1, 1e-5, torch.tensor(1.0), torch.tensor(1.0))
    assert torch.equal(y, torch.ones_like(y))
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    # -0.0 with a zero mean binarizes to +1 like every other zero
    z = torch.tensor([[-0.0, 0.0, 1.0, -1.0]])
    assert standardized_sign(z, "ste", 1, 1e-5).tolist() == [[1.0, 1.0, 1.0, -1.0]]
    # faithful eps = 0 on a constant map reproduces the reference 0/0 (torch.sign(nan) = 0 in the forward,
    # a NaN gradient in the backward)
    c = torch.ones(1, 4, requires_grad=True)
    y = standardized_sign(c, "rbnn", 0, 0.0)
    assert torch.equal(y, binarize(standardize_samples(torch.ones(1, 4)), "rbnn", 0))
    y.sum().backward()
    assert torch.isnan(c.grad).all()
