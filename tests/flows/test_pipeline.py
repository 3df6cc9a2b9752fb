"""The flow end to end on a real Prefect server, a real sqlite MLflow store and the
real GX checkpoint, on a tiny slice of the bundled CIFAR-10 sample."""

import json

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from flows.pipeline import ssl_pipeline
from ssl_models.encoder import load_encoder
from ssl_models.evaluation import extract_features
from tasks.core.config import load_config
from tasks.core.lineage import dvc_hash
from tasks.registry.models import load_registered_encoder

STAGES = {"validate", "ingest", "augment", "pretrain", "evaluate", "register", "embed"}


def _task_runs(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    # Task runs say what ran ("pretrain: simclr, resnet18_cifar, 2 epochs"); the stage comes first.
    return {run.name.split(":")[0]: run.state.type.value for run in runs}


def _run_logs_and_artifacts(flow_run_id) -> tuple[list[str], dict]:
    """The flow run's log messages (what the UI's Logs tab shows) and its artifacts by key."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # logs are sent in batches in the background
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return [log.message for log in logs], {a.key: a for a in artifacts}


def test_flow_runs_every_stage_and_registers_the_encoder(project, mlflow_store, prefect_server):
    state = ssl_pipeline(config=load_config(project / "params.yaml"), root=str(project), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    flow_run_id = state.state_details.flow_run_id
    assert _task_runs(flow_run_id) == dict.fromkeys(STAGES, "COMPLETED")

    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    registered = result["registered"]
    # What the Prefect UI shows: our own log lines in the flow run's logs, links to MLflow.
    messages, artifacts = _run_logs_and_artifacts(flow_run_id)
    assert any(m.startswith("epoch 2/2: loss ") for m in messages), messages
    assert any("promotion gate: version 1 is the first champion" in m for m in messages), messages
    assert any(m.startswith("prepared 128 unlabeled images") for m in messages), messages
    # Prefect 3 stores a link artifact as a markdown link.
    assert artifacts["mlflow-run"].data.startswith(f"[MLflow run {registered.run_id}](http")
    assert f"/runs/{registered.run_id}?workflowType=machine_learning)" in artifacts["mlflow-run"].data
    assert artifacts["mlflow-model-version"].data.endswith("/#/models/ssl-encoder/versions/1?workflowType=machine_learning)")
    assert artifacts["evaluation"].type == "table" and "linear probe acc" in artifacts["evaluation"].data
    assert set(metrics) == {"ssl", "random_init", "raw_pixels", "supervised_scratch", "label_efficiency", "encoder"}
    for scores in (metrics[name] for name in ("ssl", "random_init", "raw_pixels")):
        assert 0 <= scores["linear_probe_acc"] <= 1 and 0 <= scores["knn_acc"] <= 1

    client = MlflowClient(mlflow_store, registry_uri=mlflow_store)
    run = client.get_run(registered.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["pretrain.epochs"] == "2"
    assert run.data.params["pretrain.method"] == "simclr"
    # Resolved values, never "auto": what really ran. Except compile: auto, decided during the run
    # from the measured step time (ssl_models/compile_plan.py) and logged with its reason.
    params = dict(run.data.params)
    assert params.pop("pretrain.compile") == "auto"
    assert "auto" not in params.values()
    assert run.data.params["pretrain.optimizer"] == "sgd" and run.data.params["pretrain.device"] == "cpu"
    assert run.data.metrics["ssl/knn_acc"] == pytest.approx(metrics["ssl"]["knn_acc"], rel=1e-5)  # logged to 6 significant digits
    assert len(client.get_metric_history(run.info.run_id, "pretrain/loss")) == 2
    for key in ("pretrain/lr", "pretrain/images_per_s", "pretrain/embedding_std", "pretrain/effective_rank"):
        assert key in run.data.metrics
    assert run.data.tags["data_version"] == dvc_hash(project / "data" / "prepared" / "unlabeled")
    assert run.data.tags["prefect_flow_run_id"] == str(flow_run_id)
    assert run.data.tags["sslpipe.launched_by"] == "ssl-pipeline flow" and "sslpipe.dvc_repro" not in run.data.tags
    assert not run.info.run_name.startswith("dvc-")
    assert run.data.tags["git_commit"]
    artifacts = {a.path for folder in ("plots", "augment", "validation") for a in client.list_artifacts(run.info.run_id, folder)}
    assert {"plots/curves.png", "plots/evaluation.png", "augment/augment_preview.png", "validation/unlabeled.json"} <= artifacts
    # The label-efficiency curve (1%, 10%, 100%: fine-tuned vs from scratch) and the t-SNE picture.
    assert {"plots/label_efficiency.png", "plots/embeddings.png"} <= artifacts
    curve = metrics["label_efficiency"]
    assert set(curve["ssl_finetune"]) == set(curve["scratch"]) == {"1%", "10%", "100%"}
    assert metrics["supervised_scratch"]["test_acc"] == curve["scratch"]["100%"]
    # The curve is a table beside its picture, not metric steps 3, 6, 48 charted like training; its headline a metric.
    assert "label_efficiency/scratch" not in run.data.metrics
    table = client.load_table(run.info.experiment_id, "label_efficiency.json", run_ids=[run.info.run_id])
    assert table["labels"].tolist() == [3, 6, 48] and table["share"].tolist() == ["1%", "10%", "100%"]
    assert run.data.metrics["label_efficiency/fewest_labels/scratch"] == pytest.approx(curve["scratch"]["1%"], rel=1e-5)

    version = client.get_model_version_by_alias("ssl-encoder", "challenger")
    assert int(version.version) == registered.version == 1
    # The first version is champion too, and the gate says so in the run and on the version.
    assert set(version.aliases) == {"challenger", "champion"} and registered.champion is True
    assert version.tags["gate/reason"] == "first" and run.data.tags["gate/decision"] == "promoted"
    # The run's description (shown above its metrics in the UI) starts with the result.
    assert client.get_run(run.info.run_id).data.tags["mlflow.note.content"].startswith("**simclr encoder: linear probe ")
    assert version.tags["method"] == "simclr"
    assert version.tags["data_version"] == run.data.tags["data_version"]
    assert float(version.tags["linear_probe_acc"]) == round(metrics["ssl"]["linear_probe_acc"], 4)

    mlflow.set_tracking_uri(mlflow_store)
    from_registry = load_registered_encoder("models:/ssl-encoder@challenger", root=project)
    local = load_encoder(project / "models" / "encoder")
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    assert torch.allclose(extract_features(from_registry, images), extract_features(local, images))

    # Nothing changed: a second run skips every stage, trains and registers nothing, opens no run.
    runs_before = len(client.search_runs([run.info.experiment_id]))
    again = ssl_pipeline(config=load_config(project / "params.yaml"), root=str(project), return_state=True).result()
    assert again["ran"] == {} and set(again["skipped"]) == STAGES
    assert [int(v.version) for v in client.search_model_versions("name='ssl-encoder'")] == [1]
    assert len(client.search_runs([run.info.experiment_id])) == runs_before
    # A changed evaluate param reruns evaluate and register (and embed, which follows the registration) only,
    # into the model's run; the same weights get no new version: version 1, re-tagged, stays champion.
    changed = ssl_pipeline(config=load_config(project / "params.yaml", ["evaluate.knn_k=3"]), root=str(project), return_state=True).result()
    assert set(changed["ran"]) == {"evaluate", "register", "embed"}
    assert changed["registered"].run_id == registered.run_id and changed["registered"].version == 1
    assert [int(v.version) for v in client.search_model_versions("name='ssl-encoder'")] == [1]
    assert "stays champion: the same weights" in changed["registered"].decision


def test_corrupt_file_stops_the_flow_before_training(project, mlflow_store, prefect_server):
    pool = project / "input" / "unlabeled"
    (pool / "broken.jpg").write_bytes(next(pool.glob("*.jpg")).read_bytes()[:150])
    state = ssl_pipeline(config=load_config(project / "params.yaml"), root=str(project), return_state=True)
    assert state.is_failed()
    assert "broken.jpg" in state.message
    assert not (project / "data" / "prepared").exists()
    assert not (project / "models").exists()
    assert MlflowClient(mlflow_store, registry_uri=mlflow_store).search_registered_models() == []
