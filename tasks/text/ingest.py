"""The text part of ingest: a BPE tokenizer trained on the accepted documents, and token-id shards (tasks/text/tokens.py)."""

from __future__ import annotations

from pathlib import Path

from tasks.core.context import StageContext
from tasks.core.results import Validated
from tasks.text.tokens import ingest_text

UNIT = "document"


def prepare(ctx: StageContext, validated: Validated, unlabeled_dir: Path, labeled_dir: Path) -> dict[str, int]:
    layout, cfg = ctx.layout, ctx.cfg
    settings = cfg.text.settings(cfg.pretrain.seed, cfg.pretrain.method_params)
    return ingest_text(
        layout.source(cfg.data.unlabeled), layout.source(cfg.data.labeled), layout.validation, unlabeled_dir, labeled_dir,
        settings, cfg.data.test_fraction, cfg.data.text_columns, cfg.data.label_column,
    )  # fmt: skip
