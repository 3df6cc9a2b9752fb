"""The evaluation protocol, shared by the evaluate stage and the promotion gate's
re-evaluation of a champion: frozen features, a linear probe (L2 strength chosen on a
validation split) and a weighted kNN, for the SSL encoder, the same architecture at random
initialisation and raw pixels; and the label-efficiency curve (fine-tuned vs from scratch).
"""

from __future__ import annotations

import hashlib
import json
import logging

import torch

from ssl_models.encoder import Encoder
from ssl_models.evaluation import extract_features, knn_accuracy, linear_probe, raw_pixel_features
from ssl_models.finetune import FinetuneSettings, finetune_accuracy, stratified_subset
from tasks.core.config import EvaluateConfig

ENCODERS = ("ssl", "random_init", "raw_pixels")
log = logging.getLogger(__name__)


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
    scores = {}
    for name, (train_x, test_x) in features.items():
        scores[name] = score(train_x, labeled["train_labels"], test_x, labeled["test_labels"], cfg)
        log.info("%s: linear probe %.3f, kNN %.3f", name, scores[name]["linear_probe_acc"], scores[name]["knn_acc"])
    return scores


def protocol_version(cfg: EvaluateConfig) -> str:
    """A short hash of the probe settings: scores with different ones are not comparable."""
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
    encoder: Encoder,
    labeled: dict[str, torch.Tensor],
    num_classes: int,
    fractions: list[float],
    settings: FinetuneSettings,
    device: torch.device,
    progress: bool = False,
) -> list[dict[str, float]]:
    """Fine-tuned SSL encoder vs the same architecture from scratch, per label fraction."""
    train = (labeled["train_images"], labeled["train_labels"])
    test = (labeled["test_images"], labeled["test_labels"])
    rows = []
    for fraction in fractions:
        bar = f"fine-tune, {percent(fraction)} labels" if progress else None
        ssl_acc, _ = finetune_accuracy(encoder, train, test, num_classes, settings, fraction, random_init=False, device=device, progress=bar)
        bar = f"from scratch, {percent(fraction)} labels" if progress else None
        scratch_acc, _ = finetune_accuracy(encoder, train, test, num_classes, settings, fraction, random_init=True, device=device, progress=bar)
        labels = len(stratified_subset(train[1], fraction, settings.seed))
        rows.append({"fraction": fraction, "labels": labels, "ssl_finetune": ssl_acc, "scratch": scratch_acc})
        log.info("%d labels (%s): fine-tuned %.3f, from scratch %.3f", labels, percent(fraction), ssl_acc, scratch_acc)
    return rows


def percent(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def summary_table(metrics: dict) -> str:
    lines = [f"{'encoder':<12} {'linear probe':>12} {'kNN':>8}", "-" * 34]
    lines += [f"{name:<12} {metrics[name]['linear_probe_acc']:>12.3f} {metrics[name]['knn_acc']:>8.3f}" for name in (*ENCODERS, "tfidf") if name in metrics]  # tfidf: text's bag-of-words baseline
    if "supervised_scratch" in metrics:
        lines.append(f"supervised reference (same architecture, from scratch, all labels): {metrics['supervised_scratch']['test_acc']:.3f}")
    if "label_efficiency" in metrics:
        curve = metrics["label_efficiency"]
        lines += ["", f"{'labels':<12} {'fine-tuned':>12} {'scratch':>8}", "-" * 34]
        lines += [f"{share:<12} {curve['ssl_finetune'][share]:>12.3f} {curve['scratch'][share]:>8.3f}" for share in curve["ssl_finetune"]]
    return "\n".join(lines)


def log_evaluation(tracker, metrics: dict, encoders: tuple[str, ...], rows: list[dict], files: list, plots: list) -> None:
    """An evaluation into its MLflow run: probe/kNN per encoder, the supervised reference, the
    label-efficiency curve (one per initialisation, x = number of labels: MLflow draws it as a
    chart), the files (metrics.json, the curve's CSV) and the pictures."""
    tracker.log_metrics({f"{name}/{key}": value for name in encoders for key, value in metrics[name].items()})
    tracker.log_metrics({"supervised_scratch/test_acc": metrics["supervised_scratch"]["test_acc"]})
    for row in rows:
        tracker.log_metrics({f"label_efficiency/{key}": row[key] for key in ("ssl_finetune", "scratch")}, step=row["labels"])
    for path in files:
        tracker.log_artifact(path)
    for plot in plots:
        tracker.log_artifact(plot, "plots")
