"""iBOT's masked-patch self-distillation: the student predicts, at each hidden patch, the
teacher's output for that patch of the unmasked image.

Zhou, Wei, Wang, Shen, Xie, Yuille, Kong. "iBOT: Image BERT Pre-Training with Online
Tokenizer", ICLR 2022. https://arxiv.org/abs/2111.07832 (``iBOTLoss`` in bytedance/ibot).

For each global view, the student sees it with a blockwise mask (hidden patches replaced
by a mask token), the teacher sees it whole. With head outputs (logits over K
prototypes) at the hidden patches, s_bl for the student and t_bl for the teacher:

    P_t = softmax((t_bl - c') / tau_t'),   P_s = softmax(s_bl / tau_s')
    loss_b = mean over the hidden patches l of image b of  - sum_k P_t[k] log P_s[k]
    loss   = mean over the images b of loss_b          (an image with none hidden gives 0)

as iBOT's code: the mean over the images counts the unmasked ones as zeros. ``c'`` is a
centre of its own (the patch centre, updated like DINO's with ``dino.update_center``).
Across processes the mean over images per rank, averaged over ranks by DDP, is the
global batch's mean (equal batches per rank).

Only the hidden patches enter the loss, so the method runs the head on those only: the
inputs are the rows of the hidden patches in the order of ``mask.nonzero()``.

Example:
    >>> mask = torch.rand(4, 16) < 0.3                   # (B, L) hidden patches
    >>> m = int(mask.sum())
    >>> loss = ibot_patch_loss(torch.randn(m, 64), torch.randn(m, 64), mask, torch.zeros(1, 64))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ibot_patch_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    mask: torch.Tensor,
    center: torch.Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> torch.Tensor:
    """student, teacher: (M, K) logits at the hidden patches (rows in ``mask.nonzero()``
    order); mask: (B, L) bool with M True entries; center (1, K). Returns a scalar."""
    target = F.softmax((teacher.detach() - center) / teacher_temp, dim=-1)
    per_patch = -(target * F.log_softmax(student / student_temp, dim=-1)).sum(dim=-1)  # (M,)
    hidden_per_image = mask.sum(dim=1).clamp(min=1).to(per_patch.dtype)  # (B,)
    weights = (1.0 / hidden_per_image)[:, None].expand_as(mask)[mask]  # (M,): 1 / hidden patches of its image
    return (per_patch * weights).sum() / mask.shape[0]
