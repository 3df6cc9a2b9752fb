"""Resume after a crash, for real: `sslpipe pretrain` killed with SIGKILL after its first
epoch, then the same command again, gives the uninterrupted run's encoder bit for bit, in the
same MLflow run, and leaves no run RUNNING."""

import json
import shutil
import sys
from pathlib import Path

from mlflow import MlflowClient

from tests.conftest import code_env, kill_at_first_checkpoint, run_sslpipe


def _prepare(root: Path) -> None:
    for stage in ("validate", "ingest", "augment"):
        run_sslpipe(stage, "-q", "--set", "pretrain.epochs=3", cwd=root)


def _weights(root: Path) -> bytes:
    return (root / "models" / "encoder" / "weights.pt").read_bytes()


def test_a_killed_pretraining_resumes_to_the_same_encoder_in_the_same_run(project, tmp_path, mlflow_store):
    settings = ("--set", "pretrain.epochs=3", "--set", "pretrain.width=8")
    _prepare(project)
    twin = tmp_path / "twin"
    shutil.copytree(project, twin)  # the stages before pretrain once, for both copies

    run_sslpipe("pretrain", "-q", *settings, cwd=project)  # uninterrupted
    expected = _weights(project)

    kill_at_first_checkpoint([sys.executable, "-m", "flows.cli", "pretrain", "-q", *settings], twin, env=code_env())
    checkpoints = twin / ".sslpipe" / "checkpoints"

    again = run_sslpipe("pretrain", *settings, cwd=twin)
    assert "resuming pretraining" in again.stderr
    assert _weights(twin) == expected  # bit for bit on the CPU
    assert not any(checkpoints.glob("*.pt"))  # removed once the encoder is written

    client = MlflowClient(mlflow_store)
    run_id = json.loads((twin / "models" / "encoder" / "config.json").read_text())["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    # One run holds every epoch once: those logged before the kill, the resumed ones, and one
    # whose report a kill between its checkpoint and its report cut off (logged after resuming).
    assert sorted(m.step for m in client.get_metric_history(run_id, "pretrain/loss")) == [1, 2, 3]
    experiment = run.info.experiment_id
    assert client.search_runs([experiment], "attributes.status = 'RUNNING'") == []
