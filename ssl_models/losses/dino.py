"""DINO's self-distillation loss: the student matches the teacher's centred, sharpened output.

Caron, Touvron, Misra, Jegou, Mairal, Bojanowski, Joulin. "Emerging Properties in
Self-Supervised Vision Transformers", ICCV 2021. https://arxiv.org/abs/2104.14294
(``DINOLoss`` in facebookresearch/dino main_dino.py).

For teacher outputs t_g of the G global views and student outputs s_v of all V views
(the first G of them the same global views), each (B, K) logits:

    P_t(g) = softmax((t_g - c) / tau_t)           centred, then sharpened (tau_t ~ 0.04-0.07)
    P_s(v) = softmax(s_v / tau_s)                 tau_s = 0.1
    loss   = mean over pairs (g, v), v != g, of  mean_b  - sum_k P_t(g)[b, k] log P_s(v)[b, k]

Centring (subtracting c) keeps one prototype from winning for every image; sharpening
(a low tau_t) keeps the output from going uniform; the two together avoid collapse.
The centre is an EMA of the teacher's mean output, updated after the loss with
``update_center``:

    c <- m c + (1 - m) mean over the global batch of t,     m = 0.9

Across processes (torch.distributed): the loss of a rank is the mean over its images, so
the mean over ranks (what DDP's gradient averaging gives) is the global batch's; the
centre's batch mean is all-reduced, so every rank keeps the same centre, the one a
single process on the whole batch would have.

Example:
    >>> student = [torch.randn(8, 64) for _ in range(4)]   # 2 global + 2 local views
    >>> teacher = [torch.randn(8, 64) for _ in range(2)]
    >>> center = torch.zeros(1, 64)
    >>> loss = dino_loss(student, teacher, center, student_temp=0.1, teacher_temp=0.04)
    >>> center = update_center(center, torch.cat(teacher), momentum=0.9)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ssl_models.distributed import all_reduce_with_grad


def dino_loss(
    student: Sequence[torch.Tensor],
    teacher: Sequence[torch.Tensor],
    center: torch.Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> torch.Tensor:
    """student: V tensors (B, K), the first len(teacher) the global views in the teacher's
    order; teacher: G tensors (B, K), no gradient needed; center (1, K). Returns a scalar."""
    targets = [F.softmax((t.detach() - center) / teacher_temp, dim=-1) for t in teacher]  # (B, K) each
    log_preds = [F.log_softmax(s / student_temp, dim=-1) for s in student]
    total, pairs = 0.0, 0
    for g, target in enumerate(targets):
        for v, log_pred in enumerate(log_preds):
            if v == g:  # a view is not matched with itself
                continue
            total = total + (-(target * log_pred).sum(dim=-1)).mean()
            pairs += 1
    return total / pairs


@torch.no_grad()
def update_center(center: torch.Tensor, teacher: torch.Tensor, momentum: float = 0.9) -> torch.Tensor:
    """The next centre: EMA of the mean row of ``teacher`` (N, K) over every rank's rows.

    Ranks may hold different numbers of rows (iBOT's hidden patches): the sums and the
    counts are all-reduced together. No rows anywhere: the centre is kept."""
    dtype = torch.promote_types(teacher.dtype, torch.float32)  # at least float32, also under autocast
    rows = torch.full((1, 1), float(teacher.shape[0]), device=teacher.device, dtype=dtype)
    sums = all_reduce_with_grad(torch.cat([teacher.sum(dim=0, keepdim=True, dtype=rows.dtype), rows], dim=1))  # (1, K + 1), over the ranks
    count = float(sums[0, -1])
    if count == 0:
        return center
    return center * momentum + sums[:, :-1] / count * (1 - momentum)


def teacher_temperature(progress: float, warmup_temp: float, temp: float, warmup: float) -> float:
    """DINO's teacher temperature: linear from ``warmup_temp`` to ``temp`` over the first
    ``warmup`` of training (a fraction in [0, 1]; 0 = ``temp`` throughout), then ``temp``.
    A soft teacher at the start (0.04 -> 0.07 in the paper) avoids early instability."""
    if warmup <= 0 or progress >= warmup:
        return temp
    return warmup_temp + (temp - warmup_temp) * progress / warmup
