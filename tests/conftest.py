"""Shared fixtures: tiny real data cut from the bundled CIFAR-10 sample, a temp
project root, a temp MLflow store, and one Prefect test server per session."""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

# Small enough to train in seconds on 2 cores, real enough to exercise every stage.
TINY_PARAMS = {
    "validate": {"min_images": 8},
    "augment": {"preview_images": 4},
    "pretrain": {"epochs": 2, "width": 4, "batch_size": 32, "warmup_epochs": 0},
    "evaluate": {"knn_k": 5, "probe_weight_decays": [0.01, 0.1]},
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


def write_params(root: Path, unlabeled: Path | str, labeled: Path | str, **sections) -> Path:
    """The repo's params.yaml (DVC needs every key) with tiny settings and the given data."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in {**TINY_PARAMS, "data": {"unlabeled": str(unlabeled), "labeled": str(labeled)}, **sections}.items():
        params[key].update(value)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> str:
    """A fresh sqlite MLflow store in a temp dir, selected through MLFLOW_TRACKING_URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
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
