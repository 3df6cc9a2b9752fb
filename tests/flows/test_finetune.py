"""The fine-tuning flow on a real Prefect server and a real sqlite MLflow store: it starts from
the registered champion, logs its own run linked to that version, registers ssl-classifier;
without a champion or with a bad file it stops with a clear message and registers nothing."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from flows.finetune import finetune_flow
from ssl_models.encoder import load_encoder
from ssl_models.finetune import load_classifier
from tasks.core.config import load_config
from tasks.finetune import load_registered_classifier
from tests.conftest import make_registrable_project, register_stage
from tests.flows.test_pipeline import _task_runs as _named_task_runs

BIN = Path(sys.executable).parent


def _task_runs(flow_run_id) -> dict[str, str]:
    """Task -> state of the flow run's task runs (named ``prepare: validate and decode ...``)."""
    return {name.split(":", 1)[0]: state for name, state in _named_task_runs(flow_run_id).items()}


def _config(project: Path, *overrides: str):
    base = [f"finetune.data={project / 'input' / 'labeled'}", "finetune.compare_fraction=0.5"]
    return load_config(project / "params.yaml", [*base, *overrides])


def _task_run_names_and_logs(flow_run_id) -> tuple[set[str], list[str]]:
    """The flow run's task-run names and log messages, as the Prefect UI shows them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # logs are sent in batches in the background
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return {run.name for run in runs}, [log.message for log in logs]


def test_finetune_starts_from_the_champion_and_registers_a_classifier(project, mlflow_store, prefect_server, tmp_path):
    champion = make_registrable_project(project, 0.5, encoder_seed=3)
    register_stage(champion, load_config(None))
    # A vanishing learning rate: the trained weights must still be the champion's, which
    # shows the classifier was built on it (BatchNorm statistics do move; they are buffers).
    state = finetune_flow(config=_config(project, "finetune.lr=1e-9"), root=str(project), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()

    client = MlflowClient(mlflow_store, registry_uri=mlflow_store)
    encoder_version = client.get_model_version("ssl-encoder", "1")
    run = client.get_run(result["run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "ssl-finetune"
    assert run.data.tags["encoder_version"] == "1"
    assert run.data.tags["encoder_uri"] == "models:/ssl-encoder/1"
    assert run.data.tags["encoder_run_id"] == encoder_version.run_id
    assert run.data.tags["sslpipe.launched_by"] == "ssl-finetune flow"
    assert run.data.params["finetune.lr"] == "1e-09"
    assert run.data.metrics["test_acc"] == pytest.approx(result["test_acc"], rel=1e-5)  # logged to 6 significant digits
    assert {"compare/ssl_finetune_acc", "compare/scratch_acc"} <= set(run.data.metrics)
    assert result["compare"]["train_labels"] == 24  # half of 3 classes x 16 train images
    assert result["train_labels"] == 48

    version = client.get_model_version("ssl-classifier", str(result["version"]))
    assert version.run_id == run.info.run_id
    assert version.tags["encoder_version"] == "1" and version.tags["encoder_uri"] == "models:/ssl-encoder/1"
    classifier = load_registered_classifier(f"models:/ssl-classifier/{result['version']}", root=project)
    config = json.loads((project / "models" / "classifier" / "config.json").read_text())
    assert config["classes"] == ["airplane", "cat", "ship"]
    images = torch.rand(4, 3, 32, 32)
    assert torch.allclose(classifier(images), load_classifier(project / "models" / "classifier")(images))

    base = load_encoder(champion.encoder)
    for (name, tuned), (_, original) in zip(classifier.encoder.named_parameters(), base.named_parameters(), strict=True):
        assert torch.allclose(tuned, original, atol=1e-6), name

    # What the Prefect UI shows: task runs named by what they did, the stages' own log lines.
    flow_run_id = state.state_details.flow_run_id
    names, messages = _task_run_names_and_logs(flow_run_id)
    assert names == {
        "resolve-encoder: ssl-encoder@champion",
        "prepare: validate and decode labeled",
        "finetune: 100% of the labels, 2 steps, vs from scratch at 50%",
        "register-classifier: ssl-classifier @candidate",
    }
    assert any(m.startswith("fine-tuning starts from ssl-encoder version 1 (@champion") for m in messages), messages
    assert any(m.startswith("prepared 48 train images, 24 test images for fine-tuning") for m in messages), messages
    assert any(m.startswith("fine-tuned on 48 labels: test accuracy ") for m in messages), messages
    assert any(m.startswith("registered ssl-classifier version 1 (@candidate), fine-tuned from models:/ssl-encoder/1") for m in messages)

    # What the MLflow UI shows: the run's description starts with the result in one plain sentence.
    note = client.get_run(run.info.run_id).data.tags["mlflow.note.content"]
    first = note.split("\n")[0]
    assert first == (
        f"Fine-tuned ssl-encoder version 1 (@champion) on 48 labels: test accuracy {result['test_acc']:.3f} on 24 images, "
        "registered as ssl-classifier version 1 (@candidate)."
    )
    assert "fine-tuned" in note and "from scratch" in note and "airplane" in note
    # The labeled folder as the run's dataset input, its DVC hash as the digest.
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "labeled" and dataset_input.dataset.digest == run.data.tags["data_version"]
    assert json.loads(dataset_input.dataset.profile) == {"num_images": 72, "train": 48, "test": 24, "classes": 3}
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"
    # Per-class accuracy and the confusion matrix, as readable pictures in the run.
    metrics = json.loads((project / "reports" / "finetune" / "metrics.json").read_text())
    matrix = metrics["confusion_matrix"]["rows_true_columns_predicted"]
    assert [sum(row) for row in matrix] == [8, 8, 8]
    assert sum(matrix[i][i] for i in range(3)) / 24 == pytest.approx(result["test_acc"])
    assert set(metrics["per_class_acc"]) == {"airplane", "cat", "ship"}
    for picture in ("per_class_accuracy.png", "confusion_matrix.png"):
        local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=f"plots/{picture}", dst_path=str(tmp_path))
        width, height = Image.open(local).size
        assert width >= 400 and height >= 240, picture
    # The classifier version: a plain-text description, an alias, a link to the encoder version.
    assert version.aliases == ["candidate"]
    assert version.description.startswith(
        f"Classifier fine-tuned from ssl-encoder version 1 (@champion) on 48 labels: test accuracy {result['test_acc']:.3f}."
    )
    assert "**" not in version.description and "```" not in version.description
    assert version.tags["encoder_url"].endswith("/#/models/ssl-encoder/versions/1?workflowType=machine_learning")
    assert f"Encoder: models:/ssl-encoder/1, {version.tags['encoder_url']}" in version.description
    assert run.data.tags["encoder_url"] == version.tags["encoder_url"]
    assert "@candidate" in client.get_registered_model("ssl-classifier").description


def test_without_a_champion_nothing_is_trained_or_registered(project, mlflow_store, prefect_server):
    state = finetune_flow(config=_config(project), root=str(project), return_state=True)
    assert state.is_failed()
    assert "models:/ssl-encoder@champion does not exist" in state.message
    assert _task_runs(state.state_details.flow_run_id) == {"resolve-encoder": "FAILED"}  # the task that found it, not Completed
    assert not (project / "models" / "classifier").exists()
    assert MlflowClient(mlflow_store, registry_uri=mlflow_store).search_registered_models() == []


def test_a_corrupt_image_stops_finetuning_at_validation(project, mlflow_store, prefect_server):
    register_stage(make_registrable_project(project, 0.5), load_config(None))
    folder = project / "input" / "labeled" / "train" / "cat"
    (folder / "broken.jpg").write_bytes(next(folder.glob("*.jpg")).read_bytes()[:150])
    state = finetune_flow(config=_config(project), root=str(project), return_state=True)
    assert state.is_failed()
    assert "broken.jpg" in state.message
    assert _task_runs(state.state_details.flow_run_id) == {"resolve-encoder": "COMPLETED", "prepare": "FAILED"}
    assert not (project / "models" / "classifier").exists()
    assert [m.name for m in MlflowClient(mlflow_store, registry_uri=mlflow_store).search_registered_models()] == ["ssl-encoder"]


def test_a_folder_with_one_class_is_refused_without_a_traceback(project, mlflow_store, prefect_server, tmp_path):
    register_stage(make_registrable_project(project, 0.5), load_config(None))
    one_class = tmp_path / "one_class"
    shutil.copytree(project / "input" / "labeled" / "train" / "cat", one_class / "cat")
    state = finetune_flow(config=_config(project, f"finetune.data={one_class}"), root=str(project), return_state=True)
    assert state.is_failed()
    assert f"{one_class}: a labeled set needs at least two class folders, found ['cat']" in state.message
    assert not (project / "models" / "classifier").exists()


def _sslpipe(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "sslpipe"), *args], check=False, cwd=cwd, capture_output=True, text=True, timeout=600, env=os.environ.copy()
    )


def test_cli_explains_a_missing_folder_and_a_missing_champion(project, mlflow_store):
    missing = _sslpipe("finetune", "--data", "no/such/folder", cwd=project)
    assert missing.returncode == 2
    assert "no/such/folder: no such file or folder (finetune.data)" in missing.stderr
    no_champion = _sslpipe("finetune", "--data", "input/labeled", "-q", cwd=project)
    assert no_champion.returncode == 2, no_champion.stderr[-2000:]
    assert "models:/ssl-encoder@champion does not exist" in no_champion.stderr
    assert "sslpipe promote" in no_champion.stderr
    for out in (missing, no_champion):
        assert "Traceback" not in out.stderr + out.stdout
