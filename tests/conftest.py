"""Shared fixtures: tiny real data cut from the bundled CIFAR-10 sample, a temp
project root, a temp MLflow store, and one Prefect test server per session."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on a 2-core machine: one thread each (and in the processes
    # they start), or OpenMP's spinning threads fight over the cores and everything slows down.
    os.environ["OMP_NUM_THREADS"] = "1"

# --- the longest test files first ------------------------------------------------------------
# Two xdist workers (make test) end together only if no long test starts last: test files run
# longest first, by the seconds each took in an earlier run (tests/durations.json; refresh it
# with `pytest --store-durations`). A file's tests stay together and in their order, so its
# module fixtures are set up once per worker. Files not listed follow in collection order.
DURATIONS = Path(__file__).with_name("durations.json")


def pytest_addoption(parser):
    parser.addoption("--store-durations", action="store_true", help="write each test file's seconds to tests/durations.json")


def _test_file(nodeid: str) -> str:
    return nodeid.split("::")[0]


def pytest_collection_modifyitems(config, items):
    seconds = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
    items.sort(key=lambda item: -seconds.get(_test_file(item.nodeid), 0.0))  # stable


_seconds_by_file: dict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report):
    _seconds_by_file[_test_file(report.nodeid)] += report.duration  # setup, call and teardown


def pytest_sessionfinish(session):
    if session.config.getoption("--store-durations") and not hasattr(session.config, "workerinput"):  # the controller
        DURATIONS.write_text(json.dumps({name: round(s, 1) for name, s in sorted(_seconds_by_file.items())}, indent=0) + "\n")


# Small enough to train in seconds on 2 cores, real enough to exercise every stage.
TINY_PARAMS = {
    "validate": {"min_images": 8},
    "augment": {"preview_images": 4},
    "pretrain": {"epochs": 2, "width": 4, "batch_size": 32, "warmup_epochs": 0},
    "evaluate": {"knn_k": 5, "probe_weight_decays": [0.01, 0.1]},
    "finetune": {"steps": 2, "batch_size": 8, "warmup_steps": 1},
}


# Text: the MLM pipeline at a size that runs in seconds (tests/flows/test_text_pipeline.py).
TINY_TEXT_PARAMS = {
    "pretrain": {"method": "mlm"},
    "text": {"vocab_size": 300, "max_len": 32, "dim": 32, "depth": 1, "epochs": 1, "warmup_epochs": 0},
}


def _extract(archive: Path, members: list[str], dest: Path) -> None:
    with tarfile.open(archive) as tar:
        wanted = set(members)
        tar.extractall(dest, members=[m for m in tar.getmembers() if m.name in wanted], filter="data")


@pytest.fixture(scope="session")
def sample_members() -> dict[str, list[str]]:
    with tarfile.open(SAMPLE / "unlabeled.tar.gz") as tar:
        unlabeled = sorted(m.name for m in tar.getmembers() if m.isfile())
    with tarfile.open(SAMPLE / "labeled.tar.gz") as tar:
        labeled = sorted(m.name for m in tar.getmembers() if m.isfile())
    return {"unlabeled": unlabeled, "labeled": labeled}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, sample_members) -> dict[str, Path]:
    """128 unlabeled images and a 3-class labeled set (16 train + 8 test per class)."""
    root = tmp_path_factory.mktemp("tiny")
    _extract(SAMPLE / "unlabeled.tar.gz", sample_members["unlabeled"][:128], root)
    classes = ("airplane", "cat", "ship")
    picked = []
    for split, count in (("train", 16), ("test", 8)):
        for cls in classes:
            picked += [m for m in sample_members["labeled"] if m.startswith(f"labeled/{split}/{cls}/")][:count]
    _extract(SAMPLE / "labeled.tar.gz", picked, root)
    return {"unlabeled": root / "unlabeled", "labeled": root / "labeled"}


@pytest.fixture(scope="session")
def tiny_text(tmp_path_factory) -> dict[str, Path]:
    """200 unlabeled news articles (no label column) and a disjoint labeled set of 30 per class,
    cut from the bundled AG News slice."""
    import pandas as pd

    root = tmp_path_factory.mktemp("tiny_text")
    pd.read_csv(SAMPLE / "news.csv.gz").head(200).to_csv(root / "news.csv.gz", index=False)
    pd.read_csv(SAMPLE / "news_labeled.csv.gz").groupby("label").head(30).to_csv(root / "news_labeled.csv.gz", index=False)
    return {"unlabeled": root / "news.csv.gz", "labeled": root / "news_labeled.csv.gz"}


def write_params(root: Path, unlabeled: Path | str, labeled: Path | str, **sections) -> Path:
    """The repo's params.yaml (DVC needs every key) with tiny settings and the given data."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in {**TINY_PARAMS, "data": {"unlabeled": str(unlabeled), "labeled": str(labeled)}, **sections}.items():
        params[key].update(value)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def use_mlflow_store(monkeypatch, uri: str) -> None:
    """Select ``uri`` as tracking and registry store for one test, through the environment.

    MLflow's ``set_tracking_uri``/``set_registry_uri``/``set_experiment`` keep module globals
    and also write the environment, for good: cleared here and restored after the test, so
    no test talks to the store (or the dead server) of an earlier one.
    """
    import mlflow.tracking._model_registry.utils as registry_utils
    import mlflow.tracking._tracking_service.utils as tracking_utils
    import mlflow.tracking.fluent as fluent

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    for name in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.setenv(name, "")  # remembers the value before, so set_experiment's write is undone too
        monkeypatch.delenv(name)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    monkeypatch.setattr(registry_utils, "_registry_uri", None)
    monkeypatch.setattr(fluent, "_active_experiment_id", None)


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> str:
    """A fresh sqlite MLflow store in a temp dir (see :func:`use_mlflow_store`)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    use_mlflow_store(monkeypatch, uri)
    return uri


@pytest.fixture
def project(tmp_path, tiny_data, mlflow_store) -> Path:
    """A temp project root with tiny params pointing at copies of the tiny data."""
    root = tmp_path / "project"
    root.mkdir()
    for name, src in tiny_data.items():
        shutil.copytree(src, root / "input" / name)
    write_params(root, root / "input" / "unlabeled", root / "input" / "labeled")
    return root


@pytest.fixture(scope="session")
def prefect_server():
    """One real (temporary) Prefect server for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def make_registrable_project(root: Path, probe_acc: float, data_seed: int = 0, encoder_seed: int = 0):
    """What the register stage reads, without training: a width-4 encoder with its finished
    MLflow run (in the store MLFLOW_TRACKING_URI names), a random 3-class labeled set, and
    metrics.json scoring that encoder with the given probe accuracy. Returns the Layout."""
    import json

    import mlflow
    import numpy as np
    import torch

    from ssl_models.encoder import Encoder, save_encoder
    from tasks.core.layout import Layout
    from tasks.registry.tracking import use_store

    layout = Layout.at(root)
    use_store(layout.root, "ssl-pipeline")
    with mlflow.start_run(tags={"data_version": f"data-{data_seed}"}) as run:
        pass
    torch.manual_seed(encoder_seed)
    save_encoder(Encoder("resnet18_cifar", {"width": 4}), layout.encoder, extra={"method": "simclr", "run_id": run.info.run_id})
    layout.labeled.mkdir(parents=True)
    layout.unlabeled.mkdir(parents=True)
    (layout.unlabeled / "counts.json").write_text(json.dumps({"unlabeled": 0}))
    rng = np.random.default_rng(data_seed)
    for split, n in (("train", 8), ("test", 4)):
        np.save(layout.labeled / f"{split}_images.npy", rng.integers(0, 256, (3 * n, 32, 32, 3), dtype=np.uint8))
        np.save(layout.labeled / f"{split}_labels.npy", np.repeat(np.arange(3), n))
    (layout.labeled / "classes.json").write_text(json.dumps(["a", "b", "c"]))
    (layout.labeled / "counts.json").write_text(json.dumps({"train": 24, "test": 12}))
    write_probe_metrics(layout, probe_acc)
    return layout


def write_probe_metrics(layout, probe_acc: float) -> None:
    """reports/metrics.json scoring the layout's encoder with ``probe_acc``."""
    import json

    from tasks.core.results import Pretrained

    pretrained = Pretrained.load(layout)
    layout.reports.mkdir(parents=True, exist_ok=True)
    metrics = {
        "ssl": {"linear_probe_acc": probe_acc, "knn_acc": 0.5, "probe_weight_decay": 0.1},
        "encoder": {"sha256": pretrained.weights_sha256, "run_id": pretrained.run_id},
    }
    layout.metrics.write_text(json.dumps(metrics))


def register_stage(layout, cfg) -> dict:
    """The register stage as `sslpipe register` runs it; returns reports/registered.json."""
    import json

    from flows.stage_runner import run_alone

    run_alone("register", layout, cfg.resolved(), progress=False)
    return json.loads(layout.registered.read_text())


def code_env() -> dict[str, str]:
    """The environment for a child process that runs this checkout's code."""
    return {**os.environ, "PYTHONPATH": str(REPO)}


def run_sslpipe(*args: str, cwd: Path):
    """``python -m flows.cli ARGS`` in ``cwd`` with this checkout's code; asserts it succeeds."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd, env=code_env(), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def kill_at_first_checkpoint(command: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> None:
    """Start ``command`` in ``cwd``, wait for pretraining's first resume checkpoint (written
    after epoch 1), then SIGKILL the command's whole process group, as a power cut would
    (dvc, the stage it runs, and any training processes the stage spawned)."""
    import signal
    import subprocess
    import time

    # A session of its own: the kill reaches every process the command started.
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    checkpoints = cwd / ".sslpipe" / "checkpoints"
    deadline = time.monotonic() + timeout
    while not any(checkpoints.glob("*.pt")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    if not any(checkpoints.glob("*.pt")):
        process.kill()
        raise AssertionError(f"no checkpoint after the first epoch: {process.communicate()[1][-3000:]}")
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert not (cwd / "models" / "encoder").exists(), "the run ended before the kill: make it longer"


@pytest.fixture
def hub_offline(monkeypatch):
    """The Hugging Face hub (where timm's weights live) offline, as without a network: any
    download attempt fails at once. The environment variable is read when huggingface_hub is
    imported, so the module's flag is set too."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def small_fs(tmp_path):
    """A factory of real size-limited file systems: ``small_fs(4)`` mounts a 4 MB tmpfs under
    ``tmp_path`` and returns its folder (unmounted after the test). Needs root (CI runs as root);
    elsewhere the test is skipped, saying why."""
    import subprocess

    mounted: list[Path] = []

    def mount(megabytes: int) -> Path:
        folder = tmp_path / f"fs-{len(mounted)}"
        folder.mkdir()
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)], capture_output=True, text=True)
        if out.returncode != 0:
            pytest.skip(f"cannot mount a {megabytes} MB tmpfs here ({out.stderr.strip() or 'mount failed'}); needs root")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)
