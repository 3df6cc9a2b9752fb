"""KoLeo: spread the features of a batch uniformly, by pushing each from its nearest neighbour.

Sablayrolles, Douze, Schmid, Jegou. "Spreading vectors for similarity search", ICLR 2019
(the Kozachenko-Leonenko entropy estimator); used as a regulariser in Oquab et al.
"DINOv2: Learning Robust Visual Features without Supervision", 2023
(https://arxiv.org/abs/2304.07193, ``KoLeoLoss`` in facebookresearch/dinov2).

For l2-normalised features x_1..x_n and each one's nearest other feature,

    d_i  = || x_i - x_nn(i) ||,   nn(i) = argmax_{j != i} x_i . x_j
    loss = - mean_i log(d_i + eps)

The log makes small distances expensive: two near-identical features cost far more
than the gain of moving a well-separated one further. DINOv2 adds it with weight 0.1 to
the student's [CLS] features of each global view.

Across processes (torch.distributed): every rank's features are gathered (with
gradients), each rank's rows look for their neighbour in the global batch, and the rank
takes the mean over its own rows; the mean over ranks is then the loss one process gets
on the whole batch. (DINOv2 computes it per GPU; gathering makes it independent of the
number of processes.)

Example:
    >>> loss = koleo_loss(torch.randn(64, 128))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_models.distributed import gather_with_grad, world


def koleo_loss(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """features: (n, D) this rank's rows (normalised here). Returns a scalar."""
    x = F.normalize(features.to(torch.promote_types(features.dtype, torch.float32)), dim=-1, eps=eps)  # float32 at least
    rank, n = world()[0], x.shape[0]
    everyone = gather_with_grad(x)  # (N, D), this rank's rows at [rank * n, (rank + 1) * n)
    own = torch.arange(n, device=x.device) + rank * n
    with torch.no_grad():  # which neighbour: a choice, not differentiated
        similarity = x @ everyone.T  # (n, N)
        similarity[torch.arange(n, device=x.device), own] = -2.0  # never oneself (cosines are >= -1)
        neighbour = similarity.argmax(dim=1)
    distances = F.pairwise_distance(x, everyone[neighbour], eps=eps)  # (n,)
    return -torch.log(distances + eps).mean()
