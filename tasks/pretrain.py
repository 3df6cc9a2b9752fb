"""Pretrain stage: train the chosen SSL method on the prepared images.

Logs per-epoch metrics and the training curves into the run and writes the encoder
(weights.pt + config.json, with the run id in its config) at the end.

**Resume.** A checkpoint (model, optimiser, scheduler, RNG states, data order, epoch, the
MLflow run id) is written every epoch (and on Ctrl-C) to ``.sslpipe/checkpoints/``, under a
key made of what the result depends on (code, params, data: the stage's fingerprint). The
same command after a crash finds it, continues from it in the same MLflow run, and ends with
the encoder an uninterrupted run would have given. A changed config gets a fresh start.
The checkpoint is deleted once the encoder is written.
"""

from __future__ import annotations

import logging

import torch

from ssl_models.encoder import Encoder, save_encoder
from ssl_models.methods import build_method, check_image_size
from ssl_models.training import EpochStats, checkpoint_extra, pretrain as train
from tasks.atomic import staged_dir, write_rows
from tasks.context import StageContext
from tasks.lineage import git_commit
from tasks.mlflow_model import log_training_dataset
from tasks.plots import training_curves
from tasks.prepared import open_unlabeled
from tasks.results import Prepared, Pretrained, Preview, file_sha256

log = logging.getLogger(__name__)


def pretrain(ctx: StageContext, prepared: Prepared, preview: Preview) -> Pretrained:
    """Train, save the encoder, and return it with the run that records its training."""
    layout, cfg, tracker = ctx.layout, ctx.cfg, ctx.tracker
    p, size = cfg.pretrain, cfg.data.image_size  # resolved: no "auto" left
    check_image_size(p.method, size, p.backbone, **p.method_params)  # before anything is trained
    checkpoint = layout.state / "checkpoints" / f"pretrain-{ctx.key[:16] or 'any'}.pt"
    resumed = (checkpoint_extra(checkpoint) or {}).get("run_id")
    if resumed:
        tracker.adopt(resumed)  # the killed run's metrics continue in the same MLflow run
        log.info("resuming pretraining from %s (MLflow run %s)", checkpoint, resumed)
    torch.manual_seed(p.seed)
    images = open_unlabeled(prepared.unlabeled)
    encoder = Encoder(p.backbone, {"width": p.width, "image_size": size}, size)
    method = build_method(p.method, encoder, cfg.augment.policy(size), **p.method_params)
    tracker.set_tags(
        {"git_commit": git_commit(layout.root), "data_version": prepared.data_version, "method": p.method, "backbone": p.backbone, "device": p.device, "images": len(images)}
    )
    log_training_dataset("unlabeled", prepared.data_version, cfg.data.unlabeled, len(images), tracker.run_id)
    log.info("pretraining %s on %d images, %s, %s", p.method, len(images), p.device, p.backbone)

    def on_epoch_end(stats: EpochStats) -> None:
        tracker.log_metrics({f"pretrain/{k}": v for k, v in stats.as_metrics().items()}, step=stats.epoch)
        log.info("epoch %d/%d: loss %.4f, %.0f img/s", stats.epoch, p.epochs, stats.loss, stats.images_per_s)

    extra = {"run_id": tracker.run_id}
    history = train(method, images, p.settings(), torch.device(p.device), on_epoch_end, checkpoint, ctx.progress, extra=extra)
    rows = [{"epoch": s.epoch, **s.as_metrics()} for s in history]
    write_rows(layout.pretrain_reports / "history.csv", rows)
    title = f"{p.method} pretraining ({p.backbone}, {len(images)} images), per epoch"
    tracker.log_artifact(training_curves(rows, layout.pretrain_reports / "curves.png", title), "plots")
    with staged_dir(layout.encoder) as staging:
        save_encoder(method.encoder, staging, extra={"method": p.method, "data_version": prepared.data_version, "run_id": tracker.run_id})
    checkpoint.unlink(missing_ok=True)
    return Pretrained(str(layout.encoder), tracker.run_id, file_sha256(layout.encoder / "weights.pt"), p.method, tuple(rows))
