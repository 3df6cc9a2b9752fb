"""The text part of pretrain: MLM (ssl_models/methods/mlm.py) on the token shards, resumable."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from ssl_models.methods.mlm import MLM
from ssl_models.text import TOKENIZER_FILE, TextModelSettings, save_text_encoder
from ssl_models.training import EpochStats, TrainSettings
from ssl_models.training import pretrain as train_method
from tasks.core.config import PipelineConfig
from tasks.core.context import StageContext
from tasks.core.results import Prepared, file_sha256
from tasks.registry.heartbeat import ServerWatch, log_epoch, log_missed_epochs
from tasks.registry.tracking import tracking_uri
from tasks.text.model import build_mlm
from tasks.text.tokens import (
    load_token_shards,
)

log = logging.getLogger(__name__)


def check(cfg: PipelineConfig) -> None:
    """The config already matched the method to the text; starting from given weights is for images only."""
    if cfg.pretrain.init:
        raise ValueError(f"pretrain.init={cfg.pretrain.init}: starting from given weights works for image encoders only, not yet for text")


def describe(ctx: StageContext, prepared: Prepared) -> tuple[int, dict, str]:
    documents = int(load_token_shards(prepared.unlabeled).shape[0])
    tags = {
        "backbone": "text_transformer",
        "documents": documents,
        "tokenizer_sha256": file_sha256(Path(prepared.unlabeled) / TOKENIZER_FILE),
    }
    return documents, tags, f"{documents} documents, text_transformer"


def train(ctx: StageContext, prepared: Prepared, checkpoint: Path, run_id: str):
    """MLM in this process; the history and a writer of the encoder with its tokenizer."""
    p, tracker = ctx.cfg.pretrain, ctx.tracker
    settings = ctx.cfg.text.settings(p.seed, p.method_params)

    watch = ServerWatch(tracking_uri(tracker.root))  # a tracking server that goes away stops training (see the image part)

    def on_epoch_end(stats: EpochStats) -> None:
        log_epoch(tracker, watch, stats)

    extra = {"run_id": run_id, "data_version": prepared.data_version}
    with watch:
        history, method = train_mlm(
            Path(prepared.unlabeled), settings, torch.device(p.device), on_epoch_end, checkpoint, extra, ctx.progress, watch.lost
        )
    log_missed_epochs(tracker, history)
    tokenizer = Path(prepared.unlabeled) / TOKENIZER_FILE
    return history, lambda folder, extra: save_text_encoder(method.encoder.cpu(), folder, tokenizer, extra=extra)


def train_mlm(
    prepared_unlabeled: Path,
    settings: TextModelSettings = TextModelSettings(),
    device: torch.device | str = "cpu",
    on_epoch_end: Callable[[EpochStats], None] | None = None,
    checkpoint_path: Path | None = None,
    extra: dict | None = None,
    progress: bool = True,
    should_stop: Callable[[], str | None] | None = None,
) -> tuple[list[EpochStats], MLM]:
    """MLM on the token shards; returns the history and the trained method."""
    ids = load_token_shards(prepared_unlabeled)
    if ids.shape[1] != settings.max_len:
        raise ValueError(f"{prepared_unlabeled}: shards of {ids.shape[1]} tokens, settings.max_len={settings.max_len}: ingest again")
    method = build_mlm(prepared_unlabeled, settings)
    train = TrainSettings(
        epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr, weight_decay=settings.weight_decay,
        warmup_epochs=settings.warmup_epochs, optimizer="adamw", seed=settings.seed,
    )  # fmt: skip
    return train_method(
        method, ids, train, device, on_epoch_end, checkpoint_path, progress, extra=extra, should_stop=should_stop
    ), method  # extra: the run to resume in
