"""Scheduled runs: the deployment as registered on a real Prefect server, `sslpipe serve`'s
refusals, and (slow) a served interval schedule whose run executes the pipeline and completes
on a real `prefect server start`."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from flows.cli import main
from flows.deploy import anchored, deploy_to_pool, pipeline_deployment
from tasks.core.config import load_config

REPO = Path(__file__).resolve().parents[2]


def test_deployment_is_registered_with_its_schedule_parameters_and_one_run_at_a_time(tmp_path, prefect_server):
    deployment_id = pipeline_deployment(tmp_path, cron="0 3 * * *", timezone="Europe/Berlin", overrides=["pretrain.epochs=3"]).apply()
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment(deployment_id)
    assert deployment.name == "scheduled"
    assert deployment.parameters == {"root": str(tmp_path.resolve()), "params": "params.yaml", "overrides": ["pretrain.epochs=3"]}
    assert [(s.schedule.cron, s.schedule.timezone) for s in deployment.schedules] == [("0 3 * * *", "Europe/Berlin")]
    # One run at a time; a run due while one is active is cancelled, not queued.
    assert deployment.global_concurrency_limit.limit == 1
    assert deployment.concurrency_options.collision_strategy.value == "CANCEL_NEW"


def test_deployment_on_a_process_work_pool_runs_in_the_project_root(tmp_path, prefect_server):
    from prefect.client.schemas.actions import WorkPoolCreate

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="ssl-pool", type="process"))
    deployment_id = deploy_to_pool("ssl-pool", tmp_path, interval=3600, name="pooled")
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment(deployment_id)
    assert deployment.work_pool_name == "ssl-pool" and deployment.entrypoint == "flows/deploy.py:scheduled_pipeline"
    assert deployment.job_variables["working_dir"] == str(tmp_path.resolve())
    assert deployment.global_concurrency_limit.limit == 1


def test_relative_data_paths_resolve_against_the_root_not_the_working_directory(tmp_path):
    cfg = anchored(load_config(None, ["data.unlabeled=input/u", "data.labeled=/abs/l", "finetune.data=torchvision:CIFAR10"]), tmp_path)
    assert cfg.data.unlabeled == str(tmp_path / "input" / "u")
    assert cfg.data.labeled == "/abs/l" and cfg.finetune.data == "torchvision:CIFAR10"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cron", "every day"], "Invalid cron string"),
        (["--cron", "0 3 * * *", "--timezone", "Mars/Olympus"], "unknown timezone 'Mars/Olympus'"),
        (["--interval", "0"], "interval must be positive"),
        (["--interval", "60", "--params", "nope.yaml"], "nope.yaml: no such parameter file"),
        (["--interval", "60", "--set", "pretrain.epochs=many"], "pretrain.epochs"),
    ],
    ids=["cron", "timezone", "interval", "params", "set"],
)
def test_serve_refuses_a_bad_schedule_at_once(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # never reached: the check comes first
    (tmp_path / "params.yaml").write_text("{}\n")
    assert main(["serve", "--root", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_serve_without_a_prefect_server_says_how_to_start_one(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert main(["serve", "--root", str(tmp_path), "--interval", "60"]) == 2
    assert "prefect server start" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.slow
def test_a_served_interval_schedule_runs_the_pipeline_to_completion(tmp_path, project):
    import httpx

    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = os.environ | {
        "PREFECT_HOME": str(tmp_path / "prefect-home"),  # its own database, not ~/.prefect
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
        "PYTHONPATH": str(REPO),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    server_log, serve_log = tmp_path / "server.log", tmp_path / "serve.log"
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, cwd=tmp_path, stdout=server_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    served = None
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, server_log.read_text()[-3000:]
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "prefect server did not answer /api/health in 180 s"
            time.sleep(1)
        # From another working directory: the root, its params and its relative data paths come from --root.
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        served = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "serve", "--root", str(project), "--interval", "5",
                "--set", "pretrain.epochs=1", "--set", "evaluate.label_fractions=[1.0]"],
            env=env, cwd=elsewhere, stdout=serve_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 900
        states: list[str] = []
        while "COMPLETED" not in states:
            assert served.poll() is None, serve_log.read_text()[-3000:]
            assert "FAILED" not in states and "CRASHED" not in states, serve_log.read_text()[-5000:]
            assert time.monotonic() < deadline, f"no completed scheduled run in 900 s: {states}\n{serve_log.read_text()[-3000:]}"
            time.sleep(3)
            response = httpx.post(f"{api}/flow_runs/filter", json={"flow_runs": {"deployment_id": {"is_null_": False}}}, timeout=10)
            states = [run["state_type"] for run in response.json()]
        assert (project / "reports" / "registered.json").exists()
        # Runs due while one was active were skipped (cancelled), not queued behind it.
        assert "CANCELLED" in states and "PENDING" not in states
    finally:
        if served is not None:
            _stop(served)
        _stop(server)
