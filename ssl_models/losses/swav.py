"""SwAV's swapped prediction: predict one view's cluster codes from another view.

Caron, Misra, Mairal, Goyal, Bojanowski, Joulin. "Unsupervised Learning of Visual Features
by Contrasting Cluster Assignments", NeurIPS 2020. https://arxiv.org/abs/2006.09882

With scores s_v (N, K) of view v against the prototypes (cosine similarities) and codes
q_i (N, K) of the global views i (Sinkhorn-Knopp of their scores: ssl_models/sinkhorn.py):

    p_v  = softmax(s_v / t)                             (N, K), t = 0.1
    l(i, v) = - mean_n sum_k q_i[n, k] log p_v[n, k]
    loss = mean over the global views i, and over every other view v != i, of l(i, v)

The codes come from the 2 global views only; the predictions from every view, the local
crops of multi-crop included. The codes carry no gradient (Sinkhorn runs without).

Across processes: each rank passes its own rows; the codes are computed across ranks
(Sinkhorn's sums are all-reduced), the loss is a mean over this rank's rows, so the mean
over the ranks (DDP's) is the loss of the global batch.

Example:
    >>> scores = [torch.randn(8, 100) for _ in range(4)]   # 2 global views, 2 local crops
    >>> codes = [sinkhorn(s) for s in scores[:2]]
    >>> loss = swav_loss(scores, codes, temperature=0.1)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def swav_loss(scores: list[torch.Tensor], codes: list[torch.Tensor], temperature: float = 0.1) -> torch.Tensor:
    """scores: one (N, K) tensor per view, the global views first; codes: one (N, K) per
    global view (``codes[i]`` for ``scores[i]``), rows summing to 1. Returns a scalar."""
    log_p = [F.log_softmax(s.to(torch.promote_types(s.dtype, torch.float32)) / temperature, dim=1) for s in scores]
    terms = [-(q * log_p[v]).sum(dim=1).mean() for i, q in enumerate(codes) for v in range(len(scores)) if v != i]
    return torch.stack(terms).mean()
