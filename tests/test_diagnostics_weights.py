"""Angles, quantization error and flip rates of rbnn.diagnostics.weights against closed forms."""

import math

import pytest
import torch

from rbnn.diagnostics.weights import cos_to_sign, flip_rate, quantization_error


def test_cos_of_a_binary_vertex_is_one_and_of_an_axis_is_one_over_sqrt_n():
    w = torch.tensor([[1.0, -1.0, 1.0, 1.0], [0.0, 0.0, 3.0, 0.0]])
    assert torch.allclose(cos_to_sign(w), torch.tensor([1.0, 0.5], dtype=torch.float64))


def test_cos_matches_the_angle_between_w_and_sign_w():
    torch.manual_seed(0)
    w = torch.randn(5, 3, 3, 3)
    f = w.reshape(5, -1).double()
    s = torch.where(f >= 0, 1.0, -1.0).double()
    expected = (f * s).sum(1) / (f.norm(dim=1) * s.norm(dim=1))
    assert torch.allclose(cos_to_sign(w), expected, atol=1e-12)
    # Gaussian weights: E cos = sqrt(2/pi) for large n (the RBNN paper's angular bias)
    assert cos_to_sign(torch.randn(4, 100_000)).mean().item() == pytest.approx(math.sqrt(2 / math.pi), abs=5e-3)


def test_quantization_error_is_the_minimum_over_the_scale():
    torch.manual_seed(1)
    w = torch.randn(3, 16)
    s = torch.where(w >= 0, 1.0, -1.0)
    lambdas = torch.linspace(0, 3, 30001)
    brute = torch.stack([((lam * s - w) ** 2).mean(1) for lam in lambdas]).min(0).values
    assert torch.allclose(quantization_error(w).float(), brute, atol=1e-6)
    assert torch.allclose(quantization_error(torch.ones(2, 8)), torch.zeros(2, dtype=torch.float64))


def test_flip_rate_counts_sign_changes_with_plus_one_at_zero():
    a = torch.tensor([1.0, -1.0, 0.0, 2.0])
    b = torch.tensor([1.0, 1.0, -0.5, 0.0])  # flips at index 1 and 2; 0 counts as +1 (index 3 unchanged)
    assert flip_rate(a, b) == 0.5
    assert flip_rate(a, a) == 0.0
