"""The stages for text sources: the same six stages as for images, declared beside them in
tasks/stages.py (each :class:`~tasks.stages.Stage` names its image and its text function).

Same inputs and results (tasks/core/results.py), same outputs (paths in tasks/core/layout.py), so the
flow, the stage commands, ``dvc repro`` and the skipping of up-to-date stages serve both:

    validate  GX checkpoint per document (tasks/text/checks.py)  reports/validation/, reports/quarantine.csv
    ingest    BPE tokenizer + token shards (tasks/text/tokens.py)    data/prepared/{unlabeled,labeled}
    augment   BERT's masking checked on real documents, and shown    reports/augment_preview.png
    pretrain  MLM (ssl_models/methods/mlm.py), resumable             models/encoder/ (+ tokenizer.json)
    evaluate  probe/kNN: MLM vs random init vs TF-IDF; fine-tuning    reports/metrics.json, plots
    register  ``ssl-text-encoder`` (a pyfunc taking strings), gate    reports/registered.json

The library functions these call take plain paths and settings (tasks/text/steps.py); here
they meet the config, the layout and the MLflow run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ssl_models.evaluation import project_2d
from ssl_models.methods.mlm import bert_masking
from ssl_models.text import PAD_ID, TOKENIZER_FILE, load_text_encoder
from ssl_models.training import EpochStats, checkpoint_extra
from tasks.core.atomic import staged_dir, write_json, write_rows, write_text
from tasks.core.context import StageContext
from tasks.core.lineage import dvc_hash, git_commit
from tasks.registry.models import log_text_encoder_model, log_training_dataset, weights_dir
from tasks.core.plots import accuracy_bars, embedding_plot, label_efficiency_plot, masking_preview, training_curves
from tasks.registry.registration import check_scores_belong, lineage_tags, record_registration, register_version_and_gate
from tasks.core.results import Evaluation, Prepared, Pretrained, Preview, Registered, Validated, file_sha256
from tasks.evaluation.scoring import log_evaluation
from tasks.validation.source_check import write_csv
from tasks.image.sources import SourceError
from tasks.text.features import TEXT_ENCODERS, text_features, text_probe_accuracy
from tasks.text.tokens import encode, load_labeled_texts, load_labeled_tokens, load_token_shards, load_tokenizer
from tasks.text.steps import build_mlm, evaluate_text, ingest_text, pretrain_text, validate_text
from tasks.text.checks import TextRules
from tasks.registry.tracking import use_store
from tasks.validation.html import render
from tasks.validation.report import report_metrics

log = logging.getLogger(__name__)


class MaskingPolicyError(ValueError):
    """BERT's masking produced something training must not see."""


def text_rules(ctx: StageContext) -> TextRules:
    """``validate.*`` as text validation's rules."""
    return TextRules.from_config(ctx.cfg.validate)


def validate(ctx: StageContext) -> Validated:
    """Both text sources through their GX checkpoints; the same reports and quarantine list as images."""
    layout, cfg = ctx.layout, ctx.cfg
    reports, bad = validate_text(
        layout.source(cfg.data.unlabeled), layout.source(cfg.data.labeled), layout.validation, layout.reference_stats, text_rules(ctx),
        cfg.validate.on_fail, cfg.validate.max_bad_fraction, cfg.data.text_columns, cfg.data.label_column,
    )  # fmt: skip
    write_csv(bad, layout.quarantine)
    import pandas as pd

    for report in reports:
        saved = json.loads((layout.validation / f"{report.name}.json").read_text())
        table = pd.read_csv(layout.validation / f"{report.name}_table.csv").rename(columns={"location": "path"})
        write_text(layout.validation / f"{report.name}.html", render(saved, table, run_name=ctx.tracker.run_name, data_docs=report.data_docs))
        ctx.tracker.log_artifact(layout.validation / f"{report.name}.json", "validation")
        ctx.tracker.log_artifact(layout.validation / f"{report.name}.html", "validation")
        ctx.tracker.log_metrics(report_metrics(saved))
        ctx.tracker.log_artifacts(layout.validation / "data_docs" / report.name, f"validation/data_docs/{report.name}")
    ctx.tracker.log_artifact(layout.quarantine, "validation")
    markdown = "## Data validation (text)\n\n" + "\n\n".join(r.markdown() for r in reports)
    tables = {r.name: str(layout.validation / f"{r.name}_table.csv") for r in reports}
    return Validated(all(r.success for r in reports), tuple(r.summary() for r in reports), tables, markdown)


def ingest(ctx: StageContext, validated: Validated) -> Prepared:
    """Tokenizer + token shards from the accepted documents; the labeled set encoded with it."""
    layout, cfg = ctx.layout, ctx.cfg
    if not validated.success:
        raise SourceError("the data failed validation; nothing is ingested (see `sslpipe validate`):\n" + "\n".join(validated.summaries))
    settings = cfg.text.settings(cfg.pretrain.seed, cfg.pretrain.method_params)
    with staged_dir(layout.prepared) as staging:
        counts = ingest_text(
            layout.source(cfg.data.unlabeled), layout.source(cfg.data.labeled), layout.validation, staging / "unlabeled", staging / "labeled",
            settings, cfg.data.test_fraction, cfg.data.text_columns, cfg.data.label_column,
        )  # fmt: skip
        # What Prepared.load reads back, as for images.
        write_json(staging / "unlabeled" / "counts.json", {"unlabeled": counts["unlabeled"]})
        write_json(staging / "labeled" / "counts.json", {k.removeprefix("labeled_"): v for k, v in counts.items() if k.startswith("labeled_")})
    ctx.tracker.log_metrics({f"documents/{key}": n for key, n in counts.items()})
    return Prepared(str(layout.unlabeled), str(layout.labeled), counts, dvc_hash(layout.unlabeled), dvc_hash(layout.labeled))


def augment(ctx: StageContext, prepared: Prepared) -> Preview:
    """Check BERT's masking on the first documents and draw it (reports/augment_preview.png).

    Text has no views: the "augmentation" of MLM is the masking, so this stage proves it
    selects real tokens only (never [PAD], [CLS], [SEP]) at about ``mask_prob``, and shows it.
    """
    cfg = ctx.cfg
    settings = cfg.text.settings(cfg.pretrain.seed, cfg.pretrain.method_params)
    method = build_mlm(prepared.unlabeled, settings)
    tokenizer = load_tokenizer(prepared.unlabeled)
    ids = load_token_shards(prepared.unlabeled)[:256].long()
    generator = torch.Generator().manual_seed(cfg.pretrain.seed)
    corrupted, selected = bert_masking(
        ids, method.encoder.vocab_size, method.mask_prob, method.replace_prob, method.random_prob,
        method.is_continuation if method.whole_word else None, generator=generator,
    )  # fmt: skip
    real = ids >= 5  # not a special token
    if (selected & ~real).any():
        raise MaskingPolicyError("the masking selected special tokens ([PAD], [CLS], [SEP], ...)")
    share = float(selected.sum() / real.sum().clamp_min(1))
    if not 0.25 * method.mask_prob <= share <= 4 * method.mask_prob:
        raise MaskingPolicyError(f"the masking selected {share:.1%} of the tokens, mask_prob is {method.mask_prob:.0%}")

    def show(row: torch.Tensor, picked: torch.Tensor | None = None) -> str:
        pieces = [tokenizer.id_to_token(int(t)) for t in row if int(t) != PAD_ID]
        if picked is not None:
            pieces = [f"[{p}]" if hit else p for p, hit in zip(pieces, picked.tolist())]
        return " ".join(pieces)

    rows = [(show(ids[i]), show(corrupted[i], selected[i])) for i in range(min(cfg.augment.preview_images, len(ids)))]
    out = masking_preview(rows, ctx.layout.augment_preview, f"MLM preview: {share:.1%} of the tokens selected (mask_prob {method.mask_prob:.0%})")
    ctx.tracker.log_artifact(out, "augment")
    return Preview(str(out))


def pretrain(ctx: StageContext, prepared: Prepared, preview: Preview) -> Pretrained:
    """MLM on the token shards; the encoder (with its tokenizer) to models/encoder/; resumable as for images."""
    layout, cfg, tracker = ctx.layout, ctx.cfg, ctx.tracker
    p = cfg.pretrain
    settings = cfg.text.settings(p.seed, p.method_params)
    checkpoint = layout.state / "checkpoints" / f"pretrain-{ctx.key[:16] or 'any'}.pt"
    resumed = (checkpoint_extra(checkpoint) or {}).get("run_id")
    if resumed:
        tracker.adopt(resumed)
        log.info("resuming pretraining from %s (MLflow run %s)", checkpoint, resumed)
    documents = int(load_token_shards(prepared.unlabeled).shape[0])
    tokenizer_sha = file_sha256(layout.unlabeled / TOKENIZER_FILE)
    tracker.set_tags(
        {"git_commit": git_commit(layout.root), "data_version": prepared.data_version, "method": p.method, "modality": "text", "backbone": "text_transformer",
         "device": p.device, "documents": documents, "tokenizer_sha256": tokenizer_sha}
    )  # fmt: skip
    log_training_dataset("unlabeled", prepared.data_version, cfg.data.unlabeled, documents, tracker.run_id)
    log.info("pretraining %s on %d documents, %s", p.method, documents, p.device)

    def on_epoch_end(stats: EpochStats) -> None:
        tracker.log_metrics({f"pretrain/{k}": v for k, v in stats.as_metrics().items()}, step=stats.epoch)
        log.info("epoch %d/%d: loss %.4f, %.0f docs/s", stats.epoch, settings.epochs, stats.loss, stats.images_per_s)

    extra = {"run_id": tracker.run_id, "data_version": prepared.data_version}
    with staged_dir(layout.encoder) as staging:
        history = pretrain_text(Path(prepared.unlabeled), staging, settings, torch.device(p.device), on_epoch_end, checkpoint, extra, ctx.progress)
    rows = [{"epoch": s.epoch, **s.as_metrics()} for s in history]
    write_rows(layout.pretrain_reports / "history.csv", rows)
    tracker.log_artifact(training_curves(rows, layout.pretrain_reports / "curves.png"), "plots")
    checkpoint.unlink(missing_ok=True)
    return Pretrained(str(layout.encoder), tracker.run_id, file_sha256(layout.encoder / "weights.pt"), p.method, tuple(rows))


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


def _text_champion_rescorer(ctx: StageContext, labeled_dir: str):
    """A registered text encoder's probe accuracy on the current labeled set, encoded with its own tokenizer."""

    def rescore(model_version) -> float:
        import mlflow

        local = weights_dir(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_version.name}/{model_version.version}"))
        tokenizer, texts, labeled = load_tokenizer(local), load_labeled_texts(Path(labeled_dir)), load_labeled_tokens(Path(labeled_dir))
        ids = {f"{split}_tokens": torch.from_numpy(encode(tokenizer, texts[f"{split}_texts"])).long() for split in ("train", "test")}
        return text_probe_accuracy(load_text_encoder(local), labeled | ids, ctx.cfg.evaluate, torch.device(ctx.cfg.pretrain.device))

    return rescore


def register(ctx: StageContext, prepared: Prepared, pretrained: Pretrained, evaluation: Evaluation) -> Registered:
    """Log the text encoder (weights, config, tokenizer) as ``register.text_model_name``; the gate among text encoders."""
    cfg = ctx.cfg
    check_scores_belong(pretrained, evaluation)
    name = cfg.model_name("text")
    tags = lineage_tags(ctx, prepared, pretrained, evaluation, "text") | {"tokenizer_sha256": file_sha256(Path(pretrained.encoder_dir) / TOKENIZER_FILE)}
    use_store(ctx.layout.root, cfg.register.experiment)
    example = load_labeled_texts(prepared.labeled)["test_texts"][:2]  # a real input example: two evaluation documents
    model_id = log_text_encoder_model(pretrained.encoder_dir, name, pretrained.run_id, tags, example)
    version, decision = register_version_and_gate(ctx.layout.root, cfg, name, model_id, tags, _text_champion_rescorer(ctx, prepared.labeled))
    return record_registration(ctx, name, version, decision, prepared, pretrained, evaluation)


__all__ = ["MaskingPolicyError", "augment", "evaluate", "ingest", "pretrain", "register", "validate"]
