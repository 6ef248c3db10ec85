"""RBNN bi-rotation: factorization table, Kronecker identity, monotone objective, orthogonality."""

import math

import pytest
import torch

from rbnn.rotation import (
    _sign,
    factorize,
    haar_orthogonal,
    optimize_rotation,
    orthogonality_error,
    r1_step,
    r2_step,
    rotate,
    rotation_objective,
)


@pytest.mark.parametrize("n,expected", [(144, (12, 12)), (288, (16, 18)), (576, (24, 24)), (1152, (32, 36)),
                                        (2304, (48, 48)), (4608, (64, 72)), (64, (8, 8)), (128, (8, 16)),
                                        (256, (16, 16)), (13, (1, 13))])
def test_factorization_table(n, expected):
    assert factorize(n) == expected


def test_kronecker_identity_row_major():
    g = torch.Generator().manual_seed(0)
    n1, n2 = 4, 6
    X = torch.randn(n1, n2, generator=g, dtype=torch.float64)
    R1, R2 = haar_orthogonal(n1, g, torch.float64), haar_orthogonal(n2, g, torch.float64)
    lhs = torch.kron(R1, R2).t() @ X.reshape(-1)  # (R1 (x) R2)^T vec(X), row-major vec
    rhs = rotate(X[None], R1, R2).reshape(-1)
    assert torch.allclose(lhs, rhs, atol=1e-12)


def test_haar_is_orthogonal():
    R = haar_orthogonal(24, torch.Generator().manual_seed(1))
    assert orthogonality_error(R) < 1e-5


def test_objective_nondecreasing_at_every_step_and_orthogonal():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 24, 24, generator=g, dtype=torch.float64)
    R1, R2 = haar_orthogonal(24, g, torch.float64), haar_orthogonal(24, g, torch.float64)
    values = [float(rotation_objective(X, R1, R2))]
    for _ in range(5):
        B = _sign(rotate(X, R1, R2))
        # with B fixed, the objective tr(B^T R1^T X R2) after each Procrustes step is >= before
        def fixed_b(a, c, B=B):
            return float((B * rotate(X, a, c)).sum())

        before = fixed_b(R1, R2)
        R1 = r1_step(X, B, R2)
        mid = fixed_b(R1, R2)
        R2 = r2_step(X, B, R1)
        after = fixed_b(R1, R2)
        assert before - 1e-9 <= mid <= after + 1e-9
        values.append(float(rotation_objective(X, R1, R2)))  # B-step of the next cycle can only raise it
    assert all(b >= a - 1e-9 for a, b in zip(values, values[1:]))
    assert values[-1] > values[0]


def test_optimize_rotation_float32_orthogonality_and_angle_gain():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 24, 24, generator=g)
    X = (X - X.mean((1, 2), keepdim=True)) / X.std((1, 2), keepdim=True)
    R1, R2 = haar_orthogonal(24, g), haar_orthogonal(24, g)

    def mean_cos(a, c):
        Y = rotate(X, a, c).reshape(64, -1)
        return float((Y.abs().sum(1) / (math.sqrt(Y.shape[1]) * Y.norm(dim=1))).mean())

    c0 = mean_cos(R1, R2)
    R1n, R2n = optimize_rotation(X, R1, R2, cycles=3)
    assert R1n.dtype == torch.float32
    assert orthogonality_error(R1n) < 1e-5 and orthogonality_error(R2n) < 1e-5
    # spec §1.4 (verified): ~0.798 for random R, ~0.811 after 3 cycles
    assert 0.79 < c0 < 0.806
    assert 0.805 < mean_cos(R1n, R2n) < 0.83


def test_optimize_rotation_rejects_wrong_shape():
    with pytest.raises(ValueError):
        optimize_rotation(torch.randn(3, 4, 5), torch.eye(4), torch.eye(4))


def test_optimize_rotation_equals_the_plain_b_r1_r2_steps():
    # optimize_rotation shares R1^T X between steps for speed; it must still be exactly the B, R1, R2 steps
    g = torch.Generator().manual_seed(5)
    X = torch.randn(12, 6, 9, dtype=torch.float64, generator=g)
    R1, R2 = haar_orthogonal(6, g, torch.float64), haar_orthogonal(9, g, torch.float64)
    A, C = R1, R2
    for _ in range(3):
        B = torch.where(rotate(X, A, C) >= 0, 1.0, -1.0).to(X.dtype)
        A = r1_step(X, B, C)
        C = r2_step(X, B, A)
    A2, C2 = optimize_rotation(X, R1, R2, cycles=3, compute_dtype=torch.float64)
    torch.testing.assert_close(A2, A, rtol=0, atol=1e-10)
    torch.testing.assert_close(C2, C, rtol=0, atol=1e-10)
