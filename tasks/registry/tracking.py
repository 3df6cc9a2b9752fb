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

Runs are tagged with their owner (:func:`owner_tags`: host, pid, root) and the runs this
process opened are remembered, so that an interrupt can end them KILLED
(:func:`end_interrupted_runs`) and the next start can end those of a process that is gone
(:func:`end_dead_runs`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
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


def model_version_url(base: str, name: str, version: int | str) -> str:
    """A link to a registered model version's page, in the model-training view (see :func:`ui_url`)."""
    return f"{base.rstrip('/')}/#/models/{name}/versions/{version}?workflowType=machine_learning"


# Where the UI of a local store (sqlite, files) is served: `make mlflow-ui` listens here (it
# asks :func:`ui_listen_args`) and the links in Prefect's artifacts point here. One place:
# ``$MLFLOW_UI_URL`` if set, else this (where `mlflow ui` listens by default).
DEFAULT_UI = "http://127.0.0.1:5000"


def local_ui() -> str:
    """The address the UI of a local store is served at: ``$MLFLOW_UI_URL`` or :data:`DEFAULT_UI`."""
    return (os.environ.get("MLFLOW_UI_URL") or DEFAULT_UI).rstrip("/")


def ui_base(uri: str) -> str:
    """The MLflow UI for tracking ``uri``: a tracking server serves its own UI at its own
    address; a local store's is :func:`local_ui`."""
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    return local_ui()


def ui_listen_args() -> str:
    """``--host H --port P`` for ``mlflow ui`` to serve a local store where :func:`local_ui`
    says (what `make mlflow-ui` runs, so the artifacts' links and the UI agree)."""
    address = urlparse(local_ui())
    return f"--host {address.hostname or '127.0.0.1'} --port {address.port or 5000}"


def ui_hint(uri: str) -> str:
    """For a link into a local store's UI, how to start that UI (a tracking server's is up)."""
    if uri.startswith(("http://", "https://")):
        return ""
    return f" A local store: start its UI with `make mlflow-ui` (or `mlflow ui --backend-store-uri {uri} {ui_listen_args()}`)."


def run_name(prefix: str, data_version: str | None = None, now: datetime | None = None) -> str:
    """A readable, unique MLflow run name: ``simclr-1a2b3c4d-20261128-142501-7f3e``
    (prefix, the first 8 characters of the data version, UTC time, 4 random hex digits so
    that two runs started in the same second still differ)."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    parts = [prefix, (data_version or "")[:8], stamp, secrets.token_hex(2)]
    return "-".join(p for p in parts if p)


# Owner tags: which process on which host opened a run for which root.
TAG_HOST, TAG_PID, TAG_ROOT, TAG_STARTED = "sslpipe.host", "sslpipe.pid", "sslpipe.root", "sslpipe.pid_started"

# run id -> tracking URI of the runs this process has open (see tracked_run).
_open_runs: dict[str, str] = {}
# run id -> (status, tracking URI) of the runs this process ended FAILED or KILLED.
_ended_unfinished: dict[str, tuple[str, str]] = {}


def _process_started(pid: int) -> float | None:
    """A process's start time (to tell a live pid from a reused one); None if it is gone."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def owner_tags(root: Path) -> dict[str, str]:
    """Tags to put on every run this process opens for ``root``; :func:`end_dead_runs` reads them."""
    return {
        TAG_HOST: socket.gethostname(),
        TAG_PID: str(os.getpid()),
        TAG_ROOT: str(Path(root).resolve()),
        TAG_STARTED: f"{_process_started(os.getpid()) or time.time():.2f}",
    }


def source_tags(root: Path) -> dict[str, str]:
    """MLflow's own source tags, which fill the UI's Source column: the command and the commit."""
    import sys

    from tasks.core.lineage import git_commit

    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:2]]) if sys.argv and sys.argv[0] else "sslpipe"
    tags = {"mlflow.source.name": command, "mlflow.source.type": "LOCAL"}
    commit = git_commit(Path(root))
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit.removesuffix("-dirty")
    return tags


def tag_new_runs(root: Path) -> None:
    """Put :func:`owner_tags` on every run this process starts from now on (also a plain
    ``mlflow.start_run``), through MLflow's ``MLFLOW_RUN_CONTEXT`` tags."""
    extra = json.loads(os.environ.get("MLFLOW_RUN_CONTEXT") or "{}")
    os.environ["MLFLOW_RUN_CONTEXT"] = json.dumps({**extra, **owner_tags(root)})


def remember_open_run(run_id: str, uri: str | None = None) -> None:
    """Note a run as open in this process: an interrupt ends it KILLED."""
    import mlflow

    _open_runs[run_id] = uri or mlflow.get_tracking_uri()


def forget_open_run(run_id: str) -> None:
    _open_runs.pop(run_id, None)


@contextlib.contextmanager
def tracked_run(root: Path, run_id: str | None = None, tags: dict[str, str] | None = None, **start_run_kwargs) -> Iterator:
    """``mlflow.start_run`` (new run or ``run_id`` resumed) with the owner tags, remembered while open.

    On an exception MLflow ends it FAILED; it stays remembered, so that if the exception was an
    interrupt, :func:`end_interrupted_runs` turns that into KILLED.
    """
    import mlflow

    all_tags = {**owner_tags(root), **(tags or {})}
    with mlflow.start_run(run_id=run_id, tags=all_tags, **start_run_kwargs) as run:
        remember_open_run(run.info.run_id)
        yield run
    forget_open_run(run.info.run_id)


def end_interrupted_runs(status: str = "KILLED") -> list[str]:
    """End every run this process still has open (or left failed by an interrupt) as ``status``."""
    import mlflow
    from mlflow import MlflowClient

    active = mlflow.active_run()  # also a run opened with plain mlflow.start_run
    if active is not None:
        _open_runs.setdefault(active.info.run_id, mlflow.get_tracking_uri())
        mlflow.end_run(status)
    else:
        # A plain `with mlflow.start_run()` the interrupt went through has just ended it FAILED.
        try:
            last = mlflow.last_active_run()
        except Exception:  # noqa: BLE001 - e.g. a run of another store than the current one
            last = None
        if last is not None and last.info.status in ("RUNNING", "FAILED"):
            _open_runs.setdefault(last.info.run_id, mlflow.get_tracking_uri())
    ended = []
    for run_id, uri in list(_open_runs.items()):
        MlflowClient(uri).set_terminated(run_id, status=status)
        forget_open_run(run_id)
        ended.append(run_id)
    # Runs the interrupt already ended on its way out (a Tracker ends its run FAILED, say,
    # on Prefect's TerminationSignal): the interrupt is why, so they end as ``status``.
    for run_id, (ended_as, uri) in list(_ended_unfinished.items()):
        if ended_as != status:
            MlflowClient(uri).set_terminated(run_id, status=status)
        del _ended_unfinished[run_id]
        ended.append(run_id)
    return ended


def _runs_of_root(client, root: Path, extra: str = "") -> list:
    from mlflow.entities import ViewType

    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    if not experiments:
        return []
    host = socket.gethostname().replace("'", "")
    where = (
        f"attributes.status = 'RUNNING' and tags.`{TAG_HOST}` = '{host}' and tags.`{TAG_ROOT}` = '{str(root).replace(chr(39), '')}'{extra}"
    )
    return client.search_runs(experiments, filter_string=where, run_view_type=ViewType.ALL, max_results=1000)


def end_runs_of_this_process(root: Path, status: str = "KILLED") -> list[str]:
    """End this process's RUNNING runs of ``root`` (found by their owner tags) and the ones it
    remembers as open; for a clean-up from another thread than the one that opened them."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri(Path(root)))
    ended = []
    for run in _runs_of_root(client, Path(root).resolve(), f" and tags.`{TAG_PID}` = '{os.getpid()}'"):
        client.set_terminated(run.info.run_id, status=status)
        ended.append(run.info.run_id)
    for run_id, uri in list(_open_runs.items()):
        if run_id not in ended:
            MlflowClient(uri).set_terminated(run_id, status=status)
            ended.append(run_id)
        forget_open_run(run_id)
    return ended


def end_dead_runs(root: Path) -> list[str]:
    """Mark KILLED the RUNNING runs of ``root`` opened on this host by a process that is gone.

    Call it holding the root's lock (then no other live run of this root can exist, but the
    pid check keeps it safe either way). Returns the ids of the runs it ended.
    """
    from mlflow import MlflowClient

    root = Path(root).resolve()
    client = MlflowClient(tracking_uri(root))
    ended = []
    for run in _runs_of_root(client, root):
        pid = int(run.data.tags.get(TAG_PID, "0") or 0)
        started = _process_started(pid) if pid > 0 else None
        recorded = float(run.data.tags.get(TAG_STARTED, "0") or 0)
        # A live pid with another start time is a reused pid: its run's owner is gone too.
        owner_alive = started is not None and (not recorded or abs(started - recorded) < 2)
        if not owner_alive:
            client.set_terminated(run.info.run_id, status="KILLED")
            ended.append(run.info.run_id)
    return ended


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

    def adopt(self, run_id: str) -> None:
        """Continue ``run_id`` (the run of an interrupted training) instead of a new run,
        unless this tracker already logs into a run of its own."""
        if self._run_id is None:
            self._run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            remember_open_run(run_id, self.client.tracking_uri)

    @property
    def run_id(self) -> str:
        if self._run_id is None:
            experiment_id = use_store(self.root, self.experiment)
            # Owner tags: an interrupt ends the run KILLED, and the next start can tell it died.
            tags = {**owner_tags(self.root), **source_tags(self.root), **self.tags}
            run = self.client.create_run(experiment_id, run_name=self.run_name, tags=tags)
            self._run_id = run.info.run_id
            remember_open_run(self._run_id, self.client.tracking_uri)
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
        items = [Metric(key, _significant(value), now, step or 0) for key, value in metrics.items()]
        for start in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[start : start + 1000])

    def set_tags(self, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, f"{value:.4g}" if isinstance(value, float) else str(value))

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, folder: Path | str, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def log_table(self, rows: list[dict], artifact_file: str) -> None:
        """``rows`` as an MLflow table artifact (what ``MlflowClient.log_table`` writes: JSON,
        pandas' split orient, listed in the run's ``mlflow.loggedArtifacts`` tag, so the UI and
        ``mlflow.load_table`` read it as a table), replacing one of that name: log_table would
        append, and a stage that runs again into its model's run must not list its rows twice."""
        import tempfile

        import pandas as pd
        from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

        folder, name = os.path.split(artifact_file)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            pd.DataFrame(rows).to_json(path, orient="split", index=False, double_precision=6)  # as metrics are: 6 digits
            self.log_artifact(path, folder or None)
        listed = json.loads(self.tag(MLFLOW_LOGGED_ARTIFACTS) or "[]")
        entry = {"path": artifact_file, "type": "table"}
        if entry not in listed:
            self.client.set_tag(self.run_id, MLFLOW_LOGGED_ARTIFACTS, json.dumps([*listed, entry]))

    def tag(self, key: str) -> str:
        return self.client.get_run(self.run_id).data.tags.get(key, "")

    def end(self, status: str = "FINISHED") -> None:
        """End the run if this tracker started or resumed one (FINISHED, FAILED or KILLED)."""
        if self._run_id is not None:
            self.client.set_terminated(self._run_id, status)
            forget_open_run(self._run_id)
            if status in ("FAILED", "KILLED"):  # maybe by an interrupt: see end_interrupted_runs
                _ended_unfinished[self._run_id] = (status, self.client.tracking_uri)


def log_training_dataset(
    name: str, dvc_hash: str, source: str, count: int, run_id: str | None = None, context: str = "training", profile: dict | None = None
) -> None:
    """Record the data a run trained on as an MLflow dataset input: its DVC hash is the digest
    (the same data gives the same digest across runs), ``count`` the number of images;
    ``profile``: more of what the UI shows beside it (e.g. the splits' sizes)."""
    import mlflow
    from mlflow.entities import Dataset, DatasetInput, InputTag

    source_entity = _dataset_source(source)
    dataset = Dataset(
        name=name,
        digest=dvc_hash,
        source_type=source_entity._get_source_type(),
        source=source_entity.to_json(),
        profile=json.dumps({"num_images": count, **(profile or {})}),  # what the UI shows beside the digest
    )
    run_id = run_id or mlflow.active_run().info.run_id
    mlflow.MlflowClient().log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])])


def _dataset_source(source: str):
    """A local path as a file URI; anything else (``torchvision:CIFAR10``) verbatim, as a tag."""
    from mlflow.data.code_dataset_source import CodeDatasetSource

    if Path(source).exists():
        import warnings

        from mlflow.data.dataset_source_registry import resolve_dataset_source

        with warnings.catch_warnings():  # MLflow registers its local source twice and warns that it is ambiguous
            warnings.simplefilter("ignore", UserWarning)
            return resolve_dataset_source(Path(source).resolve().as_uri())
    return CodeDatasetSource(tags={"source": source})


def _significant(value: float) -> float:
    """``value`` to 6 significant digits: a float32 accuracy of 0.32 reads 0.32 in the UI, not
    0.3199999928474426, and nothing a person or a comparison would notice is lost."""
    return float(f"{float(value):.6g}")


def weights_dir(downloaded: str | Path) -> Path:
    """The folder holding weights.pt + config.json in a downloaded model: ``artifacts/`` of a
    pyfunc logged here (tasks/registry/models.py), or the model folder itself for a version
    registered as plain files. Here, not with the model logging: pretrain reads registered
    weights too (``pretrain.init=models:/...``) and does not depend on how models are logged."""
    downloaded = Path(downloaded)
    return downloaded / "artifacts" if (downloaded / "artifacts" / "weights.pt").exists() else downloaded
