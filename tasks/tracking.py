"""MLflow wiring: where the store is, and the one run a pipeline run logs into.

One MLflow run per pretraining. The pretrain stage opens it and writes its id to
``reports/mlflow_run.json``; evaluate and register resume it. The same holds whether
the stages run inside one Prefect flow or as separate ``dvc repro`` processes, and a
rerun of pretraining (new model) always gets a new run.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

DEFAULT_DB = "mlflow.db"


def tracking_uri(root: Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else an absolute sqlite URI in the project root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / DEFAULT_DB).resolve()}"


def _artifact_location(uri: str) -> str | None:
    """Keep a sqlite store's artifacts beside its database file, not in the cwd."""
    if uri.startswith("sqlite:///"):
        return (Path(urlparse(uri).path).parent / "mlartifacts").resolve().as_uri()
    return None  # a tracking server decides for itself


def use_store(root: Path, experiment: str) -> str:
    """Point MLflow at the store and experiment; returns the experiment id."""
    import mlflow

    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    found = mlflow.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else mlflow.create_experiment(experiment, artifact_location=_artifact_location(uri))
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def save_run_id(run_file: Path, run_id: str) -> None:
    run_file.parent.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps({"run_id": run_id}))


def load_run_id(run_file: Path) -> str:
    if not run_file.exists():
        raise FileNotFoundError(f"{run_file}: no MLflow run recorded; run the pretrain stage first")
    return json.loads(run_file.read_text())["run_id"]


@contextlib.contextmanager
def resumed_run(root: Path, run_file: Path, experiment: str) -> Iterator:
    """Re-open the pipeline's run (left FAILED if the body raises, as MLflow does)."""
    import mlflow

    use_store(root, experiment)
    with mlflow.start_run(run_id=load_run_id(run_file)) as run:
        yield run
