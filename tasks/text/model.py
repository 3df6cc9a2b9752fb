"""The MLM method around a text encoder sized for the prepared tokenizer: what augment and pretrain both build."""

from __future__ import annotations

from pathlib import Path

import torch

from ssl_models.methods.mlm import MLM
from ssl_models.text import TextEncoder, TextModelSettings
from tasks.text.tokens import (
    continuation_ids,
    load_tokenizer,
)


def build_mlm(prepared_unlabeled: Path, settings: TextModelSettings) -> MLM:
    """The MLM method around a fresh TextEncoder sized for the prepared data's tokenizer."""
    tokenizer = load_tokenizer(prepared_unlabeled)
    torch.manual_seed(settings.seed)
    encoder = TextEncoder(tokenizer.get_vocab_size(), settings.max_len, settings.dim, settings.depth, settings.heads)
    pieces = continuation_ids(tokenizer) if settings.whole_word else ()
    return MLM(encoder, mask_prob=settings.mask_prob, whole_word=settings.whole_word, continuation_ids=pieces, **settings.method_params)
