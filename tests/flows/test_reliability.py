"""Reliability as a user meets it: real `sslpipe` processes on a tiny project, signals to
the process group as a terminal sends them, kill -9, two runs on one root, servers that
are not there."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow import MlflowClient

from tasks.core.root_lock import hold_root

REPO = Path(__file__).resolve().parents[2]
CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens there


def cli_env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # a temporary server unless a test sets one
    # No OMP_NUM_THREADS=1 here: with it, pretraining crashes in backward() (double free), also before this suite.
    env.update(PYTHONPATH=str(REPO), PYTHONFAULTHANDLER="1", PREFECT_SERVER_ANALYTICS_ENABLED="false", MLFLOW_DISABLE_TELEMETRY="true")
    env.update(extra)
    return env


def sslpipe(project: Path, *args: str, timeout: float = 300, **env) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "flows.cli", *args, "--root", str(project)]
    return subprocess.run(command, cwd=project, capture_output=True, text=True, env=cli_env(**env), timeout=timeout)


def start(project: Path, *args: str, **env) -> subprocess.Popen:
    """`sslpipe ...` in its own process group (as a terminal starts a job); output in files."""
    command = [sys.executable, "-m", "flows.cli", *args, "--root", str(project)]
    out = open(project / f"out-{time.monotonic_ns()}.txt", "w+")  # noqa: SIM115 - read back by output()
    err = open(project / f"err-{time.monotonic_ns()}.txt", "w+")  # noqa: SIM115
    proc = subprocess.Popen(command, cwd=project, stdout=out, stderr=err, env=cli_env(**env), start_new_session=True)
    proc.files = (out, err)
    return proc


def output(proc: subprocess.Popen) -> tuple[str, str]:
    texts = []
    for handle in proc.files:
        handle.seek(0)
        texts.append(handle.read())
    return texts[0], texts[1]


def store_path(uri: str) -> Path:
    return Path(uri.removeprefix("sqlite:///"))


def wait_for_running_run(proc: subprocess.Popen, store: Path, timeout: float = 400) -> str:
    """The id of the MLflow run pretraining opened, once it is RUNNING."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, output(proc)[1][-3000:]
        try:
            with sqlite3.connect(store) as db:
                row = db.execute("select run_uuid from runs where status = 'RUNNING'").fetchone()
        except sqlite3.Error:
            row = None
        if row:
            return row[0]
        time.sleep(1)
    raise AssertionError("pretraining never started")


def wait_or_explain(proc: subprocess.Popen, timeout: float) -> int:
    """``proc.wait``; if it does not end in time, fail with what it printed and where it is stuck
    (py-spy is not at hand: PYTHONFAULTHANDLER's SIGABRT dump of every thread goes to stderr)."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        tree = [f"{p.pid} {p.name()} {p.status()}" for p in alive(family(proc.pid))]
        os.kill(proc.pid, signal.SIGABRT)  # faulthandler prints every thread's stack, then it dies
        proc.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"still running {timeout:.0f} s after the signal; processes {tree}\n{output(proc)[1][-6000:]}") from None


def flow_run_states(project: Path) -> list[str]:
    with sqlite3.connect(project / ".prefect" / "prefect.db") as db:
        return [state for (state,) in db.execute("select state_type from flow_run")]


def family(pid: int) -> list[psutil.Process]:
    """The process and everything it started (the temporary Prefect server included)."""
    parent = psutil.Process(pid)
    return [parent, *parent.children(recursive=True)]


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_unreachable_mlflow_fails_at_once_and_touches_nothing(project):
    prepared = project / "data" / "prepared" / "unlabeled"
    prepared.mkdir(parents=True)
    (prepared / "images.npy").write_bytes(b"the previous data version")
    before = (prepared / "images.npy").stat().st_mtime_ns
    start_time = time.monotonic()
    out = sslpipe(project, "run", MLFLOW_TRACKING_URI=CLOSED)
    took = time.monotonic() - start_time
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]  # one line
    assert f"MLflow tracking server {CLOSED} is not reachable" in out.stderr
    assert took < 60
    assert (prepared / "images.npy").stat().st_mtime_ns == before
    assert not (project / "reports").exists()  # validation never ran


def test_unreachable_prefect_fails_at_once(project):
    start_time = time.monotonic()
    out = sslpipe(project, "run", PREFECT_API_URL=f"{CLOSED}/api")
    assert out.returncode == 2
    assert out.stderr.strip() == out.stderr.strip().splitlines()[-1] and f"Prefect API {CLOSED}/api is not reachable" in out.stderr
    assert "Traceback" not in out.stderr
    assert time.monotonic() - start_time < 60
    assert not (project / "data" / "prepared").exists()


def test_a_held_root_refuses_with_no_wait_and_is_waited_for_without(project):
    with hold_root(project, command="another sslpipe run"):
        refused = sslpipe(project, "validate", "--no-wait")
        assert refused.returncode == 2
        assert f"is in use by `another sslpipe run` (pid {os.getpid()} on " in refused.stderr
        assert "Traceback" not in refused.stderr

        waiting = start(project, "validate", "-q")
        deadline = time.monotonic() + 120
        while "waiting for" not in output(waiting)[1] and time.monotonic() < deadline:
            assert waiting.poll() is None, output(waiting)
            time.sleep(0.5)
        assert f"in use by `another sslpipe run` (pid {os.getpid()}" in output(waiting)[1]
        assert waiting.poll() is None  # still waiting while the root is held
    assert waiting.wait(timeout=300) == 0, output(waiting)[1][-2000:]
    assert (project / "reports" / "validation").is_dir()


@pytest.mark.slow
def test_ctrl_c_mid_pretraining_ends_everything_within_seconds(project, mlflow_store):
    proc = start(project, "run", "-q", "--set", "pretrain.epochs=500")
    run_id = wait_for_running_run(proc, store_path(mlflow_store))
    processes = family(proc.pid)
    assert len(processes) >= 2  # the CLI and its temporary Prefect server
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    rc = wait_or_explain(proc, timeout=60)
    took = time.monotonic() - sent
    _, stderr = output(proc)
    assert rc == 130
    assert took < 30
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == f"sslpipe run: interrupted by SIGINT; MLflow run {run_id} marked KILLED"
    assert MlflowClient(mlflow_store).get_run(run_id).info.status == "KILLED"
    assert flow_run_states(project) == ["CRASHED"]
    time.sleep(1)
    assert alive(processes) == []
    print(f"exit {took:.1f} s after SIGINT")


@pytest.mark.slow
def test_kill_9_leaves_nothing_alive_and_the_next_start_ends_the_dead_run(project, mlflow_store):
    proc = start(project, "run", "-q", "--set", "pretrain.epochs=500")
    run_id = wait_for_running_run(proc, store_path(mlflow_store))
    processes = family(proc.pid)
    assert len(processes) >= 2
    proc.kill()  # kill -9 of the CLI alone
    proc.wait()
    deadline = time.monotonic() + 20
    while alive(processes) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert alive(processes) == []  # the temporary server died with its parent
    assert MlflowClient(mlflow_store).get_run(run_id).info.status == "RUNNING"  # what kill -9 leaves

    nxt = sslpipe(project, "validate", "-q")
    assert nxt.returncode == 0, nxt.stderr[-2000:]
    assert f"marked 1 MLflow run(s) of a process that is gone as KILLED: {run_id}" in nxt.stderr
    assert MlflowClient(mlflow_store).get_run(run_id).info.status == "KILLED"


@pytest.mark.slow
def test_two_runs_on_one_root_never_mix(project, mlflow_store):
    shorter = ("--set", "evaluate.label_fractions=[1.0]")
    # The first trains long enough (60 tiny epochs, about a minute) to still hold the root when
    # the refused run and the second one have started: with 1 epoch it could end first.
    first = start(project, "run", "-q", *shorter, "--set", "pretrain.epochs=60")
    wait_for_running_run(first, store_path(mlflow_store))
    refused = sslpipe(project, "run", "--no-wait")
    assert refused.returncode == 2 and f"(pid {first.pid} on " in refused.stderr
    second = start(project, "run", "-q", *shorter, "--set", "pretrain.epochs=1", "--set", "pretrain.seed=1")
    deadline = time.monotonic() + 120
    while f"waiting for {project.resolve()}" not in output(second)[1]:
        assert first.poll() is None, "the first run ended before the second one reached the root lock"
        assert second.poll() is None and time.monotonic() < deadline, output(second)[1][-2000:]
        time.sleep(0.5)
    assert first.wait(timeout=900) == 0, output(first)[1][-2000:]
    assert second.wait(timeout=900) == 0, output(second)[1][-2000:]

    client = MlflowClient(mlflow_store, registry_uri=mlflow_store)
    versions = {int(v.version): v for v in client.search_model_versions("name = 'ssl-encoder'")}
    assert sorted(versions) == [1, 2]
    printed = {}
    for proc in (first, second):
        stdout = output(proc)[0]
        version = int(stdout.split("registered as ssl-encoder version ")[1].split()[0])
        printed[version] = stdout.split("MLflow run ")[1].split()[0]
    assert {v: versions[v].run_id for v in versions} == printed  # each version belongs to its own run
    assert printed[1] != printed[2]
    for run_id in printed.values():
        assert client.get_run(run_id).info.status == "FINISHED"
