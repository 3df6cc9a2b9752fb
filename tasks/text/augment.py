"""The text part of augment: BERT's masking checked on real documents, and shown."""

from __future__ import annotations

from pathlib import Path

import torch

from ssl_models.methods.mlm import bert_masking
from ssl_models.text import PAD_ID
from tasks.core.context import StageContext
from tasks.core.plots import masking_preview
from tasks.core.results import Prepared
from tasks.text.model import build_mlm
from tasks.text.tokens import load_token_shards, load_tokenizer


class MaskingPolicyError(ValueError):
    """BERT's masking produced something training must not see."""


def preview(ctx: StageContext, prepared: Prepared, path: Path) -> Path:
    """Check BERT's masking on the first documents and draw it to ``path``.

    Text has no views: the "augmentation" of MLM is the masking, so this stage proves it
    selects real tokens only (never [PAD], [CLS], [SEP]) at about ``mask_prob``, and shows it.
    """
    cfg = ctx.cfg
    settings = cfg.text.settings(cfg.pretrain.seed, cfg.pretrain.method_params)
    method = build_mlm(prepared.unlabeled, settings)
    tokenizer = load_tokenizer(prepared.unlabeled)
    ids = load_token_shards(prepared.unlabeled)[:256].long()
    generator = torch.Generator().manual_seed(cfg.pretrain.seed)
    corrupted, selected = bert_masking(
        ids, method.encoder.vocab_size, method.mask_prob, method.replace_prob, method.random_prob,
        method.is_continuation if method.whole_word else None, generator=generator,
    )  # fmt: skip
    real = ids >= 5  # not a special token
    if (selected & ~real).any():
        raise MaskingPolicyError("the masking selected special tokens ([PAD], [CLS], [SEP], ...)")
    share = float(selected.sum() / real.sum().clamp_min(1))
    if not 0.25 * method.mask_prob <= share <= 4 * method.mask_prob:
        raise MaskingPolicyError(f"the masking selected {share:.1%} of the tokens, mask_prob is {method.mask_prob:.0%}")

    def show(row: torch.Tensor, picked: torch.Tensor | None = None) -> str:
        pieces = [tokenizer.id_to_token(int(t)) for t in row if int(t) != PAD_ID]
        if picked is not None:
            pieces = [f"[{p}]" if hit else p for p, hit in zip(pieces, picked.tolist(), strict=False)]
        return " ".join(pieces)

    rows = [(show(ids[i]), show(corrupted[i], selected[i])) for i in range(min(cfg.augment.preview_images, len(ids)))]
    return masking_preview(rows, path, f"MLM preview: {share:.1%} of the tokens selected (mask_prob {method.mask_prob:.0%})")
