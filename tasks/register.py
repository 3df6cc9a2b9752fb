"""Register stage: the encoder becomes a new version of ``ssl-encoder`` in MLflow.

The model is an MLflow LoggedModel (linked to the pipeline's run) whose artifacts are
``weights.pt`` + ``config.json``: no pickle anywhere. :func:`load_registered_encoder` is the one way back from the registry.

Every new version gets ``register.alias`` (``@challenger``) and then goes through the
promotion gate (tasks/promote.py), which may make it ``@champion``. The decision and both
numbers are tags of the version and of the run, and are in ``reports/registered.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from ssl_models.encoder import CONFIG_FILE, Encoder, load_encoder
from tasks.config import PipelineConfig
from tasks.layout import Layout
from tasks.lineage import dvc_hash
from tasks.promote import gate, registry_lock
from tasks.tracking import resumed_run, use_store


def _champion_rescorer(layout: Layout, config: PipelineConfig):
    """Re-evaluate a registered encoder on the current labeled set, by the evaluate protocol."""

    def rescore(model_version) -> float:
        import mlflow

        from tasks.evaluate import load_labeled, probe_accuracy
        from tasks.pretrain import resolve_device

        local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_version.name}/{model_version.version}")
        device = resolve_device(config.pretrain.device)
        return probe_accuracy(load_encoder(local), load_labeled(layout.labeled), config.evaluate, device)

    return rescore


def gate_tags(layout: Layout, config: PipelineConfig, probe_acc: float) -> dict[str, str]:
    """What the gate compares: the exact score, and what it was measured on and how."""
    from tasks.evaluate import protocol_version

    return {"probe_acc": repr(probe_acc), "eval_data_version": dvc_hash(layout.labeled), "eval_protocol": protocol_version(config.evaluate)}


def log_encoder_model(layout: Layout, model_name: str, run_id: str, tags: dict[str, str]) -> str:
    """An MLflow 3 LoggedModel holding the two plain files, linked to the run; returns its id."""
    import mlflow

    model = mlflow.initialize_logged_model(name=model_name, source_run_id=run_id, tags=tags, model_type="ssl-encoder")
    mlflow.MlflowClient().log_model_artifacts(model.model_id, str(layout.encoder))
    mlflow.finalize_logged_model(model.model_id, "READY")
    return model.model_id


def register_and_gate(layout: Layout, config: PipelineConfig, model_id: str, tags: dict[str, str]):
    """Register the logged model as a new version with ``register.alias``, then the promotion gate.

    Both under one cross-process lock: concurrent runs neither share a champion to beat
    nor race for a version number. Returns (ModelVersion, Decision).
    """
    import mlflow

    cfg = config.register
    client = mlflow.MlflowClient()
    with registry_lock(layout.root):
        version = mlflow.register_model(f"models:/{model_id}", cfg.model_name, tags=tags)
        client.set_registered_model_alias(cfg.model_name, cfg.alias, version.version)
        decision = gate(client, cfg.model_name, version, float(tags["probe_acc"]), cfg.champion_alias, cfg.min_improvement, _champion_rescorer(layout, config))
    return version, decision


def register_stage(layout: Layout, config: PipelineConfig) -> dict:
    """Log the encoder to the pipeline's run, register it with ``register.alias``, run the
    promotion gate. Returns (and writes to reports/registered.json) what happened."""
    import mlflow

    cfg = config.register
    metrics = json.loads((layout.reports / "metrics.json").read_text())
    encoder_config = json.loads((layout.encoder / CONFIG_FILE).read_text())
    with resumed_run(layout.root, layout.run_file, cfg.experiment) as run:
        tags = {
            "data_version": run.data.tags.get("data_version", ""),
            "git_commit": run.data.tags.get("git_commit", ""),
            "method": encoder_config.get("method", ""),
            "linear_probe_acc": f"{metrics['ssl']['linear_probe_acc']:.4f}",
            "knn_acc": f"{metrics['ssl']['knn_acc']:.4f}",
            **gate_tags(layout, config, float(metrics["ssl"]["linear_probe_acc"])),
        }
        model_id = log_encoder_model(layout, cfg.model_name, run.info.run_id, tags)
        version, decision = register_and_gate(layout, config, model_id, tags)
        mlflow.set_tag("registered_version", version.version)
        mlflow.set_tags(decision.tags())
        mlflow.log_metrics(decision.metrics())
    record = {
        "model_name": cfg.model_name,
        "version": int(version.version),
        "alias": cfg.alias,
        "run_id": run.info.run_id,
        "champion": decision.promoted,
        "decision": decision.summary(),
        "gate": decision.tags(),
    }
    (layout.reports / "registered.json").write_text(json.dumps(record, indent=2))
    return record


def load_registered_encoder(uri: str = "models:/ssl-encoder@champion", root: Path | None = None, experiment: str = "ssl-pipeline") -> Encoder:
    """Download ``models:/NAME@ALIAS`` (or ``/VERSION``) and rebuild the encoder, weights only."""
    import mlflow

    use_store(root or Path.cwd(), experiment)
    local = mlflow.artifacts.download_artifacts(artifact_uri=uri)
    return load_encoder(local)


# The Prefect task is the stage function as-is. No result caching: inputs are a layout
# and a config, and DVC already decides what is stale from content hashes.
register_task = task(register_stage, name="register", cache_policy=NO_CACHE)
