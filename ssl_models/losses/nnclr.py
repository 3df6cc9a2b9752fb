"""NNCLR's loss: the nearest neighbour of one view in a support set against the other view.

Dwibedi, Aytar, Tompson, Sermanet, Zisserman. "With a Little Help from My Friends:
Nearest-Neighbor Contrastive Learning of Visual Representations", ICCV 2021.
https://arxiv.org/abs/2104.14548

With z the projections of one view, NN(z) its nearest neighbour (cosine) in a support set Q
of past projections, p the predictions of the other view, all l2-normalised, t = 0.1:

    l_i  = -log( exp(NN(z_i) . p_i / t) / sum_k exp(NN(z_i) . p_k / t) )
    loss = mean_i l_i                 (the method symmetrises: both views in both roles)

This is InfoNCE with the neighbour as the query and the batch's predictions as the keys,
so it is computed by ``info_nce_loss`` (the negatives gathered from every rank, with
gradients). The neighbour carries no gradient: it is a stored vector.

Example:
    >>> z, p, support = torch.randn(8, 128), torch.randn(8, 128), torch.randn(1024, 128)
    >>> loss = nnclr_loss(nearest_neighbour(z, support), p, temperature=0.1)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_models.losses.info_nce import info_nce_loss


@torch.no_grad()
def nearest_neighbour(z: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """z (N, D), support (M, D) -> (N, D): the support row of highest cosine similarity to each z row."""
    similarity = F.normalize(z, dim=1) @ F.normalize(support, dim=1).T  # (N, M)
    return support[similarity.argmax(dim=1)]


def nnclr_loss(neighbours: torch.Tensor, predictions: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """neighbours (n, D): NN(z) of one view, no gradient; predictions (n, D): the other view's.
    With several processes, the predictions of every rank are the negatives. Returns a scalar."""
    return info_nce_loss(neighbours.detach(), predictions, None, temperature)
