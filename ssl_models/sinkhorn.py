"""Sinkhorn-Knopp: soft cluster assignments ("codes") with equal cluster sizes, for SwAV.

Caron, Misra, Mairal, Goyal, Bojanowski, Joulin. "Unsupervised Learning of Visual Features
by Contrasting Cluster Assignments", NeurIPS 2020. https://arxiv.org/abs/2006.09882
Cuturi. "Sinkhorn Distances: Lightspeed Computation of Optimal Transport", NeurIPS 2013.

For scores S (N, K) of N embeddings against K prototypes, the codes are the transport plan

    Q = Diag(u) exp(S / eps) Diag(v)      (N, K), rows summing to 1, columns to N / K

found by alternately rescaling the columns to N / K and the rows to 1 (``iterations``
rounds; SwAV uses 3). Equal column sums (every prototype gets the same share of the batch)
are what keeps all images from falling into one cluster. A constant added to S changes
nothing, so the maximum is subtracted first for a safe ``exp``.

Across processes (torch.distributed), each rank passes its own rows: the row rescaling is
per row, and the column sums, the total and the maximum are all-reduced, so the codes equal
those one process computes on the rows of every rank (N counts all of them).

Example:
    >>> scores = torch.randn(256, 100)           # (N, K) cosine scores
    >>> q = sinkhorn(scores, eps=0.05)            # (N, K), q.sum(1) == 1
"""

from __future__ import annotations

import torch

from ssl_models.distributed import all_reduce


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, eps: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """scores (n, K) -> codes (n, K), every row a distribution over the K prototypes; in
    float32 at least (bf16 scores under autocast would lose the small codes)."""
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
    n, k = scores.shape
    total_rows = all_reduce(torch.tensor(float(n), device=scores.device, dtype=scores.dtype))
    peak = all_reduce(scores.max().clone(), op="max")
    q = torch.exp((scores - peak) / eps)  # (n, K)
    q /= all_reduce(q.sum())
    for _ in range(iterations):
        q /= all_reduce(q.sum(dim=0, keepdim=True)) * k  # each prototype's column sums to 1 / K
        q /= q.sum(dim=1, keepdim=True) * total_rows  # each row sums to 1 / N
    return q * total_rows  # rows sum to 1
