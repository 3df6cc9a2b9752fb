"""MLflow wiring: where the store is, and the run a pipeline run logs into.

**One MLflow run per pipeline run, owned by whoever runs the stages**: the flow
(``sslpipe run``, scheduled runs) opens one and every stage logs into it; a single stage
command (what ``dvc repro`` calls) opens one for that stage, except the stages that act on
a trained model (evaluate, register), which log into that model's run. Stages never
open or look up runs themselves: they get a :class:`Tracker`.

A ``Tracker`` logs through ``MlflowClient`` with an explicit run id, so it works the
same from any thread (Prefect may run a task in a worker thread) and needs no global
"active run". The run is created lazily: a pipeline run whose stages are all up to date
creates none.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
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


class Tracker:
    """The MLflow run a stage logs into; created on first use unless ``run_id`` is given."""

    def __init__(
        self,
        root: Path,
        experiment: str,
        run_id: str | None = None,
        run_name: str | None = None,
        tags: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
    ):
        # ``tags`` and ``params`` are written when the run is created (not onto a given run).
        self.root, self.experiment = Path(root), experiment
        self.run_name, self.tags, self.params = run_name, dict(tags or {}), dict(params or {})
        self._run_id = run_id
        self._client = None

    @property
    def client(self):
        if self._client is None:
            import mlflow

            use_store(self.root, self.experiment)
            self._client = mlflow.MlflowClient()
        return self._client

    @property
    def started(self) -> bool:
        return self._run_id is not None

    @property
    def run_id(self) -> str:
        if self._run_id is None:
            experiment_id = use_store(self.root, self.experiment)
            run = self.client.create_run(experiment_id, run_name=self.run_name, tags=self.tags)
            self._run_id = run.info.run_id
            if self.params:
                self.log_params(self.params)
        return self._run_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(key, str(value)[:6000]) for key, value in params.items()]
        for start in range(0, len(items), 100):  # the store takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(key, float(value), now, step or 0) for key, value in metrics.items()]
        for start in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[start : start + 1000])

    def set_tags(self, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, folder: Path | str, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def tag(self, key: str) -> str:
        return self.client.get_run(self.run_id).data.tags.get(key, "")

    def end(self, status: str = "FINISHED") -> None:
        """End the run if this tracker started or resumed one (FINISHED, FAILED or KILLED)."""
        if self._run_id is not None:
            self.client.set_terminated(self._run_id, status)
