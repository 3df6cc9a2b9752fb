"""InfoNCE with a queue of negatives, the contrastive loss of MoCo.

He, Fan, Wu, Xie, Girshick. "Momentum Contrast for Unsupervised Visual Representation
Learning", CVPR 2020. https://arxiv.org/abs/1911.05722 (v2: https://arxiv.org/abs/2003.04297)
Oord, Li, Vinyals. "Representation Learning with Contrastive Predictive Coding", 2018.

For a query q, its positive key k+ and negatives k-_1..k-_K, all l2-normalised:

    l(q) = -log( exp(q.k+ / t) / (exp(q.k+ / t) + sum_j exp(q.k-_j / t)) )
    loss = mean over the queries

It is a (K+1)-way softmax classification whose right answer is the positive, so it is
computed as a cross entropy with label 0. With ``queue=None`` the other keys of the
batch are the negatives (label i for query i), which is what MoCo falls back to while
its queue is still empty.

Across processes (torch.distributed): with ``queue=None`` the keys of every rank are
gathered (with gradients) as negatives, query i's positive being its own key at row
``rank * n + i``; the mean over the ranks is then the loss of the global batch. A queue
is the same on every rank (MoCo enqueues the gathered keys), so nothing is gathered.

Example:
    >>> q, k, queue = torch.randn(8, 128), torch.randn(8, 128), torch.randn(4096, 128)
    >>> loss = info_nce_loss(q, k, queue, temperature=0.2)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_models.distributed import gather_with_grad, world


def info_nce_loss(
    query: torch.Tensor,
    key: torch.Tensor,
    queue: torch.Tensor | None = None,
    temperature: float = 0.2,
) -> torch.Tensor:
    """query, key: (N, D), row i of key is the positive of row i of query.

    queue: (K, D) negatives shared by every query, or None for in-batch negatives.
    Inputs need not be normalised. Gradients flow into whatever is not detached; MoCo
    detaches the keys and the queue. Returns a scalar.
    """
    q = F.normalize(query, dim=1)
    k = F.normalize(key, dim=1)
    if queue is None:
        rank = world()[0]
        logits = q @ gather_with_grad(k).T / temperature  # (n, N): every rank's keys
        labels = torch.arange(q.shape[0], device=q.device) + rank * q.shape[0]  # this rank's own keys
        return F.cross_entropy(logits, labels)
    positives = (q * k).sum(dim=1, keepdim=True)  # (N, 1)
    negatives = q @ F.normalize(queue, dim=1).T  # (N, K)
    logits = torch.cat([positives, negatives], dim=1) / temperature  # (N, 1 + K)
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)  # the positive is column 0
    return F.cross_entropy(logits, labels)
