"""Pretrain stage: train the chosen SSL method on the prepared images.

Opens the pipeline's MLflow run (params, lineage tags, per-epoch metrics, curves),
writes a checkpoint every epoch and the encoder (weights.pt + config.json) at the end.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from ssl_models.encoder import Encoder, save_encoder
from ssl_models.methods import build_method, default_backbone, method_class
from ssl_models.training import EpochStats, TrainSettings, pretrain
from tasks.augment import view_policy
from tasks.config import PipelineConfig
from tasks.layout import Layout
from tasks.lineage import dvc_hash, git_commit
from tasks.plots import training_curves
from tasks.tracking import save_run_id, use_store
from tasks.validate import log_validation

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_images(images_npy: Path) -> torch.Tensor:
    """(N, H, W, 3) uint8 on disk -> (N, 3, H, W) uint8 tensor."""
    return torch.from_numpy(np.load(images_npy)).permute(0, 3, 1, 2).contiguous()


def build_encoder(cfg: PipelineConfig) -> Encoder:
    backbone = default_backbone(cfg.pretrain.method) if cfg.pretrain.backbone == "auto" else cfg.pretrain.backbone
    return Encoder(backbone, {"width": cfg.pretrain.width, "image_size": cfg.data.image_size}, cfg.data.image_size)


def train_settings(cfg: PipelineConfig) -> TrainSettings:
    """Optimiser settings; "auto" takes the method's ``recommended`` value, else the default."""
    p = cfg.pretrain
    recommended = getattr(method_class(p.method), "recommended", {})
    defaults = TrainSettings()

    def pick(key: str):
        value = getattr(p, key)
        return value if value != "auto" else recommended.get(key, getattr(defaults, key))

    return TrainSettings(
        epochs=p.epochs, batch_size=p.batch_size, lr=pick("lr"), weight_decay=pick("weight_decay"),
        warmup_epochs=p.warmup_epochs, optimizer=pick("optimizer"), seed=p.seed,
    )  # fmt: skip


def _write_history(history: list[EpochStats], path: Path) -> list[dict]:
    rows = [{"epoch": s.epoch, **s.as_metrics()} for s in history]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def pretrain_stage(layout: Layout, cfg: PipelineConfig, flow_run_id: str | None = None, progress: bool = True) -> str:
    """Train, save the encoder, and return the id of the MLflow run that records it."""
    import mlflow

    torch.manual_seed(cfg.pretrain.seed)
    images = load_images(layout.unlabeled / "images.npy")
    device = resolve_device(cfg.pretrain.device)
    encoder = build_encoder(cfg)
    method = build_method(cfg.pretrain.method, encoder, view_policy(cfg.augment, cfg.data.image_size), **cfg.pretrain.method_params)
    data_version = dvc_hash(layout.unlabeled)
    tags = {
        "git_commit": git_commit(layout.root),
        "data_version": data_version,
        "method": cfg.pretrain.method,
        "backbone": encoder.config["backbone"],
        "device": str(device),
        "images": str(len(images)),
    }
    if flow_run_id:
        tags["prefect_flow_run_id"] = flow_run_id
    use_store(layout.root, cfg.register.experiment)
    with mlflow.start_run(run_name=f"{cfg.pretrain.method}-{data_version[:8]}", tags=tags) as run:
        mlflow.log_params(cfg.flat())
        log_validation(layout)  # reports, Data Docs, quarantine list; counts per fault and statistics as metrics
        if (layout.reports / "augment_preview.png").exists():
            mlflow.log_artifact(str(layout.reports / "augment_preview.png"), artifact_path="augment")
        log.info("pretraining %s on %d images, %s, %s", cfg.pretrain.method, len(images), device, encoder.config["backbone"])

        def on_epoch_end(stats: EpochStats) -> None:
            mlflow.log_metrics({f"pretrain/{k}": v for k, v in stats.as_metrics().items()}, step=stats.epoch)

        history = pretrain(method, images, train_settings(cfg), device, on_epoch_end, layout.checkpoint, progress)
        rows = _write_history(history, layout.reports / "pretrain" / "history.csv")
        curves = training_curves(rows, layout.reports / "pretrain" / "curves.png")
        mlflow.log_artifact(str(curves), artifact_path="plots")
        save_encoder(method.encoder, layout.encoder, extra={"method": cfg.pretrain.method, "data_version": data_version})
        run_id = run.info.run_id
    save_run_id(layout.run_file, run_id)  # written last: later stages only ever resume a finished pretraining
    return run_id


# The Prefect task is the stage function as-is. No result caching: inputs are a layout
# and a config, and DVC already decides what is stale from content hashes.
pretrain_task = task(pretrain_stage, name="pretrain", cache_policy=NO_CACHE)
