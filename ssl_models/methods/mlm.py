"""MLM: hide some tokens of a document and predict them from the rest (BERT's pretext task).

Devlin, Chang, Lee, Toutanova. "BERT: Pre-training of Deep Bidirectional Transformers for
Language Understanding", NAACL 2019. https://arxiv.org/abs/1810.04805

    token ids x (B, L) --bert_masking--> x_masked, M (15% of the non-special tokens; of those
                                          80% -> [MASK], 10% -> a random token, 10% unchanged)
    x_masked --encoder--> tokens (B, L, D) --head (dense, GELU, LayerNorm, tied decoder)--> logits
    L_MLM = -(1 / |M|) sum_{i in M} log P(x_i | x_masked)      (ssl_models/losses/mlm.py)

The random and unchanged 10%s keep the model from learning that only [MASK] positions
matter: it must keep a good representation of every token, since any may be a target. The
decoder shares its weights with the token embedding (BERT does too): fewer parameters to
learn from a small corpus, and the embedding gets a gradient from every prediction.

``whole_word=True`` masks all the pieces of a word together (BERT's later whole-word
masking): predicting "ing" from "runn" is too easy. It needs ``continuation_ids``, the ids
of the pieces that continue a word (tasks/text/tokens.py: ``continuation_ids``).

Backbones: ``text_transformer`` (ssl_models/text.py) only.
Kept after training: ``encoder`` (the head is dropped); features = mean of the non-padding tokens.
Embeddings for collapse monitoring: the same mean-pooled features of the masked input.
Optimiser: AdamW (see ``recommended``); SGD does not train a Transformer from scratch well.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from ssl_models.losses.mlm import mlm_loss
from ssl_models.methods.base import StepOutput
from ssl_models.text import MASK_ID, PAD_ID, SPECIAL_TOKENS, TextEncoder, trim_padding


def bert_masking(
    token_ids: torch.Tensor,
    vocab_size: int,
    mask_prob: float = 0.15,
    replace_prob: float = 0.8,
    random_prob: float = 0.1,
    is_continuation: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption: token_ids (B, L) -> (corrupted ids (B, L), selected (B, L) bool).

    Special tokens ([PAD], [CLS], [SEP], ...: ids below ``len(SPECIAL_TOKENS)``) are never
    selected. With ``is_continuation`` (a (V,) bool table, True for word-continuing pieces), a word's
    pieces share the draw of its first piece, so whole words are selected.
    """
    device = token_ids.device
    candidates = token_ids >= len(SPECIAL_TOKENS)
    noise = torch.rand(token_ids.shape, generator=generator, device=device)
    if is_continuation is not None:
        # Index of each token's word start: the last position at or before it that starts a word.
        positions = torch.arange(token_ids.shape[1], device=device).expand_as(token_ids)
        starts = torch.where(is_continuation[token_ids], torch.zeros_like(positions), positions)
        noise = noise.gather(1, starts.cummax(dim=1).values)
    selected = candidates & (noise < mask_prob)
    action = torch.rand(token_ids.shape, generator=generator, device=device)
    to_mask = selected & (action < replace_prob)
    to_random = selected & (action >= replace_prob) & (action < replace_prob + random_prob)
    corrupted = token_ids.clone()
    corrupted[to_mask] = MASK_ID
    random_tokens = torch.randint(len(SPECIAL_TOKENS), vocab_size, token_ids.shape, generator=generator, device=device)
    corrupted[to_random] = random_tokens[to_random]
    return corrupted, selected


class MLMHead(nn.Module):
    """BERT's prediction head: dense + GELU + LayerNorm, then logits by the (tied) token embedding."""

    def __init__(self, dim: int, embedding: nn.Embedding) -> None:
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim))
        self.embedding = embedding  # shared with the encoder, not a copy
        self.bias = nn.Parameter(torch.zeros(embedding.num_embeddings))
        nn.init.normal_(self.transform[0].weight, std=0.02)
        nn.init.zeros_(self.transform[0].bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # hidden: (M, D) at the masked positions -> logits (M, V)
        return self.transform(hidden) @ self.embedding.weight.T + self.bias


class MLM(nn.Module):
    backbones = ("text_transformer",)
    # AdamW with BERT's weight decay 0.01; lr for batch 256, scaled linearly by the loop
    # (see benchmarks/results/mlm.json for how it was chosen on AG News).
    recommended: ClassVar[dict[str, Any]] = {"optimizer": "adamw", "lr": 1e-2, "weight_decay": 0.01}

    def __init__(
        self,
        encoder: TextEncoder,
        views: object = None,  # the image methods' view policy; text has no views
        mask_prob: float = 0.15,
        replace_prob: float = 0.8,
        random_prob: float = 0.1,
        whole_word: bool = False,
        continuation_ids: Sequence[int] = (),
    ) -> None:
        super().__init__()
        if not isinstance(encoder, TextEncoder):
            raise ValueError(f"MLM needs a text encoder ({self.backbones}), got {type(encoder).__name__}")
        if not 0 < mask_prob < 1 or replace_prob + random_prob > 1:
            raise ValueError(f"need 0 < mask_prob < 1 and replace_prob + random_prob <= 1, got {mask_prob}, {replace_prob}, {random_prob}")
        if whole_word and not continuation_ids:
            raise ValueError("whole_word masking needs continuation_ids (the tokenizer's word-continuing pieces)")
        self.encoder = encoder
        self.head = MLMHead(encoder.feature_dim, encoder.token_embed)
        self.mask_prob, self.replace_prob, self.random_prob = mask_prob, replace_prob, random_prob
        table = torch.zeros(encoder.vocab_size, dtype=torch.bool)
        table[list(continuation_ids)] = True
        self.register_buffer("is_continuation", table, persistent=False)
        self.whole_word = whole_word

    def prepare_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """What the training loop hands to ``training_step``: stored ids (int32) as int64."""
        return batch.long()

    def training_step(self, token_ids: torch.Tensor) -> StepOutput:
        # token_ids: (B, L) int64, padded with [PAD] = 0
        token_ids = trim_padding(token_ids)
        corrupted, selected = bert_masking(
            token_ids, self.encoder.vocab_size, self.mask_prob, self.replace_prob, self.random_prob,
            self.is_continuation if self.whole_word else None,
        )  # fmt: skip
        tokens = self.encoder.forward_tokens(corrupted)  # (B, L, D)
        logits = self.head(tokens[selected])  # (M, V): only the masked positions are decoded
        loss = mlm_loss(logits, token_ids[selected])
        keep = (token_ids != PAD_ID).unsqueeze(-1).float()
        pooled = (tokens * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1)
        return StepOutput(loss, pooled.detach())

    def after_step(self, progress: float) -> None:
        """MLM has no momentum parts; nothing to update."""
