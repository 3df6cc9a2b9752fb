"""The text part of pretrain: MLM (ssl_models/methods/mlm.py) on the token shards, resumable."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from ssl_models.text import TOKENIZER_FILE, TextModelSettings, save_text_encoder
from ssl_models.training import EpochStats, TrainSettings, checkpoint_extra
from ssl_models.training import pretrain as train_method
from tasks.core.atomic import staged_dir, write_rows
from tasks.core.context import StageContext
from tasks.core.lineage import git_commit
from tasks.core.plots import training_curves
from tasks.core.results import Prepared, Pretrained, Preview, file_sha256
from tasks.registry.models import log_training_dataset
from tasks.text.model import build_mlm
from tasks.text.tokens import (
    load_token_shards,
)

log = logging.getLogger(__name__)


def pretrain(ctx: StageContext, prepared: Prepared, preview: Preview) -> Pretrained:
    """MLM on the token shards; the encoder (with its tokenizer) to models/encoder/; resumable as for images."""
    layout, cfg, tracker = ctx.layout, ctx.cfg, ctx.tracker
    p = cfg.pretrain
    settings = cfg.text.settings(p.seed, p.method_params)
    checkpoint = layout.state / "checkpoints" / f"pretrain-{ctx.key[:16] or 'any'}.pt"
    resumed = (checkpoint_extra(checkpoint) or {}).get("run_id")
    if resumed:
        tracker.adopt(resumed)
        log.info("resuming pretraining from %s (MLflow run %s)", checkpoint, resumed)
    documents = int(load_token_shards(prepared.unlabeled).shape[0])
    tokenizer_sha = file_sha256(layout.unlabeled / TOKENIZER_FILE)
    tracker.set_tags(
        {"git_commit": git_commit(layout.root), "data_version": prepared.data_version, "method": p.method, "modality": "text", "backbone": "text_transformer",
         "device": p.device, "documents": documents, "tokenizer_sha256": tokenizer_sha}
    )  # fmt: skip
    log_training_dataset("unlabeled", prepared.data_version, cfg.data.unlabeled, documents, tracker.run_id)
    log.info("pretraining %s on %d documents, %s", p.method, documents, p.device)

    def on_epoch_end(stats: EpochStats) -> None:
        tracker.log_metrics({f"pretrain/{k}": v for k, v in stats.as_metrics().items()}, step=stats.epoch)
        log.info("epoch %d/%d: loss %.4f, %.0f docs/s", stats.epoch, settings.epochs, stats.loss, stats.images_per_s)

    extra = {"run_id": tracker.run_id, "data_version": prepared.data_version}
    with staged_dir(layout.encoder) as staging:
        history = pretrain_text(Path(prepared.unlabeled), staging, settings, torch.device(p.device), on_epoch_end, checkpoint, extra, ctx.progress)
    rows = [{"epoch": s.epoch, **s.as_metrics()} for s in history]
    write_rows(layout.pretrain_reports / "history.csv", rows)
    tracker.log_artifact(training_curves(rows, layout.pretrain_reports / "curves.png"), "plots")
    checkpoint.unlink(missing_ok=True)
    return Pretrained(str(layout.encoder), tracker.run_id, file_sha256(layout.encoder / "weights.pt"), p.method, tuple(rows))


def pretrain_text(
    prepared_unlabeled: Path,
    encoder_dir: Path,
    settings: TextModelSettings = TextModelSettings(),
    device: torch.device | str = "cpu",
    on_epoch_end: Callable[[EpochStats], None] | None = None,
    checkpoint_path: Path | None = None,
    extra: dict | None = None,
    progress: bool = True,
) -> list[EpochStats]:
    """MLM on the token shards; saves the encoder with its tokenizer to ``encoder_dir``; returns the history."""
    ids = load_token_shards(prepared_unlabeled)
    if ids.shape[1] != settings.max_len:
        raise ValueError(f"{prepared_unlabeled}: shards of {ids.shape[1]} tokens, settings.max_len={settings.max_len}: ingest again")
    method = build_mlm(prepared_unlabeled, settings)
    train = TrainSettings(
        epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr, weight_decay=settings.weight_decay,
        warmup_epochs=settings.warmup_epochs, optimizer="adamw", seed=settings.seed,
    )  # fmt: skip
    history = train_method(method, ids, train, device, on_epoch_end, checkpoint_path, progress, extra=extra)  # extra: the run to resume in
    save_text_encoder(method.encoder.cpu(), encoder_dir, prepared_unlabeled / "tokenizer.json", extra={"method": "mlm", **(extra or {})})
    return history
