"""The text path's stages as typed functions: paths and settings in, a result out.

The pipeline's stage modules (validate, ingest, pretrain, evaluate, register) call these when
``data.unlabeled`` is a text source (:func:`tasks.text.sources.is_text_source`). Each takes
plain paths and values, so it can be declared as a stage with its inputs and outputs, and
tested without a layout or a config. No MLflow or Prefect here: the stage that calls
:func:`pretrain_text` logs its ``on_epoch_end`` stats and saves the run, as for images.

    validate_text   unlabeled + labeled sources -> reports (ValidationReport), tables, quarantine rows
    ingest_text     accepted documents -> tokenizer.json + token shards; labeled token ids + labels
    pretrain_text   token shards -> MLM -> encoder dir (weights.pt, config.json, tokenizer.json)
    evaluate_text   encoder dir + labeled token ids -> {"ssl", "random_init", "tfidf"} (+ label efficiency)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import pandas as pd
import torch

from ssl_models.methods.mlm import MLM
from ssl_models.text import TextEncoder, TextModelSettings, load_text_encoder, save_text_encoder
from ssl_models.training import EpochStats, TrainSettings, pretrain
from tasks.core.config import EvaluateConfig
from tasks.text.features import evaluate_text_encoders, label_efficiency
from tasks.text.tokens import continuation_ids, ingest_text_labeled, ingest_text_unlabeled, load_labeled_tokens, load_token_shards, load_tokenizer
from tasks.text.checks import TextRules, quarantine_rows, validate_text_source
from tasks.validation.report import ValidationReport

TEXT_MODEL_NAME = "ssl-text-encoder"


def validate_text(
    unlabeled: str | Path,
    labeled: str | Path | None,
    out_dir: Path,
    reference: Path | None,
    rules: TextRules | None = None,
    on_fail: Literal["stop", "quarantine"] = "stop",
    max_bad_fraction: float = 0.05,
    text_columns: Sequence[str] | None = None,
    label_column: str = "label",
) -> tuple[list[ValidationReport], pd.DataFrame]:
    """Validate both sources; returns the reports and the quarantine rows (path, fault, detail, dataset)."""
    reports, bad = [], []
    for name, source, is_labeled in (("unlabeled", unlabeled, False), ("labeled", labeled, True)):
        if source is None:
            continue
        report, table = validate_text_source(
            source, name, out_dir, labeled=is_labeled, rules=rules, on_fail=on_fail, max_bad_fraction=max_bad_fraction,
            reference=reference, text_columns=list(text_columns) if text_columns else None, label_column=label_column,
        )  # fmt: skip
        reports.append(report)
        bad.append(quarantine_rows(table, name))
    return reports, pd.concat(bad, ignore_index=True)


def ingest_text(
    unlabeled: str | Path,
    labeled: str | Path | None,
    validation_dir: Path | None,
    unlabeled_out: Path,
    labeled_out: Path,
    settings: TextModelSettings = TextModelSettings(),
    test_fraction: float = 0.2,
    text_columns: Sequence[str] | None = None,
    label_column: str = "label",
) -> dict[str, int]:
    """Tokenizer + shards from the accepted unlabeled documents, then the labeled set; returns counts."""
    table = (lambda name: validation_dir / f"{name}_table.csv") if validation_dir is not None else (lambda name: None)
    meta = ingest_text_unlabeled(
        unlabeled, unlabeled_out, table("unlabeled"), vocab_size=settings.vocab_size, max_len=settings.max_len,
        text_columns=text_columns, label_column=label_column,
    )  # fmt: skip
    counts = {"unlabeled": meta["documents"]}
    if labeled is not None:
        split = ingest_text_labeled(
            labeled, labeled_out, unlabeled_out, table("labeled"), test_fraction=test_fraction, text_columns=text_columns, label_column=label_column
        )
        counts |= {f"labeled_{k}": v for k, v in split.items()}
    return counts


def build_mlm(prepared_unlabeled: Path, settings: TextModelSettings) -> MLM:
    """The MLM method around a fresh TextEncoder sized for the prepared data's tokenizer."""
    tokenizer = load_tokenizer(prepared_unlabeled)
    torch.manual_seed(settings.seed)
    encoder = TextEncoder(tokenizer.get_vocab_size(), settings.max_len, settings.dim, settings.depth, settings.heads)
    pieces = continuation_ids(tokenizer) if settings.whole_word else ()
    return MLM(encoder, mask_prob=settings.mask_prob, whole_word=settings.whole_word, continuation_ids=pieces, **settings.method_params)


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
    history = pretrain(method, ids, train, device, on_epoch_end, checkpoint_path, progress, extra=extra)  # extra: the run to resume in
    save_text_encoder(method.encoder.cpu(), encoder_dir, prepared_unlabeled / "tokenizer.json", extra={"method": "mlm", **(extra or {})})
    return history


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
