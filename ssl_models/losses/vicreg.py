"""VICReg: variance, invariance and covariance regularisation.

Bardes, Ponce, LeCun. "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning", ICLR 2022. https://arxiv.org/abs/2105.04906

For projections Z_a, Z_b (N, D) of two views:

    invariance  s = mean_{b,i} (za_bi - zb_bi)^2                          (MSE)
    variance    v(Z) = mean_i max(0, gamma - sqrt(Var_b(z_bi) + eps))     (hinge on std)
    covariance  c(Z) = sum_{i != j} Cov(Z)_ij^2 / D                       (unbiased Cov)
    loss = lambda * s + mu * (v(Z_a) + v(Z_b)) / 2 + nu * (c(Z_a) + c(Z_b))

with lambda = mu = 25, nu = 1, gamma = 1, eps = 1e-4 (the paper's values). Variance
keeps every dimension alive, covariance decorrelates them; no negatives, no momentum
encoder, no batch-normalised loss. The variance term averages the two branches and
the covariance term sums them, as in the authors' code (facebookresearch/vicreg).

Example:
    >>> z_a, z_b = torch.randn(256, 512), torch.randn(256, 512)
    >>> loss = vicreg_loss(z_a, z_b)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _variance(z: torch.Tensor, gamma: float, eps: float) -> torch.Tensor:
    std = torch.sqrt(z.var(dim=0) + eps)  # (D,)
    return F.relu(gamma - std).mean()


def _covariance(z: torch.Tensor) -> torch.Tensor:
    n, d = z.shape
    z = z - z.mean(dim=0)
    cov = z.T @ z / (n - 1)  # (D, D)
    return (cov.pow(2).sum() - cov.diagonal().pow(2).sum()) / d


def vicreg_loss(
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
) -> torch.Tensor:
    """z_a, z_b: (N, D) projections of two views of the same N images -> scalar."""
    invariance = F.mse_loss(z_a, z_b)
    variance = (_variance(z_a, gamma, eps) + _variance(z_b, gamma, eps)) / 2
    covariance = _covariance(z_a) + _covariance(z_b)
    return sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance
