"""The Prefect artifacts' links into MLflow follow the UI of the store in use: a tracking
server's own address, a local store's $MLFLOW_UI_URL (what `make mlflow-ui` listens on), not a
fixed port. A real sqlite store and a real Prefect server."""

from prefect import flow

from flows.finetune import _mlflow_links
from flows.pipeline import _publish
from tasks.core.config import load_config
from tasks.core.results import Evaluation, Registered
from tests.conftest import make_registrable_project, register_stage
from tests.flows.test_pipeline import _run_logs_and_artifacts

UI = "http://127.0.0.1:5055"


def test_the_pipelines_artifacts_link_to_the_local_ui_where_it_is_served(tmp_path, mlflow_store, prefect_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_UI_URL", UI + "/")
    layout = make_registrable_project(tmp_path / "p", 0.5)
    cfg = load_config(None).resolved()
    register_stage(layout, cfg)
    registered, metrics = Registered.load(layout), Evaluation.load(layout).metrics

    @flow
    def publish():
        _publish(layout, cfg, registered, metrics)

    state = publish(return_state=True)
    assert state.is_completed(), state.message
    _, artifacts = _run_logs_and_artifacts(state.state_details.flow_run_id)
    run_link = artifacts["mlflow-run"].data
    assert f"]({UI}/#/experiments/" in run_link and f"/runs/{registered.run_id}?workflowType=machine_learning)" in run_link
    assert f"]({UI}/#/models/ssl-encoder/versions/1?workflowType=machine_learning)" in artifacts["mlflow-model-version"].data
    assert f"({UI}/#/experiments/" in artifacts["ssl-pipeline-summary"].data
    assert "5000" not in run_link + artifacts["mlflow-model-version"].data  # the old fixed port
    assert "--port 5055" in artifacts["mlflow-run"].description and "make mlflow-ui" in artifacts["mlflow-run"].description


def test_the_finetune_summary_links_to_its_run_and_classifier(tmp_path, mlflow_store, monkeypatch):
    monkeypatch.setenv("MLFLOW_UI_URL", UI)
    layout = make_registrable_project(tmp_path / "p", 0.5)
    register_stage(layout, load_config(None))
    run_id = Registered.load(layout).run_id
    links = _mlflow_links(layout, run_id, "ssl-encoder", 1)
    assert f"/runs/{run_id}?workflowType=machine_learning)" in links and f"MLflow run [{run_id}]({UI}/#/experiments/" in links
    assert f"[ssl-encoder version 1]({UI}/#/models/ssl-encoder/versions/1?workflowType=machine_learning)" in links
