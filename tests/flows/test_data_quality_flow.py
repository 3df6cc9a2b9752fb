"""A dirty dump through the CLI and the flow: real processes, a real Prefect server, a real
sqlite MLflow store. Stop registers nothing and leaves the training data as it was;
quarantine trains on exactly the good files."""

import pandas as pd
from mlflow import MlflowClient

from flows.pipeline import ssl_pipeline
from tasks.core.config import load_config
from tasks.image.shards import ShardReader
from tests import dirty_dump
from tests.dirty_dump import EXPECTED
from tests.flows.test_cli import sslpipe

QUARANTINE = ["validate.on_fail=quarantine", "validate.max_bad_fraction=0.5"]
BAD = {path: fault for path, fault in EXPECTED.items() if fault}


def _dump(project, tmp_path, tiny_data):
    return dirty_dump.build(project / "input" / "dump", sorted(tiny_data["unlabeled"].glob("*.jpg")), tmp_path / "outside")


def test_cli_validate_reports_every_fault_then_quarantines(project, tmp_path, tiny_data):
    dump = _dump(project, tmp_path, tiny_data)
    stop = sslpipe("validate", "--data", str(dump), cwd=project)
    assert stop.returncode == 2, stop.stderr[-2000:]
    assert "Traceback" not in stop.stdout + stop.stderr
    assert "unlabeled: FAILED" in stop.stdout and "labeled: passed" in stop.stdout
    for fault in set(BAD.values()):
        assert fault in stop.stdout
    listed = pd.read_csv(project / "reports" / "quarantine.csv")
    assert dict(zip(listed["path"], listed["fault"], strict=True)) == BAD
    assert set(listed["dataset"]) == {"unlabeled"}

    overrides = [arg for item in QUARANTINE for arg in ("--set", item)]
    go = sslpipe("validate", "--data", str(dump), *overrides, cwd=project)
    assert go.returncode == 0, go.stdout[-2000:] + go.stderr[-2000:]
    assert "quarantined" in go.stdout and "Traceback" not in go.stdout + go.stderr
    table = pd.read_csv(project / "reports" / "validation" / "unlabeled_table.csv")
    assert sorted(table.loc[table["accepted"], "path"]) == dirty_dump.good_paths(dump)


def _validation_artifact(flow_run_id) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["data-validation"]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
            )
        )
    return found[0].data


def test_quarantine_trains_on_the_good_files_and_a_stop_changes_nothing(project, tmp_path, tiny_data, mlflow_store, prefect_server):
    dump = _dump(project, tmp_path, tiny_data)
    params = project / "params.yaml"
    state = ssl_pipeline(config=load_config(params, [f"data.unlabeled={dump}", *QUARANTINE]), root=str(project), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    prepared = project / "data" / "prepared" / "unlabeled"
    good = dirty_dump.good_paths(dump)
    assert sorted(pd.read_csv(prepared / "manifest.csv")["path"]) == good
    assert len(ShardReader(prepared)) == len(good)

    client = MlflowClient(mlflow_store, registry_uri=mlflow_store)
    run = client.get_run(result["registered"].run_id)
    # Facts of the data are params (the Model metrics tab keeps the training curves on top).
    assert run.data.params["validation/unlabeled/fault/bomb"] == "2"
    assert run.data.params["validation/unlabeled/accepted"] == str(len(good))
    assert 0 < float(run.data.params["validation/unlabeled/mean_r"]) < 1
    assert not any(key.startswith(("validation/", "images/")) for key in run.data.metrics)
    assert run.data.params["images/unlabeled"] == str(len(good))
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "validation")}
    assert {"validation/unlabeled.json", "validation/unlabeled.html", "validation/quarantine.csv"} <= logged
    assert "validation/data_docs" not in logged  # GX's Data Docs need CDNs: on disk only, the page is the report
    assert (project / "reports" / "validation" / "data_docs" / "unlabeled" / "index.html").exists()
    markdown = _validation_artifact(state.state_details.flow_run_id)
    assert "unlabeled: passed" in markdown and "fault: bomb | 2" in markdown

    # The same dump under on_fail=stop: the flow fails at validation and touches nothing.
    before = (prepared / "shard-00000.npy").read_bytes()
    stopped = ssl_pipeline(config=load_config(params, [f"data.unlabeled={dump}"]), root=str(project), return_state=True)
    assert stopped.is_failed()
    assert "bomb_header.png: bomb" in stopped.message and "validate.on_fail=stop" in stopped.message
    assert (prepared / "shard-00000.npy").read_bytes() == before
    assert not [p.name for p in prepared.parent.iterdir() if p.name.startswith(".")]  # no staging folder left
    assert [int(v.version) for v in client.search_model_versions("name='ssl-encoder'")] == [1]
    assert "unlabeled: **failed**" in _validation_artifact(stopped.state_details.flow_run_id)


def test_ingest_refuses_data_that_failed_validation(project, tmp_path, tiny_data):
    dump = _dump(project, tmp_path, tiny_data)
    assert sslpipe("validate", "--data", str(dump), cwd=project).returncode == 2
    out = sslpipe("ingest", "--data", str(dump), cwd=project)
    assert out.returncode == 2 and "failed validation" in out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert not (project / "data" / "prepared").exists()
