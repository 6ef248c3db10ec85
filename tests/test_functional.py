"""Sign conventions, surrogate backwards against closed forms, scales against hand-computed values."""

import math

import pytest
import torch

from rbnn.functional import binarize, libra_pb_scale, mean_abs_scale, sign, standardize_filters, tk_schedule
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
