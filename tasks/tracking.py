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
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

DEFAULT_DB = "mlflow.db"
# MLflow 3's UI opens an experiment without this tag in its GenAI (traces) view; ours train models.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


def tracking_uri(root: Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else an absolute sqlite URI in the project root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / DEFAULT_DB).resolve()}"


def _artifact_location(uri: str) -> str | None:
    """Keep a sqlite store's artifacts beside its database file, not in the cwd."""
    if uri.startswith("sqlite:///"):
        return (Path(urlparse(uri).path).parent / "mlartifacts").resolve().as_uri()
    return None  # a tracking server decides for itself


def use_store(root: Path, experiment: str) -> str:
    """Point MLflow at the store and experiment (marked as model training, also when it was
    created without the mark); returns the experiment id."""
    import mlflow

    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        tags = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
        experiment_id = mlflow.create_experiment(experiment, artifact_location=_artifact_location(uri), tags=tags)
    else:
        experiment_id = found.experiment_id
        if EXPERIMENT_KIND_TAG not in found.tags:  # a kind someone chose in the UI is left alone
            mlflow.MlflowClient().set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def ui_url(base: str, experiment_id: str, run_id: str | None = None) -> str:
    """A link into the MLflow UI that opens in its model-training view. MLflow 3.17's UI picks
    GenAI or model training from a per-browser switch (default GenAI) unless the link says
    ``workflowType``; the experiment kind tag alone does not decide it there."""
    page = f"experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    return f"{base.rstrip('/')}/#/{page}?workflowType=machine_learning"


def run_name(prefix: str, data_version: str | None = None, now: datetime | None = None) -> str:
    """A readable, unique MLflow run name: ``simclr-1a2b3c4d-20261128-142501-7f3e``
    (prefix, the first 8 characters of the data version, UTC time, 4 random hex digits so
    that two runs started in the same second still differ)."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    parts = [prefix, (data_version or "")[:8], stamp, secrets.token_hex(2)]
    return "-".join(p for p in parts if p)


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
