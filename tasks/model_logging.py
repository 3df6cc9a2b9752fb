"""Log a model folder (weights.pt + config.json) as an MLflow 3 LoggedModel linked to its run.

Shared by the register stage (the encoder) and `sslpipe finetune` (the classifier).
"""

from __future__ import annotations

from pathlib import Path


def log_model_dir(folder: Path | str, model_name: str, run_id: str, tags: dict[str, str], model_type: str) -> str:
    """A LoggedModel holding the folder's plain files, linked to ``run_id``; returns its id."""
    import mlflow

    model = mlflow.initialize_logged_model(name=model_name, source_run_id=run_id, tags=tags, model_type=model_type)
    mlflow.MlflowClient().log_model_artifacts(model.model_id, str(folder))
    mlflow.finalize_logged_model(model.model_id, "READY")
    return model.model_id
