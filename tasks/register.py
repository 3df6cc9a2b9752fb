"""Register stage: the encoder becomes a new version of ``ssl-encoder`` in MLflow.

The model is an MLflow LoggedModel (linked to the pipeline's run) whose artifacts are
``weights.pt`` + ``config.json``: no pickle anywhere. :func:`load_registered_encoder` is the one way back from the registry.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from ssl_models.encoder import CONFIG_FILE, Encoder, load_encoder
from tasks.config import PipelineConfig
from tasks.layout import Layout
from tasks.tracking import resumed_run, use_store

def register_stage(layout: Layout, config: PipelineConfig) -> int:
    """Log the encoder to the pipeline's run, register it, give it ``register.alias``."""
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
        }
        # An MLflow 3 LoggedModel holding the two plain files, linked to the run.
        client = mlflow.MlflowClient()
        model = mlflow.initialize_logged_model(name=cfg.model_name, source_run_id=run.info.run_id, tags=tags, model_type="ssl-encoder")
        client.log_model_artifacts(model.model_id, str(layout.encoder))
        mlflow.finalize_logged_model(model.model_id, "READY")
        version = mlflow.register_model(f"models:/{model.model_id}", cfg.model_name, tags=tags)
        client.set_registered_model_alias(cfg.model_name, cfg.alias, version.version)
        mlflow.set_tag("registered_version", version.version)
    record = {"model_name": cfg.model_name, "version": int(version.version), "alias": cfg.alias, "run_id": run.info.run_id}
    (layout.reports / "registered.json").write_text(json.dumps(record, indent=2))
    return int(version.version)


def load_registered_encoder(uri: str = "models:/ssl-encoder@champion", root: Path | None = None, experiment: str = "ssl-pipeline") -> Encoder:
    """Download ``models:/NAME@ALIAS`` (or ``/VERSION``) and rebuild the encoder, weights only."""
    import mlflow

    use_store(root or Path.cwd(), experiment)
    local = mlflow.artifacts.download_artifacts(artifact_uri=uri)
    return load_encoder(local)


# The Prefect task is the stage function as-is. No result caching: inputs are a layout
# and a config, and DVC already decides what is stale from content hashes.
register_task = task(register_stage, name="register", cache_policy=NO_CACHE)
