"""Evaluate stage: frozen-feature linear probe and kNN, with baselines in the same run.

Three encoders go through the same protocol (tasks/evaluation/scoring.py) on the labeled evaluation
set: the SSL encoder, the same architecture at random initialisation, and raw pixels. A
gain of SSL is only a gain against these. Then label efficiency: the SSL encoder
fine-tuned, and the same architecture trained from scratch, on 1%, 10% and 100% of the
train labels (``evaluate.label_fractions``) with the ``finetune`` recipe; scratch on all
labels is the supervised reference. And a t-SNE picture of the SSL test embeddings.

    reports/metrics.json           probe/kNN per encoder, supervised_scratch, label_efficiency,
                                   and which encoder was scored (weights sha256, run id)
    reports/label_efficiency.csv   fraction, labels, ssl_finetune, scratch (a DVC plot)
    reports/label_efficiency.png, reports/embeddings.png, reports/evaluation.png
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ssl_models.encoder import Encoder, load_encoder
from ssl_models.evaluation import extract_features, project_2d
from tasks.core.atomic import write_json, write_rows
from tasks.core.config import EvaluateConfig
from tasks.core.context import StageContext
from tasks.core.plots import accuracy_bars, embedding_plot, label_efficiency_plot
from tasks.image.prepared import load_classes, load_labeled
from tasks.core.results import Evaluation, Prepared, Pretrained
from tasks.evaluation.scoring import ENCODERS, evaluate_encoders, label_efficiency, log_evaluation, percent

log = logging.getLogger(__name__)


def embedding_picture(encoder: Encoder, labeled: dict[str, torch.Tensor], classes: list[str], cfg: EvaluateConfig, device: torch.device, path: Path, seed: int = 0) -> Path:
    """t-SNE of (a random subset of) the SSL encoder's test embeddings, coloured by class."""
    subset = torch.randperm(len(labeled["test_images"]), generator=torch.Generator().manual_seed(seed))[: cfg.embedding_points]
    features = extract_features(encoder, labeled["test_images"][subset], device=device)
    points = project_2d(features, seed).tolist()
    title = f"t-SNE of SSL test embeddings ({len(subset)} images)"
    return embedding_plot(points, labeled["test_labels"][subset].tolist(), classes, path, title)


def evaluate(ctx: StageContext, prepared: Prepared, pretrained: Pretrained) -> Evaluation:
    """Score the encoder, write ``reports/metrics.json`` (+ curve, pictures), log them to the run."""
    layout, cfg, tracker = ctx.layout, ctx.cfg, ctx.tracker
    encoder = load_encoder(pretrained.encoder_dir)
    device = torch.device(cfg.pretrain.device)
    labeled = load_labeled(prepared.labeled)
    classes = load_classes(prepared.labeled)
    metrics: dict = evaluate_encoders(encoder, labeled, cfg.evaluate, device, cfg.pretrain.seed)
    shares = ", ".join(percent(f) for f in cfg.evaluate.label_fractions)
    log.info("label efficiency: fine-tuning at %s of the labels (minutes on a CPU)", shares)
    rows = label_efficiency(encoder, labeled, len(classes), cfg.evaluate.label_fractions, cfg.finetune.settings(), device, ctx.progress)
    # The curve always ends at 100% (the config sees to it): from scratch there is the supervised reference.
    metrics["supervised_scratch"] = {"test_acc": rows[-1]["scratch"], "labels": rows[-1]["labels"]}
    metrics["label_efficiency"] = {key: {percent(row["fraction"]): row[key] for row in rows} for key in ("ssl_finetune", "scratch")}
    points = (f"{percent(row['fraction'])} fine-tuned {row['ssl_finetune']:.3f} vs scratch {row['scratch']:.3f}" for row in rows)
    log.info("label efficiency: %s", "; ".join(points))
    # Which encoder these numbers belong to: register refuses to file them under another one.
    metrics["encoder"] = {"sha256": pretrained.weights_sha256, "run_id": pretrained.run_id}

    reports = layout.reports
    out = write_json(layout.metrics, metrics)
    curve_csv = write_rows(reports / "label_efficiency.csv", rows)
    plots = [
        accuracy_bars({name: metrics[name] for name in ENCODERS}, reports / "evaluation.png"),
        label_efficiency_plot(rows, reports / "label_efficiency.png"),
        embedding_picture(encoder, labeled, classes, cfg.evaluate, device, reports / "embeddings.png", cfg.pretrain.seed),
    ]
    log_evaluation(tracker, metrics, ENCODERS, rows, [out, curve_csv], plots)
    return Evaluation(metrics, pretrained.weights_sha256, pretrained.run_id)
