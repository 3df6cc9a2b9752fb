"""Mean squared error over masked positions only: MAE's and the context encoder's loss.

He, Chen, Xie, Li, Dollar, Girshick. "Masked Autoencoders Are Scalable Vision
Learners", CVPR 2022. https://arxiv.org/abs/2111.06377
Pathak, Krahenbuhl, Donahue, Darrell, Efros. "Context Encoders: Feature Learning by
Inpainting", CVPR 2016. https://arxiv.org/abs/1604.07379

For L positions (patches or pixels) with C values each and a mask m (1 = hidden):

    e_l  = mean_c (pred_lc - target_lc)^2
    loss = sum_l m_l e_l / sum_l m_l

Visible positions do not count: reconstructing what the model was shown is trivial.

Example:
    >>> pred, target = torch.randn(8, 64, 48), torch.randn(8, 64, 48)
    >>> mask = (torch.rand(8, 64) < 0.75).float()
    >>> loss = masked_mse_loss(pred, target, mask)
"""

from __future__ import annotations

import torch


def masked_mse_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """pred, target: (N, L, C); mask: (N, L), 1 where hidden, 0 where visible -> scalar."""
    per_position = (pred - target).pow(2).mean(dim=-1)  # (N, L)
    return (per_position * mask).sum() / mask.sum().clamp_min(1)
