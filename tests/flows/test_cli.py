"""The command line as a user meets it: real processes, real exit codes."""

import os
import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient

BIN = Path(sys.executable).parent


def sslpipe(*args, cwd, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([str(BIN / "sslpipe"), *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


def test_help_explains_every_command(tmp_path):
    out = sslpipe("--help", cwd=tmp_path)
    assert out.returncode == 0
    for command in ("run", "validate", "ingest", "augment", "pretrain", "evaluate", "register"):
        assert command in out.stdout
    run_help = sslpipe("run", "--help", cwd=tmp_path).stdout
    for option in ("--data", "--eval-data", "--set", "--params", "--root"):
        assert option in run_help


def test_missing_data_folder_is_a_clear_error(project):
    out = sslpipe("run", "--data", "no/such/folder", cwd=project)
    assert out.returncode == 2
    assert "no/such/folder: no such file or folder" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_bad_override_is_a_clear_error(project):
    out = sslpipe("pretrain", "--set", "pretrain.epochz=3", cwd=project)
    assert out.returncode == 2
    assert "pretrain.epochz" in out.stderr and "Traceback" not in out.stderr


def test_corrupt_file_stops_run_at_validation_and_registers_nothing(project, mlflow_store):
    pool = project / "input" / "unlabeled"
    (pool / "evil.jpg").write_text("<html>this is not a jpeg</html>")
    out = sslpipe("run", cwd=project)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "evil.jpg" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert not (project / "data" / "prepared").exists()
    assert MlflowClient(mlflow_store, registry_uri=mlflow_store).search_registered_models() == []

    alone = sslpipe("validate", cwd=project)
    assert alone.returncode == 2 and "evil.jpg" in alone.stdout


def test_serve_without_a_server_explains_what_to_start(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    out = subprocess.run(
        [str(BIN / "sslpipe"), "serve", "--cron", "0 3 * * *"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 2
    assert "prefect server start" in out.stderr and "Traceback" not in out.stderr


def test_a_misspelt_method_fails_before_any_stage_and_writes_nothing(project):
    out = sslpipe("run", "--set", "pretrain.method=simclrr", cwd=project)
    assert out.returncode == 2
    assert "unknown method 'simclrr'; valid methods:" in out.stderr and "simclr" in out.stderr
    typo = sslpipe("run", "--set", "pretrain.method_params={temprature: 0.5}", cwd=project)
    assert typo.returncode == 2 and "no hyperparameter 'temprature'" in typo.stderr
    for result in (out, typo):
        assert "Traceback" not in result.stderr + result.stdout
    assert sorted(p.name for p in project.iterdir()) == ["input", "params.yaml"]


def test_a_stage_without_its_inputs_names_what_is_missing(project):
    out = sslpipe("ingest", cwd=project)
    assert out.returncode == 2
    assert "reports/validation/unlabeled.json: missing; run `sslpipe validate` first" in out.stderr
    assert "Traceback" not in out.stderr
    evaluate = sslpipe("evaluate", cwd=project)
    assert evaluate.returncode == 2 and "run `sslpipe" in evaluate.stderr


def test_a_missing_params_file_is_an_error(project):
    out = sslpipe("validate", "--params", "nope.yaml", cwd=project)
    assert out.returncode == 2 and "nope.yaml: no such parameter file" in out.stderr
