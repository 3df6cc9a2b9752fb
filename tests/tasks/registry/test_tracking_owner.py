"""Runs left RUNNING by a process that is gone, and runs an interrupt went through."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from tasks.registry.tracking import TAG_PID, end_dead_runs, end_interrupted_runs, owner_tags, tracked_run, use_store


@pytest.fixture(autouse=True)
def no_runs_of_earlier_tests(monkeypatch):
    """end_interrupted_runs ends every run this process left open or failed; in a test worker
    that includes the runs of earlier tests (other stores), so each test here starts with none."""
    import tasks.registry.tracking as tracking

    monkeypatch.setattr(tracking, "_open_runs", {})
    monkeypatch.setattr(tracking, "_ended_unfinished", {})


REPO = Path(__file__).resolve().parents[3]

# Opens a run with the owner tags and is killed with it open, as by kill -9.
KILLED_OWNER = """
import os, signal, sys
from pathlib import Path
from tasks.registry.tracking import tracked_run, use_store
use_store(Path(sys.argv[1]), "ssl-pipeline")
with tracked_run(Path(sys.argv[1])) as run:
    print(run.info.run_id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_dead_owners_running_run_is_marked_killed_and_others_are_not(tmp_path, mlflow_store):
    root = tmp_path / "project"
    root.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", KILLED_OWNER, str(root)], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == -signal.SIGKILL
    dead = out.stdout.strip()
    client = MlflowClient(mlflow_store)
    assert client.get_run(dead).info.status == "RUNNING"  # what kill -9 leaves behind

    use_store(root, "ssl-pipeline")
    other_root = tmp_path / "other"
    with tracked_run(root) as live, tracked_run(other_root, nested=True) as elsewhere:
        client.set_tag(elsewhere.info.run_id, TAG_PID, str(out.args and 999999))  # dead pid, but another root
        assert end_dead_runs(root) == [dead]
        assert client.get_run(live.info.run_id).info.status == "RUNNING"  # its owner (this process) is alive
        assert client.get_run(elsewhere.info.run_id).info.status == "RUNNING"
    assert client.get_run(dead).info.status == "KILLED"
    assert end_dead_runs(root) == []


def test_owner_tags_name_this_process(tmp_path):
    tags = owner_tags(tmp_path)
    assert tags[TAG_PID] == str(os.getpid()) and tags["sslpipe.root"] == str(tmp_path.resolve())


def test_an_interrupted_run_ends_killed(tmp_path, mlflow_store):
    import tasks.registry.tracking

    tasks.registry.tracking._open_runs.clear()  # runs other tests of this process left behind
    tasks.registry.tracking._ended_unfinished.clear()
    use_store(tmp_path, "ssl-pipeline")
    with pytest.raises(KeyboardInterrupt), tracked_run(tmp_path) as run:
        raise KeyboardInterrupt
    client = MlflowClient(mlflow_store)
    assert client.get_run(run.info.run_id).info.status == "FAILED"  # what MLflow makes of it
    assert end_interrupted_runs() == [run.info.run_id]
    assert client.get_run(run.info.run_id).info.status == "KILLED"


def test_a_plain_mlflow_run_an_interrupt_went_through_ends_killed(tmp_path, mlflow_store):
    use_store(tmp_path, "ssl-pipeline")
    with pytest.raises(KeyboardInterrupt), mlflow.start_run() as run:
        raise KeyboardInterrupt
    assert end_interrupted_runs() == [run.info.run_id]
    assert MlflowClient(mlflow_store).get_run(run.info.run_id).info.status == "KILLED"


def test_tag_new_runs_tags_a_plain_mlflow_run(tmp_path, mlflow_store, monkeypatch):
    from tasks.registry.tracking import tag_new_runs

    monkeypatch.delenv("MLFLOW_RUN_CONTEXT", raising=False)
    tag_new_runs(tmp_path)
    use_store(tmp_path, "ssl-pipeline")
    with mlflow.start_run() as run:
        pass
    tags = MlflowClient(mlflow_store).get_run(run.info.run_id).data.tags
    assert tags[TAG_PID] == str(os.getpid()) and tags["sslpipe.root"] == str(tmp_path.resolve())


def test_a_tracker_run_ended_failed_by_an_interrupt_ends_killed(tmp_path, mlflow_store):
    from tasks.registry.tracking import Tracker

    tracker = Tracker(tmp_path, "ssl-pipeline")
    run_id = tracker.run_id
    tracker.end("FAILED")  # what a stage's clean-up does with Prefect's TerminationSignal
    assert end_interrupted_runs() == [run_id]
    assert MlflowClient(mlflow_store).get_run(run_id).info.status == "KILLED"
