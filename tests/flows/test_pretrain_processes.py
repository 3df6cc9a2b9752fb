"""`pretrain.processes=2` for real: the pipeline trains data-parallel in 2 gloo processes on the
CPU, through `sslpipe run`; the run's MLflow params say 2, rank 0 logged every epoch into the
pipeline's run, and the encoder is registered. (`dvc repro`: tests/test_dvc_pipeline.py.)"""

import pytest
from mlflow import MlflowClient

from tests.conftest import run_sslpipe


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
