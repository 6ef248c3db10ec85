"""The surrogate gradients' closed forms, written in place for speed, equal the plain formulas bit for bit
(so a training run is the same run before and after), and the backward of every estimator is g * F'(x)."""

import math

import pytest
import torch

from rbnn.functional import surrogates as S

SQRT2 = math.sqrt(2.0)


def _inputs(dtype):
    torch.manual_seed(0)
    x = torch.randn(20000, dtype=dtype) * 3
    x[:50], x[50:100], x[100:150], x[150:200] = 0.0, -0.0, 1.0, -1.0
    return x


PLAIN = {
    "approx": lambda x, t, k: torch.clamp(2.0 - 2.0 * x.abs(), min=0.0),
    "ede": lambda x, t, k: k * t * (1.0 - torch.tanh(t * x) ** 2),
    "rbnn": lambda x, t, k: k * torch.clamp(SQRT2 * t - t * t * x.abs(), min=0.0),
    "clipped_ste": lambda x, t, k: (x.abs() <= 1).to(x.dtype),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tk", [(0.37, 2.7), (1.0, 1.0), (10.0, 1.0), (1e-2, 100.0)])
@pytest.mark.parametrize("name", list(PLAIN))
def test_closed_form_equals_the_plain_formula_bit_for_bit(name, tk, dtype):
    x = _inputs(dtype)
    for t, k in (tk, tuple(torch.tensor(v, dtype=dtype) for v in tk)):
        got = S.ESTIMATORS[name].grad(x, t, k)
        want = PLAIN[name](x, t, k)
        assert got.dtype == want.dtype
        assert torch.equal(got, want) and torch.equal(got.signbit(), want.signbit())


@pytest.mark.parametrize("name", list(PLAIN))
def test_backward_is_g_times_the_closed_form(name):
    x = _inputs(torch.float64).requires_grad_()
    g = torch.randn_like(x)
    t, k = torch.tensor(0.37, dtype=torch.float64), torch.tensor(2.7, dtype=torch.float64)
    S.binarize(x, name, 1, t, k).backward(g)
    assert torch.equal(x.grad, g * PLAIN[name](x.detach(), t, k))
