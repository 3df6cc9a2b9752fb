"""Evaluate stage: frozen-feature linear probe and kNN, with baselines in the same run.

Three encoders go through the same protocol on the labeled evaluation set: the SSL
encoder, the same architecture at random initialisation, and raw pixels. A gain of
SSL is only a gain against these.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from ssl_models.encoder import Encoder, load_encoder
from ssl_models.evaluation import (
    extract_features,
    knn_accuracy,
    linear_probe,
    raw_pixel_features,
)
from tasks.config import EvaluateConfig, PipelineConfig
from tasks.layout import Layout
from tasks.plots import accuracy_bars
from tasks.pretrain import load_images, resolve_device
from tasks.tracking import resumed_run

ENCODERS = ("ssl", "random_init", "raw_pixels")


def load_labeled(labeled_dir: Path) -> dict[str, torch.Tensor]:
    data = {f"{split}_images": load_images(labeled_dir / f"{split}_images.npy") for split in ("train", "test")}
    data |= {f"{split}_labels": torch.from_numpy(np.load(labeled_dir / f"{split}_labels.npy")) for split in ("train", "test")}
    return data


def score(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, cfg: EvaluateConfig) -> dict[str, float]:
    probe = linear_probe(train_x, train_y, test_x, test_y, cfg.probe_weight_decays, cfg.probe_validation_fraction)
    knn = knn_accuracy(train_x, train_y, test_x, test_y, cfg.knn_k, cfg.knn_temperature)
    return {"linear_probe_acc": probe.accuracy, "knn_acc": knn, "probe_weight_decay": probe.weight_decay}


def evaluate_encoders(encoder: Encoder, labeled: dict[str, torch.Tensor], cfg: EvaluateConfig, device: torch.device, seed: int = 0) -> dict[str, dict[str, float]]:
    torch.manual_seed(seed)
    random_init = Encoder(encoder.config["backbone"], encoder.config["backbone_kwargs"], encoder.config["image_size"])
    features = {
        name: (extract_features(model, labeled["train_images"], device=device), extract_features(model, labeled["test_images"], device=device))
        for name, model in (("ssl", encoder), ("random_init", random_init))
    }
    features["raw_pixels"] = (raw_pixel_features(labeled["train_images"]), raw_pixel_features(labeled["test_images"]))
    return {name: score(train_x, labeled["train_labels"], test_x, labeled["test_labels"], cfg) for name, (train_x, test_x) in features.items()}


def summary_table(metrics: dict[str, dict[str, float]]) -> str:
    lines = [f"{'encoder':<12} {'linear probe':>12} {'kNN':>8}", "-" * 34]
    lines += [f"{name:<12} {m['linear_probe_acc']:>12.3f} {m['knn_acc']:>8.3f}" for name, m in metrics.items()]
    return "\n".join(lines)


def evaluate_stage(layout: Layout, cfg: PipelineConfig) -> dict[str, dict[str, float]]:
    """Write ``reports/metrics.json`` and log the same numbers to the pipeline's run."""
    import mlflow

    encoder = load_encoder(layout.encoder)
    device = resolve_device(cfg.pretrain.device)
    metrics = evaluate_encoders(encoder, load_labeled(layout.labeled), cfg.evaluate, device, cfg.pretrain.seed)
    out = layout.reports / "metrics.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=2))
    bars = accuracy_bars(metrics, layout.reports / "evaluation.png")
    with resumed_run(layout.root, layout.run_file, cfg.register.experiment):
        mlflow.log_metrics({f"{name}/{key}": value for name, m in metrics.items() for key, value in m.items()})
        mlflow.log_artifact(str(out))
        mlflow.log_artifact(str(bars), artifact_path="plots")
    return metrics


# The Prefect task is the stage function as-is. No result caching: inputs are a layout
# and a config, and DVC already decides what is stale from content hashes.
evaluate_task = task(evaluate_stage, name="evaluate", cache_policy=NO_CACHE)
