"""`pretrain.processes=2` for real: the pipeline trains data-parallel in 2 gloo processes on the
CPU, through `sslpipe run`; the run's MLflow params say 2, rank 0 logged every epoch into the
pipeline's run, and the encoder is registered. And the stage under torchrun joins torchrun's
processes (the several-machines path of docs/distributed.md, on one machine).
(`dvc repro`: tests/test_dvc_pipeline.py.)"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import code_env, run_sslpipe


@pytest.mark.slow  # the whole pipeline, with a temporary Prefect server: about a minute
def test_sslpipe_run_trains_in_two_processes(project, mlflow_store):
    run_sslpipe("run", "-q", "--set", "pretrain.processes=2", cwd=project)

    client = MlflowClient(mlflow_store, registry_uri=mlflow_store)
    version = client.get_model_version_by_alias("ssl-encoder", "challenger")
    run = client.get_run(version.run_id)
    assert run.data.params["pretrain.processes"] == "2"
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "pretrain/loss")] == [1, 2]
    assert (project / "models" / "encoder" / "weights.pt").exists()


@pytest.mark.slow
def test_the_stage_under_torchrun_joins_its_processes(project, mlflow_store):
    for stage in ("validate", "ingest", "augment"):
        run_sslpipe(stage, "-q", cwd=project)
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--nproc-per-node=2", "-m", "flows.cli", "pretrain", "-q"]
    out = subprocess.run(torchrun, cwd=project, env=code_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]

    client = MlflowClient(mlflow_store)
    pretrain_runs = client.search_runs([client.get_experiment_by_name("ssl-pipeline").experiment_id], "tags.`sslpipe.stage` = 'pretrain'")
    assert len(pretrain_runs) == 1  # rank 1 opened no run of its own
    run = pretrain_runs[0]
    assert run.data.params["pretrain.processes"] == "2"  # torchrun's count, not params.yaml's 1
    assert json.loads((project / "models" / "encoder" / "config.json").read_text())["run_id"] == run.info.run_id
    assert [m.step for m in client.get_metric_history(run.info.run_id, "pretrain/loss")] == [1, 2]
