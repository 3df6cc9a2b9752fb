"""Registering a scored encoder, for either modality: the checks and the gate around it.

Used by the register stage's shell (tasks/register.py) for every modality; the modality's
part says how the model is logged and how a champion is re-scored on the current evaluation
data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from tasks.core.atomic import write_json
from tasks.core.config import PipelineConfig
from tasks.core.context import StageContext
from tasks.core.results import Evaluation, Prepared, Pretrained, Registered, file_sha256
from tasks.evaluation.scoring import protocol_version, summary_table
from tasks.registry.models import describe_version, version_description
from tasks.registry.promotion import gate, registry_lock

log = logging.getLogger(__name__)


class MismatchedScores(Exception):
    """The metrics are not those of the encoder about to be registered."""


def gate_tags(cfg: PipelineConfig, eval_data_version: str, probe_acc: float) -> dict[str, str]:
    """What the gate compares: the exact score, and what it was measured on and how."""
    return {"probe_acc": repr(probe_acc), "eval_data_version": eval_data_version, "eval_protocol": protocol_version(cfg.evaluate)}


def check_scores_belong(pretrained: Pretrained, evaluation: Evaluation) -> None:
    """Refuse to register scores of another encoder (a rerun, or another run's files)."""
    actual = file_sha256(Path(pretrained.encoder_dir) / "weights.pt")
    if actual != pretrained.weights_sha256:
        raise MismatchedScores(
            f"{pretrained.encoder_dir}: the weights changed since pretraining finished (sha256 {actual[:12]}); run the pipeline again"
        )
    if (evaluation.encoder_sha256, evaluation.run_id) != (pretrained.weights_sha256, pretrained.run_id):
        raise MismatchedScores(
            f"the metrics score encoder {evaluation.encoder_sha256[:12]} of run {evaluation.run_id}, not the one to register "
            f"({pretrained.weights_sha256[:12]}, run {pretrained.run_id}); run `sslpipe evaluate` again"
        )


def describe_model(client, model_name: str, r) -> None:
    """The registered model's own description (its page and the models list), set once."""
    if client.get_registered_model(model_name).description:
        return  # a description written in the UI stays
    client.update_registered_model(
        model_name,
        description=(
            f"Encoders pretrained by sslpipe's self-supervised pipeline. Every new version gets @{r.alias}; the promotion gate "
            f"makes the best by linear-probe accuracy @{r.champion_alias}. A version it rejected keeps @{r.alias} until the "
            f"next one and is tagged gate: rejected, its description says so (version tags: gate/*, data and code lineage). "
            f"Load one with mlflow.pyfunc.load_model('models:/{model_name}@{r.champion_alias}')."
        ),
    )


def version_with_weights(model_name: str, weights_sha256: str):
    """The registered version of ``model_name`` whose weights have this sha256, or None."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        versions = mlflow.MlflowClient().search_model_versions(f"name = '{model_name}'")
    except MlflowException:  # no such model yet
        return None
    same = [v for v in versions if v.tags.get("weights_sha256") == weights_sha256]
    return max(same, key=lambda v: int(v.version)) if same else None


def register_version_and_gate(
    root: Path, cfg: PipelineConfig, model_name: str, log_model: Callable[[], str], tags: dict[str, str], rescore: Callable[[object], float]
):
    """Register the model (``log_model()`` logs it and returns its id) as a new version of
    ``model_name`` with ``register.alias``, then the promotion gate (``rescore(model_version)``:
    a champion's probe accuracy on the current data). Weights registered before (the same
    sha256: a rerun that changed only evaluation params) get no new version: that version is
    re-tagged with today's scores and goes through the gate again.

    All under one cross-process lock: concurrent runs neither share a champion to beat
    nor race for a version number. Returns (ModelVersion, Decision).
    """
    import mlflow

    r = cfg.register
    client = mlflow.MlflowClient()
    with registry_lock(root):
        sha256 = tags.get("weights_sha256")
        version = version_with_weights(model_name, sha256) if sha256 else None
        if version is None:
            version = mlflow.register_model(f"models:/{log_model()}", model_name, tags=tags)
        else:
            log.info("%s version %s has these weights already (sha256 %s): no new version", model_name, version.version, sha256[:12])
            for key, value in tags.items():
                client.set_model_version_tag(model_name, version.version, key, value)
        client.set_registered_model_alias(model_name, r.alias, version.version)
        describe_model(client, model_name, r)
        decision = gate(client, model_name, version, float(tags["probe_acc"]), r.champion_alias, r.min_improvement, rescore)
    return version, decision


def lineage_tags(ctx: StageContext, prepared: Prepared, pretrained: Pretrained, evaluation: Evaluation, modality: str) -> dict[str, str]:
    """Every version's tags: where it came from (data, code, run, weights) and what it scored."""
    tracker, ssl = ctx.tracker, evaluation.metrics["ssl"]
    started_from = {key: tracker.tag(key) for key in ("init", "init_sha256") if tracker.tag(key)}  # pretrain.init's weights
    return {
        **started_from,
        "data_version": tracker.tag("data_version"),
        "git_commit": tracker.tag("git_commit"),
        "method": pretrained.method,
        "modality": modality,
        "run_id": pretrained.run_id,
        "weights_sha256": pretrained.weights_sha256,
        "linear_probe_acc": f"{ssl['linear_probe_acc']:.4f}",
        "knn_acc": f"{ssl['knn_acc']:.4f}",
        **gate_tags(ctx.cfg, prepared.eval_data_version, float(ssl["linear_probe_acc"])),
    }


def record_registration(
    ctx: StageContext, model_name: str, version, decision, prepared: Prepared, pretrained: Pretrained, evaluation: Evaluation
) -> Registered:
    """After the gate: the version's description, the run's tags, reports/registered.json."""
    import mlflow

    cfg, tracker = ctx.cfg, ctx.tracker
    facts = {
        "data version": tracker.tag("data_version"),
        "evaluation data version": prepared.eval_data_version,
        "MLflow run": pretrained.run_id,
    }
    verdict = decision.verdict(cfg.register.champion_alias)
    description = version_description(decision.summary(), summary_table(evaluation.metrics), facts, verdict=verdict)
    describe_version(mlflow.MlflowClient(), model_name, version.version, description)
    # The run's description too: the UI shows it above the run's metrics, results before the
    # validation statistics logged first. Its first line, all that the collapsed description
    # shows, is the result in one sentence; the gate's decision follows.
    ssl = evaluation.metrics["ssl"]
    headline = (
        f"**{pretrained.method} encoder: linear probe {ssl['linear_probe_acc']:.3f}, kNN {ssl['knn_acc']:.3f}**, "
        f"registered as {model_name} version {version.version}.\n\n"
    )
    tracker.set_tags({"mlflow.note.content": headline + description})
    log.info("registered %s version %s (@%s); promotion gate: %s", model_name, version.version, cfg.register.alias, decision.summary())
    tracker.set_tags({"registered_version": version.version, **decision.tags()})
    tracker.log_metrics(decision.metrics())
    registered = Registered(model_name, int(version.version), cfg.register.alias, pretrained.run_id, decision.promoted, decision.summary())
    write_json(ctx.layout.registered, registered.as_dict() | {"gate": decision.tags()})
    return registered
