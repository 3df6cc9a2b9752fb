"""The Barlow Twins redundancy-reduction loss.

Zbontar, Jing, Misra, LeCun, Deny. "Barlow Twins: Self-Supervised Learning via
Redundancy Reduction", ICML 2021. https://arxiv.org/abs/2103.03230

Each embedding dimension is standardised over the batch (a BatchNorm without affine
parameters), then the (D, D) cross-correlation of the two views is pushed to identity:

    C_ij = sum_b za_bi zb_bj / N                (za, zb standardised over the batch b)
    loss = sum_i (1 - C_ii)^2  +  lambda * sum_i sum_{j != i} C_ij^2

The diagonal term makes the views agree (invariance); the off-diagonal term
decorrelates the dimensions, which is what rules out collapse. The paper sets
lambda = 5e-3 for D = 8192; about 1/D is a fair default for other sizes.

Example:
    >>> z_a, z_b = torch.randn(256, 512), torch.randn(256, 512)
    >>> loss = barlow_twins_loss(z_a, z_b, lambda_offdiag=5e-3)
"""

from __future__ import annotations

import torch


def _standardise(z: torch.Tensor, eps: float) -> torch.Tensor:
    # Biased variance, as BatchNorm1d(affine=False) in training mode.
    return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)


def barlow_twins_loss(z_a: torch.Tensor, z_b: torch.Tensor, lambda_offdiag: float = 5e-3, eps: float = 1e-5) -> torch.Tensor:
    """z_a, z_b: (N, D) projections of two views of the same N images -> scalar."""
    n = z_a.shape[0]
    c = _standardise(z_a, eps).T @ _standardise(z_b, eps) / n  # (D, D)
    on_diag = (1 - c.diagonal()).pow(2).sum()
    off_diag = c.pow(2).sum() - c.diagonal().pow(2).sum()
    return on_diag + lambda_offdiag * off_diag
