"""RBNN bi-rotation (Lin et al., NeurIPS 2020, spec §1.2-1.4).

A layer's standardized weights X (C_out filters, each reshaped row-major to n1 x n2) share one rotation
R = R1 (x) R2, applied as R1^T X_c R2. ``optimize_rotation`` runs the alternating B / R1 / R2 steps:

    B_c = sign(R1^T X_c R2)
    D1  = sum_c B_c R2^T X_c^T,  D1 = U1 S1 V1^T  ->  R1 = V1 U1^T
    D2  = sum_c X_c^T R1 B_c,    D2 = U2 S2 V2^T  ->  R2 = U2 V2^T

Only ``torch`` is imported here. No n x n SVD is ever formed: the SVDs are n1 x n1 and n2 x n2.
"""

from __future__ import annotations

import math

import torch


def factorize(n: int) -> tuple[int, int]:
    """n = n1 * n2 with n1 the largest divisor of n that is <= floor(sqrt(n)) (the reference rule)."""
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    for n1 in range(math.isqrt(n), 0, -1):
        if n % n1 == 0:
            return n1, n // n1
    raise AssertionError("unreachable")


def haar_orthogonal(n: int, generator: torch.Generator | None = None, dtype=torch.float32) -> torch.Tensor:
    """A Haar-random n x n orthogonal matrix (QR of a Gaussian with the sign fix; det may be -1, like scipy's)."""
    a = torch.randn(n, n, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    # QR's q is column-major; collectives (NCCL's broadcast of R1/R2) need row-major contiguous tensors
    return q.to(dtype).contiguous()


def rotate(X: torch.Tensor, R1: torch.Tensor, R2: torch.Tensor) -> torch.Tensor:
    """R1^T X_c R2 for every filter c of X (shape (C, n1, n2))."""
    return torch.matmul(torch.matmul(R1.t(), X), R2)


def _sign(x: torch.Tensor) -> torch.Tensor:
    # +1 at 0: the B-step needs a vertex of the hypercube; a 0 entry would not be one. copysign of x + 0.0
    # (which turns -0.0 into +0.0) is far faster than torch.where on CPU.
    return torch.copysign(torch.ones((), dtype=x.dtype, device=x.device), x + 0.0)


def rotation_objective(X: torch.Tensor, R1: torch.Tensor, R2: torch.Tensor) -> torch.Tensor:
    """sum_c tr(sign(R1^T X_c R2)^T R1^T X_c R2) = sum of |entries| of the rotated weights (Eq. 6)."""
    Y = rotate(X, R1, R2)
    return (_sign(Y) * Y).sum()


def _polar(D: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # The SVD is tiny (n1 x n1 or n2 x n2): do it in float64 so the polar factor is orthogonal to ~1e-15, and
    # on the CPU: on a GPU it would be a cuSOLVER call that syncs the host anyway and is slow at this size.
    # Non-finite entries (weights that diverged; the training loop reports that at its next check) are
    # zeroed so the update yields an orthogonal matrix instead of an exception from inside the SVD.
    Dc = D.detach().to("cpu", torch.float64)
    Dc = torch.where(torch.isfinite(Dc), Dc, torch.zeros((), dtype=Dc.dtype))
    U, _, Vh = torch.linalg.svd(Dc)
    return U.to(D.device, D.dtype), Vh.transpose(-2, -1).to(D.device, D.dtype)


def r1_step(X: torch.Tensor, B: torch.Tensor, R2: torch.Tensor) -> torch.Tensor:
    """argmax_{R1 orthogonal} sum_c tr(B_c^T R1^T X_c R2): D1 = sum_c B_c R2^T X_c^T = U1 S1 V1^T, R1 = V1 U1^T."""
    n1 = X.shape[1]
    Y = torch.matmul(B, R2.t())  # B_c R2^T, (C, n1, n2)
    # sum_c Y_c X_c^T as one (n1, C*n2) x (C*n2, n1) product
    D1 = Y.transpose(0, 1).reshape(n1, -1) @ X.transpose(0, 1).reshape(n1, -1).t()
    U1, V1 = _polar(D1)
    return V1 @ U1.t()


def r2_step(X: torch.Tensor, B: torch.Tensor, R1: torch.Tensor) -> torch.Tensor:
    """argmax_{R2 orthogonal} sum_c tr(B_c^T R1^T X_c R2): D2 = sum_c X_c^T R1 B_c = U2 S2 V2^T, R2 = U2 V2^T."""
    n2 = X.shape[2]
    Z = torch.matmul(R1, B)  # R1 B_c, (C, n1, n2)
    D2 = X.reshape(-1, n2).t() @ Z.reshape(-1, n2)  # sum_c X_c^T Z_c
    U2, V2 = _polar(D2)
    return U2 @ V2.t()


@torch.no_grad()
def optimize_rotation(X: torch.Tensor, R1: torch.Tensor, R2: torch.Tensor, cycles: int = 3,
                      compute_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """``cycles`` rounds of the B-step, R1-step and R2-step, warm-started from (R1, R2).

    X: detached standardized weights viewed as (C_out, n1, n2). Returns new (R1, R2) in R1's dtype.
    The large products run in ``compute_dtype`` (float32 by default: they are memory-bound, and D1/D2 need no
    more precision); the small SVDs run in float64, so the result is orthogonal to ~1e-7 in float32.
    Each step can only increase ``rotation_objective`` (B-step: exact maximizer given R; R-steps:
    Procrustes maximizers given B).
    """
    if X.dim() != 3 or X.shape[1] != R1.shape[0] or X.shape[2] != R2.shape[0]:
        raise ValueError(f"X must be (C, {R1.shape[0]}, {R2.shape[0]}), got {tuple(X.shape)}")
    dtype = R1.dtype
    Xd, A, C = (t.detach().to(compute_dtype) for t in (X, R1, R2))
    n1, n2 = Xd.shape[1:]
    # The steps of r1_step / r2_step, arranged so a cycle needs five weight-sized products instead of six:
    # W = R1^T X is shared by the R2-step and the next cycle's B-step. The cost is compute-bound.
    W = torch.matmul(A.t(), Xd)  # R1^T X_c
    for _ in range(cycles):
        B = _sign(torch.matmul(W, C))  # B-step: sign(R1^T X_c R2)
        Y = torch.matmul(Xd, C)  # X_c R2
        D1 = B.transpose(0, 1).reshape(n1, -1) @ Y.transpose(0, 1).reshape(n1, -1).t()  # sum_c B_c R2^T X_c^T
        U1, V1 = _polar(D1)
        A = V1 @ U1.t()
        W = torch.matmul(A.t(), Xd)
        D2 = W.reshape(-1, n2).t() @ B.reshape(-1, n2)  # sum_c X_c^T R1 B_c
        U2, V2 = _polar(D2)
        C = U2 @ V2.t()
    return A.to(dtype), C.to(dtype)


def orthogonality_error(R: torch.Tensor) -> float:
    """max |R R^T - I|."""
    eye = torch.eye(R.shape[0], dtype=R.dtype, device=R.device)
    return float((R @ R.t() - eye).abs().max())
