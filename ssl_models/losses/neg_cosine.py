"""Negative cosine similarity, the loss of SimSiam, and BYOL's normalised MSE.

Chen, He. "Exploring Simple Siamese Representation Learning", CVPR 2021.
https://arxiv.org/abs/2011.10566
Grill et al. "Bootstrap Your Own Latent", NeurIPS 2020. https://arxiv.org/abs/2006.07733

With p the predictor output of one view and z the (target) projection of the other:

    SimSiam:  D(p, z) = - mean_i  p_i . z_i / (|p_i| |z_i|)            in [-1, 1]
    BYOL:     L(p, z) =   mean_i |p_i/|p_i| - z_i/|z_i||^2 = 2 - 2 cos   in [0, 4]

The two differ only by an affine map (L = 2 + 2 D), so they have the same minimiser;
the methods keep their papers' scales. Neither function stops gradients: the
stop-gradient on z is the heart of both methods, so the method files write it out.

Example:
    >>> p, z = torch.randn(8, 128), torch.randn(8, 128)
    >>> loss = negative_cosine_similarity(p, z.detach())
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def negative_cosine_similarity(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """p, z: (N, D) -> scalar, -mean cosine similarity of matching rows."""
    return -F.cosine_similarity(p, z, dim=1).mean()


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """p, z: (N, D) -> scalar, mean squared distance of the l2-normalised rows."""
    return (2 - 2 * F.cosine_similarity(p, z, dim=1)).mean()
