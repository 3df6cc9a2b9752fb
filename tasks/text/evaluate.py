"""The text part of evaluate: probe and kNN for the MLM encoder, random init and TF-IDF; fine-tuning."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ssl_models.evaluation import project_2d
from ssl_models.text import load_text_encoder
from tasks.core.atomic import write_json, write_rows
from tasks.core.config import EvaluateConfig
from tasks.core.context import StageContext
from tasks.core.plots import accuracy_bars, embedding_plot, label_efficiency_plot
from tasks.core.results import Evaluation, Prepared, Pretrained
from tasks.evaluation.scoring import log_evaluation
from tasks.text.features import TEXT_ENCODERS, evaluate_text_encoders, label_efficiency, text_features
from tasks.text.tokens import (
    load_labeled_tokens,
)


def evaluate(ctx: StageContext, prepared: Prepared, pretrained: Pretrained) -> Evaluation:
    """Probe and kNN for the MLM encoder, random init and TF-IDF; the fine-tuning curve; the pictures."""
    layout, cfg, tracker = ctx.layout, ctx.cfg, ctx.tracker
    device = torch.device(cfg.pretrain.device)
    metrics = evaluate_text(layout.encoder, layout.labeled, cfg.evaluate, device, cfg.pretrain.seed, cfg.finetune.steps)
    rows = metrics.pop("label_efficiency_rows")
    metrics["encoder"] = {"sha256": pretrained.weights_sha256, "run_id": pretrained.run_id}

    reports = layout.reports
    out = write_json(layout.metrics, metrics)
    curve_csv = write_rows(reports / "label_efficiency.csv", rows)
    labeled = load_labeled_tokens(layout.labeled)
    classes = json.loads((layout.labeled / "classes.json").read_text())
    subset = torch.randperm(len(labeled["test_tokens"]), generator=torch.Generator().manual_seed(cfg.pretrain.seed))[: cfg.evaluate.embedding_points]
    points = project_2d(text_features(load_text_encoder(layout.encoder), labeled["test_tokens"][subset], device=device), cfg.pretrain.seed).tolist()
    plots = [
        accuracy_bars({name: metrics[name] for name in TEXT_ENCODERS}, reports / "evaluation.png"),
        label_efficiency_plot(rows, reports / "label_efficiency.png"),
        embedding_plot(points, labeled["test_labels"][subset].tolist(), classes, reports / "embeddings.png", f"t-SNE of MLM test embeddings ({len(subset)} documents)"),
    ]
    log_evaluation(tracker, metrics, TEXT_ENCODERS, rows, [out, curve_csv], plots)
    return Evaluation(metrics, pretrained.weights_sha256, pretrained.run_id)


def evaluate_text(
    encoder_dir: Path,
    prepared_labeled: Path,
    cfg: EvaluateConfig = EvaluateConfig(),
    device: torch.device | str = "cpu",
    seed: int = 0,
    finetune_steps: int | None = 150,
) -> dict:
    """reports/metrics.json's content for text: probe/kNN per encoder, and the label-efficiency curve.

    ``finetune_steps=None`` skips the curve. Its rows go under ``label_efficiency`` as the
    image metrics do ({"ssl_finetune": {"10%": acc, ...}, "scratch": {...}}), the from-scratch
    100% point under ``supervised_scratch``.
    """
    encoder = load_text_encoder(encoder_dir)
    labeled = load_labeled_tokens(prepared_labeled)
    metrics: dict = evaluate_text_encoders(encoder, labeled, cfg, device, seed)
    if finetune_steps:
        classes = int(max(labeled["train_labels"].max(), labeled["test_labels"].max())) + 1
        rows = label_efficiency(encoder, labeled, classes, cfg.label_fractions, device, steps=finetune_steps, seed=seed)
        metrics["supervised_scratch"] = {"test_acc": rows[-1]["scratch"], "labels": rows[-1]["labels"]}
        metrics["label_efficiency"] = {key: {f"{row['fraction'] * 100:g}%": row[key] for row in rows} for key in ("ssl_finetune", "scratch")}
        metrics["label_efficiency_rows"] = rows
    return metrics
