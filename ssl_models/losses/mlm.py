"""Masked language modelling loss: predict each hidden token from the others.

Devlin, Chang, Lee, Toutanova. "BERT: Pre-training of Deep Bidirectional Transformers for
Language Understanding", NAACL 2019. https://arxiv.org/abs/1810.04805

For a sequence x with a set M of masked positions, x_masked the corrupted input:

    L_MLM = -(1 / |M|) * sum_{i in M} log P(x_i | x_masked)

P(. | x_masked) is the softmax of the model's logits at position i over the vocabulary.
Only masked positions count: the model sees the others, copying them teaches nothing.
Averaged over the masked positions of the whole batch, as BERT (and cross_entropy) do.

Example:
    >>> logits = torch.randn(300, 8000)          # (M, V): logits at the M masked positions
    >>> targets = torch.randint(0, 8000, (300,))  # (M,): the original token ids there
    >>> loss = mlm_loss(logits, targets)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mlm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits (M, V) at the masked positions, targets (M,) their original ids -> scalar."""
    if len(targets) == 0:  # nothing masked (a batch of empty documents): no signal, no NaN
        return logits.sum() * 0.0
    log_p = F.log_softmax(logits.float(), dim=-1)  # (M, V)
    return -log_p.gather(1, targets[:, None]).mean()
