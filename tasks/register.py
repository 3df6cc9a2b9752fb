"""Register stage: the encoder becomes a new version of ``ssl-encoder`` in MLflow.

The model is an MLflow model (tasks/mlflow_model.py: a models-from-code pyfunc over
``weights.pt`` + ``config.json``, linked to the encoder's run, with a signature and an input
example) that ``mlflow.pyfunc.load_model`` and ``mlflow models serve`` load without pickle;
:func:`load_registered_encoder` gives back the torch module. The version's description holds
the evaluation table and the gate's decision.

What is registered is checked first: the scores must be those of this encoder (its
weights' sha256 and run id, recorded by evaluate). Every new version gets
``register.alias`` (``@challenger``) and then goes through the promotion gate
(tasks/promote.py), which may make it ``@champion``. The decision and both numbers are
tags of the version and of the run, and are in ``reports/registered.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ssl_models.encoder import Encoder, load_encoder
from tasks.atomic import write_json
from tasks.config import PipelineConfig
from tasks.context import StageContext
from tasks.mlflow_model import describe_version, log_encoder_model, version_description, weights_dir
from tasks.prepared import load_labeled
from tasks.promote import gate, registry_lock
from tasks.results import Evaluation, Prepared, Pretrained, Registered, file_sha256
from tasks.scoring import probe_accuracy, protocol_version, summary_table
from tasks.tracking import use_store

log = logging.getLogger(__name__)


class MismatchedScores(Exception):
    """The metrics are not those of the encoder about to be registered."""


def _champion_rescorer(cfg: PipelineConfig, labeled_dir: str):
    """Re-evaluate a registered encoder on the current labeled set, by the evaluate protocol."""

    def rescore(model_version) -> float:
        import mlflow

        local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_version.name}/{model_version.version}")
        return probe_accuracy(load_encoder(weights_dir(local)), load_labeled(labeled_dir), cfg.evaluate, torch.device(cfg.pretrain.device))

    return rescore


def gate_tags(cfg: PipelineConfig, eval_data_version: str, probe_acc: float) -> dict[str, str]:
    """What the gate compares: the exact score, and what it was measured on and how."""
    return {"probe_acc": repr(probe_acc), "eval_data_version": eval_data_version, "eval_protocol": protocol_version(cfg.evaluate)}


def register_and_gate(root: Path, cfg: PipelineConfig, model_id: str, tags: dict[str, str], labeled_dir: str):
    """Register the logged model as a new version with ``register.alias``, then the promotion gate.

    Both under one cross-process lock: concurrent runs neither share a champion to beat
    nor race for a version number. Returns (ModelVersion, Decision).
    """
    import mlflow

    r = cfg.register
    client = mlflow.MlflowClient()
    with registry_lock(root):
        version = mlflow.register_model(f"models:/{model_id}", r.model_name, tags=tags)
        client.set_registered_model_alias(r.model_name, r.alias, version.version)
        decision = gate(client, r.model_name, version, float(tags["probe_acc"]), r.champion_alias, r.min_improvement, _champion_rescorer(cfg, labeled_dir))
    return version, decision


def check_scores_belong(pretrained: Pretrained, evaluation: Evaluation) -> None:
    """Refuse to register scores of another encoder (a rerun, or another run's files)."""
    actual = file_sha256(Path(pretrained.encoder_dir) / "weights.pt")
    if actual != pretrained.weights_sha256:
        raise MismatchedScores(f"{pretrained.encoder_dir}: the weights changed since pretraining finished (sha256 {actual[:12]}); run the pipeline again")
    if (evaluation.encoder_sha256, evaluation.run_id) != (pretrained.weights_sha256, pretrained.run_id):
        raise MismatchedScores(
            f"the metrics score encoder {evaluation.encoder_sha256[:12]} of run {evaluation.run_id}, not the one to register "
            f"({pretrained.weights_sha256[:12]}, run {pretrained.run_id}); run `sslpipe evaluate` again"
        )


def register(ctx: StageContext, prepared: Prepared, pretrained: Pretrained, evaluation: Evaluation) -> Registered:
    """Log the encoder to its run, register it with ``register.alias``, run the promotion gate."""
    cfg, tracker = ctx.cfg, ctx.tracker
    check_scores_belong(pretrained, evaluation)
    ssl = evaluation.metrics["ssl"]
    tags = {
        "data_version": tracker.tag("data_version"),
        "git_commit": tracker.tag("git_commit"),
        "method": pretrained.method,
        "run_id": pretrained.run_id,
        "weights_sha256": pretrained.weights_sha256,
        "linear_probe_acc": f"{ssl['linear_probe_acc']:.4f}",
        "knn_acc": f"{ssl['knn_acc']:.4f}",
        **gate_tags(cfg, prepared.eval_data_version, float(ssl["linear_probe_acc"])),
    }
    use_store(ctx.layout.root, cfg.register.experiment)
    # A real input example: two evaluation images, as the model takes them (float in [0, 1]).
    example = load_labeled(prepared.labeled)["test_images"][:2].float().div(255).numpy()
    model_id = log_encoder_model(pretrained.encoder_dir, cfg.register.model_name, pretrained.run_id, tags, input_example=example)
    version, decision = register_and_gate(ctx.layout.root, cfg, model_id, tags, prepared.labeled)
    import mlflow

    facts = {"data version": tags["data_version"], "evaluation data version": prepared.eval_data_version, "MLflow run": pretrained.run_id}
    description = version_description(decision.summary(), summary_table(evaluation.metrics), facts)
    describe_version(mlflow.MlflowClient(), cfg.register.model_name, version.version, description)
    # The run's description too: the UI shows it above the run's metrics, results before the
    # validation statistics logged first. Its first line, all that the collapsed description
    # shows, is the result in one sentence; the gate's decision follows.
    headline = (
        f"**{pretrained.method} encoder: linear probe {ssl['linear_probe_acc']:.3f}, kNN {ssl['knn_acc']:.3f}**, "
        f"registered as {cfg.register.model_name} version {version.version}.\n\n"
    )
    tracker.set_tags({"mlflow.note.content": headline + description})
    r = cfg.register
    log.info("registered %s version %s (@%s); promotion gate: %s", r.model_name, version.version, r.alias, decision.summary())
    tracker.set_tags({"registered_version": version.version, **decision.tags()})
    tracker.log_metrics(decision.metrics())
    registered = Registered(cfg.register.model_name, int(version.version), cfg.register.alias, pretrained.run_id, decision.promoted, decision.summary())
    write_json(ctx.layout.registered, registered.as_dict() | {"gate": decision.tags()})
    return registered


def load_registered_encoder(uri: str = "models:/ssl-encoder@champion", root: Path | None = None, experiment: str = "ssl-pipeline") -> Encoder:
    """Download ``models:/NAME@ALIAS`` (or ``/VERSION``) and rebuild the encoder, weights only."""
    import mlflow

    use_store(root or Path.cwd(), experiment)
    local = mlflow.artifacts.download_artifacts(artifact_uri=uri)
    return load_encoder(weights_dir(local))
