"""Evaluate stage: frozen-feature linear probe and kNN, with baselines in the same run; label efficiency.

This is the shell, what every modality does once; ``ctx.part`` is the modality's part
(tasks/image/evaluate.py, tasks/text/evaluate.py), which supplies what only it knows
(:class:`EvaluatePart`). On the labeled evaluation set every row goes through the one
protocol (tasks/evaluation/scoring.py): the SSL encoder, the same architecture at random
initialisation, and the modality's baselines (images: raw pixels; text: TF-IDF). A gain of SSL
is only a gain against these. Then label efficiency: the SSL encoder fine-tuned, and the same
architecture trained from scratch, on 1%, 10% and 100% of the train labels
(``evaluate.label_fractions``) by the one fine-tuning loop (ssl_models/finetune.py) with the
``finetune`` recipe (``optimizer`` and ``lr`` null: the modality's); scratch on all labels is the
supervised reference. And a t-SNE picture of the SSL test embeddings.

    reports/metrics.json           probe/kNN per row, supervised_scratch, label_efficiency,
                                   and which encoder was scored (weights sha256, run id)
    reports/label_efficiency.csv   fraction, labels, ssl_finetune, scratch (a DVC plot)
    reports/label_efficiency.png, reports/embeddings.png, reports/evaluation.png
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from ssl_models.evaluation import project_2d
from ssl_models.finetune import Augment, FinetuneSettings, Rows, random_init_like
from tasks.core.atomic import write_json, write_rows
from tasks.core.config import EvaluateConfig
from tasks.core.context import StageContext
from tasks.core.plots import accuracy_bars, embedding_plot, label_efficiency_plot
from tasks.core.results import Evaluation, Prepared, Pretrained
from tasks.evaluation.scoring import (
    Labeled,
    curve_metrics,
    label_efficiency,
    log_evaluation,
    percent,
    score_features,
    scored_rows,
    split_features,
)

log = logging.getLogger(__name__)


class EvaluatePart(Protocol):
    """What a modality's part of evaluate supplies (module-level names of tasks/<modality>/evaluate.py)."""

    UNIT: str  # what a row of its data is, for the pictures: "images", "documents"
    FINETUNE: FinetuneSettings  # its fine-tuning recipe; the finetune.* keys set in params override it

    def load_labeled(self, directory: str | Path) -> Labeled:
        """The labeled evaluation set ingest wrote (data/prepared/labeled), with its class names."""
        ...

    def load_encoder(self, directory: str | Path) -> nn.Module:
        """The encoder pretrain wrote (models/encoder); it has ``config``, ``feature_dim`` and
        ``from_config`` (the same architecture, freshly initialised: the random_init row)."""
        ...

    def features(self, model: nn.Module, rows: Rows, device: torch.device | str = "cpu") -> torch.Tensor:
        """``model``'s outputs on ``rows`` (N, D) float32 on the CPU, eval mode, no augmentation:
        an encoder's features, a classifier's logits."""
        ...

    def baselines(self, encoder: nn.Module, labeled: Labeled) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Its baseline rows' (train, test) features, fitted on train only: {"raw_pixels": ...}, {"tfidf": ...}."""
        ...

    def augment(self, settings: FinetuneSettings) -> Augment | None:
        """What a fine-tuning batch becomes on the device (images: [0, 1] floats, crop, flip); None: as read."""
        ...


def score_encoders(
    part: EvaluatePart, encoder: nn.Module, labeled: Labeled, cfg: EvaluateConfig, device: torch.device | str = "cpu", seed: int = 0
) -> tuple[dict[str, dict[str, float]], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Probe and kNN for ``ssl``, ``random_init`` (seeded with ``seed``) and the part's baselines:
    (the scores by row, the features they were computed on)."""
    models = {"ssl": encoder, "random_init": random_init_like(encoder, seed)}
    features = {name: split_features(part.features, model, labeled, device) for name, model in models.items()}
    features |= part.baselines(encoder, labeled)
    return score_features(features, labeled, cfg), features


def embedding_picture(
    part: EvaluatePart, test_features: torch.Tensor, labeled: Labeled, cfg: EvaluateConfig, path: Path, seed: int = 0
) -> Path:
    """t-SNE of (a random subset of) the SSL encoder's test embeddings, coloured by class."""
    labels = labeled.test[1]
    subset = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[: cfg.embedding_points]
    points = project_2d(test_features[subset], seed).tolist()
    title = f"t-SNE of SSL test embeddings ({len(subset)} {part.UNIT})"
    return embedding_plot(points, labels[subset].tolist(), labeled.classes, path, title)


def evaluate(ctx: StageContext, prepared: Prepared, pretrained: Pretrained) -> Evaluation:
    """Score the encoder, write ``reports/metrics.json`` (+ curve, pictures), log them to the run."""
    part: EvaluatePart = ctx.part  # type: ignore[assignment]
    layout, cfg = ctx.layout, ctx.cfg
    device = torch.device(cfg.pretrain.device)
    encoder, labeled = part.load_encoder(pretrained.encoder_dir), part.load_labeled(prepared.labeled)
    scores, features = score_encoders(part, encoder, labeled, cfg.evaluate, device, cfg.pretrain.seed)

    settings = cfg.finetune.settings(part.FINETUNE)
    log.info(
        "label efficiency: fine-tuning at %s of the labels (minutes on a CPU)", ", ".join(percent(f) for f in cfg.evaluate.label_fractions)
    )
    augment = part.augment(settings)
    rows = label_efficiency(
        encoder, labeled, cfg.evaluate.label_fractions, settings, device, features=part.features, augment=augment, progress=ctx.progress
    )
    metrics: dict = scores | curve_metrics(rows)
    points = (f"{percent(row['fraction'])} fine-tuned {row['ssl_finetune']:.3f} vs scratch {row['scratch']:.3f}" for row in rows)
    log.info("label efficiency: %s", "; ".join(points))
    # Which encoder these numbers belong to: register refuses to file them under another one.
    metrics["encoder"] = {"sha256": pretrained.weights_sha256, "run_id": pretrained.run_id}

    reports = layout.reports
    out = write_json(layout.metrics, metrics)
    curve_csv = write_rows(reports / "label_efficiency.csv", rows)
    plots = [
        accuracy_bars(
            {name: metrics[name] for name in scored_rows(metrics)},
            reports / "evaluation.png",
            chance=1 / len(labeled.classes),
            supervised=metrics["supervised_scratch"]["test_acc"],
        ),
        label_efficiency_plot(rows, reports / "label_efficiency.png"),
        embedding_picture(part, features["ssl"][1], labeled, cfg.evaluate, reports / "embeddings.png", cfg.pretrain.seed),
    ]
    log_evaluation(ctx.tracker, metrics, rows, [out, curve_csv], plots)
    return Evaluation(metrics, pretrained.weights_sha256, pretrained.run_id)
