"""NT-Xent, the normalised temperature-scaled cross entropy of SimCLR.

Chen, Kornblith, Norouzi, Hinton. "A Simple Framework for Contrastive Learning of
Visual Representations", ICML 2020. https://arxiv.org/abs/2002.05709

For a batch of N images and their 2N views z_1..z_2N, with sim the cosine similarity
and j(i) the other view of the same image:

    l_i  = -log( exp(sim(z_i, z_j(i)) / t) / sum_{k != i} exp(sim(z_i, z_k) / t) )
    loss = mean_i l_i

Every other view in the batch is a negative, so no memory bank is needed.

Across processes (torch.distributed): each rank passes its own rows; the views of every
rank are gathered (with gradients) as negatives and each rank averages over its own
anchors, so the mean over the ranks is the loss of the global batch, negatives and all.

Example:
    >>> z_a, z_b = torch.randn(8, 128), torch.randn(8, 128)
    >>> loss = nt_xent_loss(z_a, z_b, temperature=0.2)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_models.distributed import gather_with_grad, world


def nt_xent_loss(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """z_a, z_b: (n, D), row i of each is a view of image i. Returns a scalar.

    With several processes, n is this rank's share and the negatives are every rank's.
    """
    rank, world_size = world()
    n = z_a.shape[0]
    z_a, z_b = F.normalize(z_a, dim=1), F.normalize(z_b, dim=1)
    anchors = torch.cat([z_a, z_b])  # (2n, D): this rank's views
    candidates = torch.cat([gather_with_grad(z_a), gather_with_grad(z_b)])  # (2N, D), N = n * world_size
    logits = anchors @ candidates.T / temperature  # (2n, 2N)
    # Global column of anchor i: its own row among the gathered a-views, then b-views.
    big_n, mine = n * world_size, torch.arange(n, device=z_a.device) + rank * n
    self_column = torch.cat([mine, mine + big_n])
    positive_column = torch.cat([mine + big_n, mine])  # view a of image i pairs with view b
    # A view is not its own negative: drop it from the softmax.
    logits[torch.arange(2 * n, device=z_a.device), self_column] = float("-inf")
    return F.cross_entropy(logits, positive_column)
