"""Evaluate stage: frozen-feature linear probe and kNN, with baselines in the same run.

Three encoders go through the same protocol on the labeled evaluation set: the SSL
encoder, the same architecture at random initialisation, and raw pixels. A gain of
SSL is only a gain against these.

Then label efficiency: the SSL encoder fine-tuned, and the same architecture trained
from scratch, on 1%, 10% and 100% of the train labels (``evaluate.label_fractions``) with
the ``finetune`` recipe; scratch on all labels is the supervised reference. And a t-SNE
picture of the SSL encoder's test embeddings.

    reports/metrics.json           probe/kNN per encoder, supervised_scratch, label_efficiency
    reports/label_efficiency.csv   fraction, labels, ssl_finetune, scratch (a DVC plot)
    reports/label_efficiency.png, reports/embeddings.png, reports/evaluation.png
"""

from __future__ import annotations

import csv
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
    project_2d,
    raw_pixel_features,
)
from ssl_models.finetune import FinetuneSettings, finetune_accuracy, stratified_subset
from tasks.config import EvaluateConfig, FinetuneConfig, PipelineConfig
from tasks.layout import Layout
from tasks.plots import accuracy_bars, embedding_plot, label_efficiency_plot
from tasks.pretrain import load_images, resolve_device
from tasks.tracking import resumed_run

ENCODERS = ("ssl", "random_init", "raw_pixels")


def load_labeled(labeled_dir: Path) -> dict[str, torch.Tensor]:
    data = {f"{split}_images": load_images(labeled_dir / f"{split}_images.npy") for split in ("train", "test")}
    data |= {f"{split}_labels": torch.from_numpy(np.load(labeled_dir / f"{split}_labels.npy")) for split in ("train", "test")}
    return data


def load_classes(labeled_dir: Path) -> list[str]:
    return json.loads((labeled_dir / "classes.json").read_text())


def finetune_settings(cfg: FinetuneConfig) -> FinetuneSettings:
    return FinetuneSettings(
        steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps,
        crop_scale_min=cfg.crop_scale_min, flip_p=cfg.flip_p, seed=cfg.seed,
    )  # fmt: skip


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


def protocol_version(cfg: EvaluateConfig) -> str:
    """A short hash of the probe settings: scores with different ones are not comparable."""
    import hashlib

    probe = {"weight_decays": cfg.probe_weight_decays, "validation_fraction": cfg.probe_validation_fraction}
    return hashlib.sha256(json.dumps(probe, sort_keys=True).encode()).hexdigest()[:12]


def probe_accuracy(encoder: Encoder, labeled: dict[str, torch.Tensor], cfg: EvaluateConfig, device: torch.device) -> float:
    """The SSL row's linear-probe accuracy, by exactly the protocol of :func:`evaluate_encoders`.

    The promotion gate uses it to re-evaluate a champion that was scored on other data.
    """
    train_x = extract_features(encoder, labeled["train_images"], device=device)
    test_x = extract_features(encoder, labeled["test_images"], device=device)
    return score(train_x, labeled["train_labels"], test_x, labeled["test_labels"], cfg)["linear_probe_acc"]


def label_efficiency(
    encoder: Encoder, labeled: dict[str, torch.Tensor], num_classes: int, fractions: list[float], settings: FinetuneSettings, device: torch.device
) -> list[dict[str, float]]:
    """Fine-tuned SSL encoder vs the same architecture from scratch, per label fraction."""
    train = (labeled["train_images"], labeled["train_labels"])
    test = (labeled["test_images"], labeled["test_labels"])
    rows = []
    for fraction in fractions:
        ssl_acc, _ = finetune_accuracy(encoder, train, test, num_classes, settings, fraction, random_init=False, device=device)
        scratch_acc, _ = finetune_accuracy(encoder, train, test, num_classes, settings, fraction, random_init=True, device=device)
        labels = len(stratified_subset(train[1], fraction, settings.seed))
        rows.append({"fraction": fraction, "labels": labels, "ssl_finetune": ssl_acc, "scratch": scratch_acc})
    return rows


def _percent(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def summary_table(metrics: dict) -> str:
    lines = [f"{'encoder':<12} {'linear probe':>12} {'kNN':>8}", "-" * 34]
    lines += [f"{name:<12} {metrics[name]['linear_probe_acc']:>12.3f} {metrics[name]['knn_acc']:>8.3f}" for name in ENCODERS if name in metrics]
    if "supervised_scratch" in metrics:
        lines.append(f"supervised reference (same architecture, from scratch, all labels): {metrics['supervised_scratch']['test_acc']:.3f}")
    if "label_efficiency" in metrics:
        curve = metrics["label_efficiency"]
        lines += ["", f"{'labels':<12} {'fine-tuned':>12} {'scratch':>8}", "-" * 34]
        lines += [f"{share:<12} {curve['ssl_finetune'][share]:>12.3f} {curve['scratch'][share]:>8.3f}" for share in curve["ssl_finetune"]]
    return "\n".join(lines)


def _write_rows(rows: list[dict], path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def embedding_picture(encoder: Encoder, labeled: dict[str, torch.Tensor], classes: list[str], cfg: EvaluateConfig, device: torch.device, path: Path, seed: int = 0) -> Path:
    """t-SNE of (a random subset of) the SSL encoder's test embeddings, coloured by class."""
    subset = torch.randperm(len(labeled["test_images"]), generator=torch.Generator().manual_seed(seed))[: cfg.embedding_points]
    features = extract_features(encoder, labeled["test_images"][subset], device=device)
    points = project_2d(features, seed).tolist()
    title = f"t-SNE of SSL test embeddings ({len(subset)} images)"
    return embedding_plot(points, labeled["test_labels"][subset].tolist(), classes, path, title)


def evaluate_stage(layout: Layout, cfg: PipelineConfig) -> dict:
    """Write ``reports/metrics.json`` (+ curve, pictures) and log them to the pipeline's run."""
    import mlflow

    encoder = load_encoder(layout.encoder)
    device = resolve_device(cfg.pretrain.device)
    labeled = load_labeled(layout.labeled)
    classes = load_classes(layout.labeled)
    metrics: dict = evaluate_encoders(encoder, labeled, cfg.evaluate, device, cfg.pretrain.seed)
    settings = finetune_settings(cfg.finetune)
    rows = label_efficiency(encoder, labeled, len(classes), cfg.evaluate.label_fractions, settings, device)
    # The curve always ends at 100% (the config sees to it): from scratch there is the supervised reference.
    full = rows[-1]["scratch"]
    metrics["supervised_scratch"] = {"test_acc": full, "labels": rows[-1]["labels"]}
    metrics["label_efficiency"] = {key: {_percent(row["fraction"]): row[key] for row in rows} for key in ("ssl_finetune", "scratch")}

    reports = layout.reports
    reports.mkdir(parents=True, exist_ok=True)
    out = reports / "metrics.json"
    out.write_text(json.dumps(metrics, indent=2))
    curve_csv = _write_rows(rows, reports / "label_efficiency.csv")
    plots = [
        accuracy_bars({name: metrics[name] for name in ENCODERS}, reports / "evaluation.png"),
        label_efficiency_plot(rows, reports / "label_efficiency.png"),
        embedding_picture(encoder, labeled, classes, cfg.evaluate, device, reports / "embeddings.png", cfg.pretrain.seed),
    ]
    with resumed_run(layout.root, layout.run_file, cfg.register.experiment):
        mlflow.log_metrics({f"{name}/{key}": value for name in ENCODERS for key, value in metrics[name].items()})
        mlflow.log_metric("supervised_scratch/test_acc", full)
        # One curve per initialisation, x = number of labels: MLflow draws it as a chart.
        for row in rows:
            for key in ("ssl_finetune", "scratch"):
                mlflow.log_metric(f"label_efficiency/{key}", row[key], step=row["labels"])
        mlflow.log_artifact(str(out))
        mlflow.log_artifact(str(curve_csv))
        for plot in plots:
            mlflow.log_artifact(str(plot), artifact_path="plots")
    return metrics


# The Prefect task is the stage function as-is. No result caching: inputs are a layout
# and a config, and DVC already decides what is stale from content hashes.
evaluate_task = task(evaluate_stage, name="evaluate", cache_policy=NO_CACHE)
