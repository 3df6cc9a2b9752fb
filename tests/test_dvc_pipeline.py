"""dvc.yaml for real: `dvc repro` in a fresh git + DVC repo runs every stage, a second
`dvc repro` runs nothing, a changed pretrain param reruns only what follows it, and the
committed metrics compare with the new ones (`dvc metrics diff`)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from mlflow import MlflowClient

from tests.conftest import REPO, write_params

BIN = Path(sys.executable).parent


def _run(*args, cwd):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


def _ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([\w-]+)'", output))


def test_dvc_repro_reproduces_and_skips_what_did_not_change(tmp_path, tiny_data, mlflow_store):
    root = tmp_path / "repo"
    root.mkdir()
    for package in ("flows", "tasks", "ssl_models"):  # the code deps dvc.yaml lists
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(REPO / name, root)
    for name, src in tiny_data.items():
        shutil.copytree(src, root / "data" / "input" / name)
    write_params(root, "data/input/unlabeled", "data/input/labeled")
    _run("git", "init", "-q", cwd=root)
    _run("dvc", "init", "-q", cwd=root)
    _run("git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A", cwd=root)
    _run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init", cwd=root)

    first = _run("dvc", "repro", cwd=root)
    assert _ran(first) == {"validate", "ingest", "augment", "pretrain", "evaluate", "register"}
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
    assert _ran(third) == {"pretrain", "evaluate", "register"}
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
    with open(root / "tasks" / "prepared.py", "a") as handle:
        handle.write("\n# touched\n")
    status = _run("dvc", "status", cwd=root)
    stale = set(re.findall(r"^([\w-]+):", status, flags=re.M))
    assert stale == {"ingest", "augment", "pretrain", "evaluate", "register"}, status
    assert "modified:           tasks/prepared.py" in status or "tasks/prepared.py" in status
