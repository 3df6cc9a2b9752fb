"""dvc.yaml for real: `dvc repro` in a fresh git + DVC repo runs every stage, a second
`dvc repro` runs nothing, a changed pretrain param reruns only what follows it, and the
committed metrics compare with the new ones (`dvc metrics diff`); and pretraining in 2
processes (the count in the run's MLflow params), killed after its first epoch, resumes under
the next `dvc repro` to the uninterrupted run's encoder, bit for bit.
(Registration after 2 processes: tests/flows/test_pretrain_processes.py.)"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from ssl_models.training import checkpoint_extra
from tests.conftest import REPO, TINY_PARAMS, TINY_TEXT_PARAMS, kill_at_first_checkpoint, write_params

BIN = Path(sys.executable).parent


def _env(root: Path) -> dict[str, str]:
    """The venv on PATH, and the copy of the code in ``root`` first on the import path: the
    code that runs is the code dvc.yaml's deps name (relative paths in a project's checkout)."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(root)}


def _run(*args, cwd):
    out = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=_env(cwd), timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


def _ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([\w-]+)'", output))


def _dvc_repo(
    root: Path, inputs: dict[str, Path], unlabeled: str = "data/input/unlabeled", labeled: str = "data/input/labeled", **sections
) -> Path:
    """A fresh git + DVC repo at ``root`` with the code, dvc.yaml, the inputs (folders or
    files, under data/input/<name>) and params.yaml naming the unlabeled and labeled data."""
    root.mkdir()
    for package in ("flows", "tasks", "ssl_models"):  # the code deps dvc.yaml lists
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(REPO / name, root)
    (root / "data" / "input").mkdir(parents=True)
    for name, src in inputs.items():
        (shutil.copytree if src.is_dir() else shutil.copy)(src, root / "data" / "input" / name)
    write_params(root, unlabeled, labeled, **sections)
    _run("git", "init", "-q", cwd=root)
    _run("dvc", "init", "-q", cwd=root)
    _run("git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A", cwd=root)
    _run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init", cwd=root)
    return root


def test_dvc_repro_reproduces_and_skips_what_did_not_change(tmp_path, tiny_data, mlflow_store):
    root = _dvc_repo(tmp_path / "repo", tiny_data)

    first = _run("dvc", "repro", cwd=root)
    assert _ran(first) == {"validate", "ingest", "augment", "pretrain", "evaluate", "register", "embed"}
    assert (root / "reports" / "metrics.json").exists()
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    data_hash = next(o["md5"] for o in lock["stages"]["ingest"]["outs"] if o["path"] == "data/prepared/unlabeled")
    client = MlflowClient(mlflow_store, registry_uri=mlflow_store)
    version = client.get_model_version_by_alias("ssl-encoder", "challenger")
    assert version.tags["data_version"] == data_hash

    second = _run("dvc", "repro", cwd=root)
    assert _ran(second) == set()
    # What DVC leaves to git (metrics, plot data, small PNGs) is committed; what it caches is not.
    _run("git", "add", "-A", cwd=root)
    _run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first run", cwd=root)
    committed = set(_run("git", "ls-files", "reports", cwd=root).split())
    assert {"reports/metrics.json", "reports/label_efficiency.csv", "reports/pretrain/history.csv", "reports/evaluation.png"} <= committed
    assert not any(path.startswith("reports/validation/") for path in committed), committed

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["pretrain"]["epochs"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    third = _run("dvc", "repro", cwd=root)
    assert _ran(third) == {"pretrain", "evaluate", "register", "embed"}  # a new encoder: embed reruns
    assert int(client.get_model_version_by_alias("ssl-encoder", "challenger").version) == 2
    assert "up to date" in _run("dvc", "status", cwd=root).lower()
    # The experiment compares with the committed run: params and metrics, old and new.
    params_diff = json.loads(_run("dvc", "params", "diff", "--json", cwd=root))
    assert {key: params_diff["params.yaml"]["pretrain.epochs"][key] for key in ("old", "new")} == {"old": 2, "new": 1}
    metrics_diff = json.loads(_run("dvc", "metrics", "diff", "--all", "--json", cwd=root))
    probe = metrics_diff["reports/metrics.json"]["ssl.linear_probe_acc"]
    assert probe["old"] is not None and probe["new"] is not None, metrics_diff
    assert "ssl.linear_probe_acc" in _run("dvc", "metrics", "show", cwd=root)

    # A helper module that stages import (not a stage module itself) is a code dep of each of them.
    with open(root / "tasks" / "image" / "prepared.py", "a") as handle:
        handle.write("\n# touched\n")
    status = _run("dvc", "status", cwd=root)
    stale = set(re.findall(r"^([\w-]+):", status, flags=re.M))
    assert stale == {"ingest", "augment", "pretrain", "evaluate", "register", "embed"}, status
    assert "tasks/image/prepared.py" in status


def _git_commit(root: Path, message: str) -> None:
    _run("git", "add", "-A", cwd=root)
    _run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message, cwd=root)


def _sslpipe_ran(output: str) -> set[str]:
    return set(re.findall(r"sslpipe: ([\w-]+): running", output))


def test_sslpipe_run_and_dvc_keep_one_book(tmp_path, tiny_data, mlflow_store):
    """`sslpipe run` records every stage in dvc.lock as `dvc repro` would: then `dvc status` is
    clean and `dvc repro` runs nothing; a changed SSL method makes pretrain stale, never validate
    or ingest; `dvc exp run` and `sslpipe run` mix; a --set run is not recorded."""
    root = _dvc_repo(tmp_path / "repo", tiny_data)
    first = _run("sslpipe", "run", "-q", cwd=root)
    assert "registered as ssl-encoder version 1" in first
    assert "Data and pipelines are up to date." in _run("dvc", "status", cwd=root)
    assert _ran(_run("dvc", "repro", cwd=root)) == set()

    with open(root / "ssl_models" / "methods" / "mae.py", "a") as handle:
        handle.write("\n# a comment\n")
    stale = set(re.findall(r"^([\w-]+):", _run("dvc", "status", cwd=root), flags=re.M))
    assert "pretrain" in stale and not stale & {"validate", "ingest"}, stale
    second = _run("sslpipe", "run", cwd=root)
    assert "pretrain" in _sslpipe_ran(second) and not _sslpipe_ran(second) & {"validate", "ingest"}, second[-3000:]
    assert "Data and pipelines are up to date." in _run("dvc", "status", cwd=root)

    # An experiment through DVC, then sslpipe: it finds everything up to date.
    # embed follows the registration record: the same weights re-tag their version, and embed
    # reruns only if that record changed (the gate's decision, its reason).
    _git_commit(root, "first runs")
    registered = (root / "reports" / "registered.json").read_text()
    exp = _run("dvc", "exp", "run", "-S", "evaluate.knn_k=3", cwd=root)
    embed = {"embed"} if (root / "reports" / "registered.json").read_text() != registered else set()
    assert _ran(exp) == {"evaluate", "register"} | embed
    third = _run("sslpipe", "run", cwd=root)
    assert _sslpipe_ran(third) == set() and "nothing changed" in third

    # --set values that params.yaml does not hold: the stages run, dvc.lock keeps params.yaml's truth.
    lock = (root / "dvc.lock").read_text()
    registered = (root / "reports" / "registered.json").read_text()
    overridden = _run("sslpipe", "run", "--set", "evaluate.knn_k=5", cwd=root)
    embed = {"embed"} if (root / "reports" / "registered.json").read_text() != registered else set()
    assert _sslpipe_ran(overridden) == {"evaluate", "register"} | embed
    assert "knn_k: 3" in (root / "dvc.lock").read_text() and "knn_k: 5" not in (root / "dvc.lock").read_text()
    stale = set(re.findall(r"^([\w-]+):", _run("dvc", "status", cwd=root), flags=re.M))
    assert stale == {"evaluate", "register"} | embed, stale
    assert lock.count("knn_k") == (root / "dvc.lock").read_text().count("knn_k")


@pytest.mark.slow
def test_dvc_repro_trains_in_two_processes_and_resumes_after_a_kill(tmp_path, tiny_data, mlflow_store):
    pretrain = {**TINY_PARAMS["pretrain"], "processes": 2, "epochs": 4, "width": 8}
    root = _dvc_repo(tmp_path / "repo", tiny_data, pretrain=pretrain)
    _run("dvc", "repro", "augment", cwd=root)  # the stages before pretrain, once for both copies
    twin = tmp_path / "twin"
    shutil.copytree(root, twin)
    assert _ran(_run("dvc", "repro", "pretrain", cwd=twin)) == {"pretrain"}  # uninterrupted
    expected = (twin / "models" / "encoder" / "weights.pt").read_bytes()

    kill_at_first_checkpoint(["dvc", "repro", "pretrain"], root, env=_env(root))  # dvc, the stage and both workers
    killed_run = checkpoint_extra(next((root / ".sslpipe" / "checkpoints").glob("*.pt")))["run_id"]
    assert _ran(_run("dvc", "repro", "pretrain", cwd=root)) == {"pretrain"}

    assert (root / "models" / "encoder" / "weights.pt").read_bytes() == expected  # bit for bit
    assert json.loads((root / "models" / "encoder" / "config.json").read_text())["run_id"] == killed_run
    client = MlflowClient(mlflow_store, registry_uri=mlflow_store)
    run = client.get_run(killed_run)
    assert run.data.params["pretrain.processes"] == "2"
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(killed_run, "pretrain/loss")) == [1, 2, 3, 4]  # each epoch once
    assert client.search_runs([run.info.experiment_id], "attributes.status = 'RUNNING'") == []


@pytest.mark.slow
def test_dvc_repro_runs_the_text_pipeline(tmp_path, tiny_text, mlflow_store):
    """The same dvc.yaml with params.yaml pointing at text: every stage runs its text function."""
    inputs = {src.name: src for src in tiny_text.values()}
    root = _dvc_repo(tmp_path / "repo", inputs, "data/input/news.csv.gz", "data/input/news_labeled.csv.gz", **TINY_TEXT_PARAMS)

    first = _run("dvc", "repro", cwd=root)
    assert _ran(first) == {"validate", "ingest", "augment", "pretrain", "evaluate", "register", "embed"}
    assert {"ssl", "random_init", "tfidf"} <= set(yaml.safe_load((root / "reports" / "metrics.json").read_text()))
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    data_hash = next(o["md5"] for o in lock["stages"]["ingest"]["outs"] if o["path"] == "data/prepared/unlabeled")
    version = MlflowClient(mlflow_store, registry_uri=mlflow_store).get_model_version_by_alias("ssl-text-encoder", "challenger")
    assert version.tags["data_version"] == data_hash and version.tags["modality"] == "text"
    assert _ran(_run("dvc", "repro", cwd=root)) == set()
