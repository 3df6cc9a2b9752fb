"""Resume after a crash, for real: `sslpipe pretrain` killed with SIGKILL after its first
epoch, then the same command again, gives the uninterrupted run's encoder bit for bit, in the
same MLflow run, and leaves no run RUNNING."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from mlflow import MlflowClient

from tests.conftest import REPO


def sslpipe_module(*args, cwd, wait=True):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "flows.cli", *args]
    if not wait:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _prepare(root: Path) -> None:
    for stage in ("validate", "ingest", "augment"):
        sslpipe_module(stage, "-q", "--set", "pretrain.epochs=3", cwd=root)


def _weights(root: Path) -> bytes:
    return (root / "models" / "encoder" / "weights.pt").read_bytes()


def test_a_killed_pretraining_resumes_to_the_same_encoder_in_the_same_run(project, tmp_path, mlflow_store):
    settings = ("--set", "pretrain.epochs=3", "--set", "pretrain.width=8")
    twin = tmp_path / "twin"
    shutil.copytree(project, twin)
    _prepare(project)
    _prepare(twin)

    sslpipe_module("pretrain", "-q", *settings, cwd=project)  # uninterrupted
    expected = _weights(project)

    process = sslpipe_module("pretrain", "-q", *settings, cwd=twin, wait=False)
    checkpoints = twin / ".sslpipe" / "checkpoints"
    deadline = time.monotonic() + 600
    while not any(checkpoints.glob("*.pt")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert any(checkpoints.glob("*.pt")), "no checkpoint after the first epoch"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert not (twin / "models" / "encoder").exists()

    again = sslpipe_module("pretrain", *settings, cwd=twin)
    assert "resuming pretraining" in again.stderr
    assert _weights(twin) == expected  # bit for bit on the CPU
    assert not any(checkpoints.glob("*.pt"))  # removed once the encoder is written

    client = MlflowClient(mlflow_store)
    run_id = json.loads((twin / "models" / "encoder" / "config.json").read_text())["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    # One run holds the epochs: the resumed ones, and those logged before the kill (a kill
    # between an epoch's checkpoint and its report loses that one report).
    assert [m.step for m in client.get_metric_history(run_id, "pretrain/loss")][-2:] == [2, 3]
    experiment = run.info.experiment_id
    assert client.search_runs([experiment], "attributes.status = 'RUNNING'") == []
