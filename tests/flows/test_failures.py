"""A failed run explains itself in both UIs: the MLflow run ends FAILED with a description
(one sentence: which stage, why) and ``error/stage`` / ``error/reason`` tags, and the Prefect
task run of the stage that failed ends Failed, for bad data (a result) and for a raised fault.
Real sqlite MLflow store, real Prefect test server."""

from mlflow import MlflowClient

from flows.pipeline import ssl_pipeline
from flows.stage_runner import failure_note, run_alone
from tasks.core.config import load_config
from tasks.core.layout import Layout
from tests.flows.test_pipeline import _task_runs


def _only_run(uri: str):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("ssl-pipeline")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def _corrupt(project):
    pool = project / "input" / "unlabeled"
    (pool / "broken.jpg").write_bytes(next(pool.glob("*.jpg")).read_bytes()[:150])


def test_the_failure_note_is_one_sentence_naming_the_stage():
    assert failure_note("pretrain", "the loss became nan at epoch 1") == "The pretrain stage failed: the loss became nan at epoch 1."
    assert failure_note("validate", "unlabeled: FAILED:\n  1 bad.") == "The validate stage failed: unlabeled: FAILED: 1 bad."


def test_validation_failing_alone_ends_its_run_failed_saying_why(project, mlflow_store):
    _corrupt(project)
    result = run_alone("validate", Layout.at(project), load_config(project / "params.yaml").resolved(), progress=False)
    assert not result.success
    run = _only_run(mlflow_store)
    assert run.info.status == "FAILED"  # it was FINISHED: a failed validation read as a good run
    tags = run.data.tags
    assert tags["error/stage"] == "validate"
    assert tags["error/reason"].startswith("unlabeled: FAILED") and "\n" not in tags["error/reason"]
    assert tags["mlflow.note.content"] == failure_note("validate", tags["error/reason"])


def test_bad_data_fails_the_validate_task_run_and_describes_the_mlflow_run(project, mlflow_store, prefect_server):
    _corrupt(project)
    state = ssl_pipeline(config=load_config(project / "params.yaml"), root=str(project), return_state=True)
    assert state.is_failed() and "broken.jpg" in state.message
    assert _task_runs(state.state_details.flow_run_id) == {"validate": "FAILED"}  # was COMPLETED inside a Failed flow run
    run = _only_run(mlflow_store)
    assert run.info.status == "FAILED"
    assert run.data.tags["error/stage"] == "validate" and run.data.tags["error/reason"].startswith("unlabeled: FAILED")
    assert run.data.tags["mlflow.note.content"].startswith("The validate stage failed: unlabeled: FAILED")


def test_a_diverged_training_fails_its_task_run_and_says_so_in_mlflow(project, mlflow_store, prefect_server):
    cfg = load_config(project / "params.yaml", ["pretrain.lr=1e12", "pretrain.epochs=1"])
    state = ssl_pipeline(config=cfg, root=str(project), return_state=True)
    assert state.is_failed()
    runs = _task_runs(state.state_details.flow_run_id)
    assert runs == {"validate": "COMPLETED", "ingest": "COMPLETED", "augment": "COMPLETED", "pretrain": "FAILED"}
    run = _only_run(mlflow_store)
    assert run.info.status == "FAILED"
    assert run.data.tags["error/stage"] == "pretrain" and run.data.tags["error/reason"].startswith("the loss became ")
    assert run.data.tags["mlflow.note.content"] == failure_note("pretrain", run.data.tags["error/reason"])
