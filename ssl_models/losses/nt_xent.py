"""NT-Xent, the normalised temperature-scaled cross entropy of SimCLR.

Chen, Kornblith, Norouzi, Hinton. "A Simple Framework for Contrastive Learning of
Visual Representations", ICML 2020. https://arxiv.org/abs/2002.05709

For a batch of N images and their 2N views z_1..z_2N, with sim the cosine similarity
and j(i) the other view of the same image:

    l_i  = -log( exp(sim(z_i, z_j(i)) / t) / sum_{k != i} exp(sim(z_i, z_k) / t) )
    loss = mean_i l_i

Every other view in the batch is a negative, so no memory bank is needed.

Example:
    >>> z_a, z_b = torch.randn(8, 128), torch.randn(8, 128)
    >>> loss = nt_xent_loss(z_a, z_b, temperature=0.2)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent_loss(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """z_a, z_b: (N, D), row i of each is a view of image i. Returns a scalar."""
    n = z_a.shape[0]
    z = F.normalize(torch.cat([z_a, z_b]), dim=1)  # (2N, D)
    logits = z @ z.T / temperature  # (2N, 2N)
    # A view is not its own negative: drop the diagonal from the softmax.
    logits.fill_diagonal_(float("-inf"))
    positives = torch.arange(2 * n, device=z.device).roll(n)  # view i pairs with i +- N
    return F.cross_entropy(logits, positives)
