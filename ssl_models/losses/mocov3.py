"""MoCo v3's symmetric InfoNCE: each view's query against the other view's momentum key.

Chen, Xie, He. "An Empirical Study of Training Self-Supervised Vision Transformers",
ICCV 2021. https://arxiv.org/abs/2104.02057

With q the (predictor) queries and k the momentum encoder's keys of the other view, all
l2-normalised, and the other keys of the batch as negatives (no queue):

    ctr(q, k) = 2t * mean_i -log( exp(q_i . k_i / t) / sum_j exp(q_i . k_j / t) )
    loss      = ctr(q_1, k_2) + ctr(q_2, k_1),       t = 0.2

The factor 2t is the paper's (it makes the gradient scale independent of t). Each ctr is
``info_nce_loss`` with in-batch negatives, which gathers every rank's keys, so the
negatives are those of the global batch (the paper's all_gather). The keys carry no
gradient; the method computes them under no_grad.

Example:
    >>> q_1, q_2, k_1, k_2 = (torch.randn(8, 256) for _ in range(4))
    >>> loss = mocov3_loss(q_1, q_2, k_1, k_2, temperature=0.2)
"""

from __future__ import annotations

import torch

from ssl_models.losses.info_nce import info_nce_loss


def mocov3_loss(q_1: torch.Tensor, q_2: torch.Tensor, k_1: torch.Tensor, k_2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """q_v, k_v: (n, D) queries and keys of view v (row i: image i) -> scalar."""
    scale = 2 * temperature
    return scale * (info_nce_loss(q_1, k_2, None, temperature) + info_nce_loss(q_2, k_1, None, temperature))
