"""The evaluation protocol, one for every modality: the evaluate stage's scores and the promotion
gate's re-scoring of a champion.

Given features (the modality computes them: tasks/evaluate.py asks its part), every row goes
through the same: a linear probe (L2 strength chosen on a validation split) and a weighted
kNN (ssl_models/evaluation.py). And the label-efficiency curve: the SSL encoder fine-tuned vs
the same architecture from scratch, per share of the train labels, by the one fine-tuning
loop (ssl_models/finetune.py).

Which rows there are is the modality's: ``ssl`` and ``random_init``, then its baselines
(images ``raw_pixels``, text ``tfidf``). They arrive as the keys of ``features`` and are read
back from the metrics (:func:`scored_rows`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

import torch
from torch import nn

from ssl_models.evaluation import knn_accuracy, linear_probe
from ssl_models.finetune import Augment, Features, FinetuneSettings, Rows, finetune_accuracy, stratified_subset
from tasks.core.config import EvaluateConfig

log = logging.getLogger(__name__)

Split = tuple[Rows, torch.Tensor]  # (rows: what the modality's features take, labels (N,) int64)


@dataclass(frozen=True)
class Labeled:
    """The labeled evaluation set as the protocol sees it (a modality's part loads it)."""

    train: Split
    test: Split
    classes: list[str]


def score(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, cfg: EvaluateConfig
) -> dict[str, float]:
    """One row: linear probe and kNN on frozen features."""
    probe = linear_probe(train_x, train_y, test_x, test_y, cfg.probe_weight_decays, cfg.probe_validation_fraction)
    knn = knn_accuracy(train_x, train_y, test_x, test_y, cfg.knn_k, cfg.knn_temperature)
    return {"linear_probe_acc": probe.accuracy, "knn_acc": knn, "probe_weight_decay": probe.weight_decay}


def split_features(features: Features, model: nn.Module, labeled: Labeled, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """``model``'s (train, test) features by the modality's ``features``."""
    return features(model, labeled.train[0], device=device), features(model, labeled.test[0], device=device)


def score_features(
    features: dict[str, tuple[torch.Tensor, torch.Tensor]], labeled: Labeled, cfg: EvaluateConfig
) -> dict[str, dict[str, float]]:
    """Every row by the same protocol: ``features`` {row: (train_x, test_x)}, in the order of the report."""
    scores = {}
    for name, (train_x, test_x) in features.items():
        scores[name] = score(train_x, labeled.train[1], test_x, labeled.test[1], cfg)
        log.info("%s: linear probe %.3f, kNN %.3f", name, scores[name]["linear_probe_acc"], scores[name]["knn_acc"])
    return scores


def probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, cfg: EvaluateConfig) -> float:
    """A row's linear-probe accuracy by exactly the protocol of :func:`score_features`.

    The promotion gate re-scores a champion that was scored on other data with it, on the
    champion's features (the modality's) of the current labeled set.
    """
    return score(train_x, train_y, test_x, test_y, cfg)["linear_probe_acc"]


def protocol_version(cfg: EvaluateConfig) -> str:
    """A short hash of the probe settings: scores with different ones are not comparable."""
    probe = {"weight_decays": cfg.probe_weight_decays, "validation_fraction": cfg.probe_validation_fraction}
    return hashlib.sha256(json.dumps(probe, sort_keys=True).encode()).hexdigest()[:12]


def label_efficiency(
    encoder: nn.Module,
    labeled: Labeled,
    fractions: list[float],
    settings: FinetuneSettings,
    device: torch.device | str,
    *,
    features: Features,
    augment: Augment | None,
    progress: bool = False,
) -> list[dict[str, float]]:
    """Fine-tuned SSL encoder vs the same architecture from scratch, per label fraction: rows
    {fraction, labels, ssl_finetune, scratch}. ``features``, ``augment``: the modality's."""
    rows = []
    for fraction in fractions:
        accuracy = {}
        for key, random_init, what in (("ssl_finetune", False, "fine-tune"), ("scratch", True, "from scratch")):
            bar = f"{what}, {percent(fraction)} labels" if progress else None
            accuracy[key], _ = finetune_accuracy(
                encoder,
                labeled.train,
                labeled.test,
                len(labeled.classes),
                settings,
                fraction,
                random_init,
                device,
                bar,
                features=features,
                augment=augment,
            )
        labels = len(stratified_subset(labeled.train[1], fraction, settings.seed))
        rows.append({"fraction": fraction, "labels": labels, **accuracy})
        log.info(
            "%d labels (%s): fine-tuned %.3f, from scratch %.3f", labels, percent(fraction), accuracy["ssl_finetune"], accuracy["scratch"]
        )
    return rows


def curve_metrics(rows: list[dict[str, float]]) -> dict[str, dict]:
    """metrics.json's ``supervised_scratch`` (the curve always ends at 100%, the config sees to it:
    from scratch there is the supervised reference) and ``label_efficiency`` ({"ssl_finetune": {"10%": acc, ...}, "scratch": {...}})."""
    return {
        "supervised_scratch": {"test_acc": rows[-1]["scratch"], "labels": rows[-1]["labels"]},
        "label_efficiency": {key: {percent(row["fraction"]): row[key] for row in rows} for key in ("ssl_finetune", "scratch")},
    }


def percent(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def scored_rows(metrics: dict) -> list[str]:
    """The rows of an evaluation's metrics that have probe and kNN scores, in their order."""
    return [name for name, row in metrics.items() if isinstance(row, dict) and "linear_probe_acc" in row]


def summary_table(metrics: dict) -> str:
    lines = [f"{'encoder':<12} {'linear probe':>12} {'kNN':>8}", "-" * 34]
    lines += [f"{name:<12} {metrics[name]['linear_probe_acc']:>12.3f} {metrics[name]['knn_acc']:>8.3f}" for name in scored_rows(metrics)]
    if "supervised_scratch" in metrics:
        lines.append(f"supervised reference (same architecture, from scratch, all labels): {metrics['supervised_scratch']['test_acc']:.3f}")
    if "label_efficiency" in metrics:
        curve = metrics["label_efficiency"]
        lines += ["", f"{'labels':<12} {'fine-tuned':>12} {'scratch':>8}", "-" * 34]
        lines += [f"{share:<12} {curve['ssl_finetune'][share]:>12.3f} {curve['scratch'][share]:>8.3f}" for share in curve["ssl_finetune"]]
    return "\n".join(lines)


def log_evaluation(tracker, metrics: dict, rows: list[dict], files: list, plots: list) -> None:
    """An evaluation into its MLflow run: probe/kNN per row, the supervised reference, the
    label-efficiency curve as a table (``label_efficiency.json``: fraction, labels, ssl_finetune,
    scratch) beside its picture (``plots/label_efficiency.png``), not as metric steps (a chart
    over "steps" 20, 200, 2000 read as training curves), and its headline at the fewest labels
    (``label_efficiency/fewest_labels/*``: what pretraining buys where labels are scarce); the
    files (metrics.json, the curve's CSV) and the pictures."""
    tracker.log_metrics({f"{name}/{key}": value for name in scored_rows(metrics) for key, value in metrics[name].items()})
    tracker.log_metrics({"supervised_scratch/test_acc": metrics["supervised_scratch"]["test_acc"]})
    fewest = min(rows, key=lambda row: row["labels"])
    tracker.log_metrics({f"label_efficiency/fewest_labels/{key}": fewest[key] for key in ("ssl_finetune", "scratch")})
    tracker.log_table([{**row, "share": percent(row["fraction"])} for row in rows], "label_efficiency.json")
    for path in files:
        tracker.log_artifact(path)
    for plot in plots:
        tracker.log_artifact(plot, "plots")
