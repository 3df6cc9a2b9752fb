"""The MLflow experiment is marked as model training (so the UI does not open its GenAI
view), also one created before the mark; run names are readable and unique."""

from datetime import UTC, datetime
from pathlib import Path

import mlflow
import numpy as np

from tasks.registry.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, run_name, ui_url, use_store


def test_new_and_existing_experiments_are_marked_as_model_training(tmp_path, mlflow_store):
    new_id = use_store(tmp_path, "fresh")
    assert mlflow.get_experiment(new_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"

    old_id = mlflow.create_experiment("made-by-an-older-version")  # no kind tag
    assert EXPERIMENT_KIND_TAG not in mlflow.get_experiment(old_id).tags
    assert use_store(tmp_path, "made-by-an-older-version") == old_id
    assert mlflow.get_experiment(old_id).tags[EXPERIMENT_KIND_TAG] == "custom_model_development"

    mlflow.MlflowClient().set_experiment_tag(old_id, EXPERIMENT_KIND_TAG, "genai_development")  # chosen in the UI
    use_store(tmp_path, "made-by-an-older-version")
    assert mlflow.get_experiment(old_id).tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_run_names_are_readable_and_unique():
    when = datetime(2026, 11, 28, 14, 25, 1, tzinfo=UTC)
    name = run_name("simclr", "1a2b3c4d5e6f.dir", when)
    assert name.startswith("simclr-1a2b3c4d-20261128-142501-")
    assert len({run_name("simclr", "1a2b3c4d5e6f.dir", when) for _ in range(50)}) > 45  # same second, still distinct
    assert run_name("finetune").startswith("finetune-20")


def test_ui_links_open_the_model_training_view():
    assert ui_url("http://127.0.0.1:5000/", "3", "abc") == "http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning"


def test_ui_links_point_at_the_server_or_the_local_ui(monkeypatch):
    from tasks.registry.tracking import model_version_url, ui_base

    monkeypatch.delenv("MLFLOW_UI_URL", raising=False)
    assert ui_base("http://mlflow.team:5000") == "http://mlflow.team:5000"
    assert ui_base("sqlite:////tmp/mlflow.db") == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_UI_URL", "http://127.0.0.1:5055")
    assert ui_base("sqlite:////tmp/mlflow.db") == "http://127.0.0.1:5055"
    assert model_version_url("http://h:1/", "ssl-encoder", 3) == "http://h:1/#/models/ssl-encoder/versions/3?workflowType=machine_learning"


def test_make_mlflow_ui_listens_where_the_links_point(monkeypatch):
    from tasks.registry.tracking import ui_hint, ui_listen_args

    monkeypatch.delenv("MLFLOW_UI_URL", raising=False)
    assert ui_listen_args() == "--host 127.0.0.1 --port 5000"
    monkeypatch.setenv("MLFLOW_UI_URL", "http://0.0.0.0:5055/")
    assert ui_listen_args() == "--host 0.0.0.0 --port 5055"
    assert ui_hint("http://mlflow.team:5000") == "" and "make mlflow-ui" in ui_hint("sqlite:////tmp/mlflow.db")
    recipe = (Path(__file__).resolve().parents[3] / "Makefile").read_text().split("\nmlflow-ui:")[1].split("\n\n")[0]
    assert "ui_listen_args" in recipe and "--port" not in recipe  # one place decides the port, not the Makefile


def test_runs_fill_the_source_column_and_read_rounded_numbers(tmp_path, mlflow_store):
    import subprocess

    from tasks.registry.tracking import Tracker

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(
        ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x"], check=True
    )
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    tracker = Tracker(tmp_path, "sources")
    tracker.log_metrics({"acc": float(np.float32(0.32))})
    tracker.set_tags({"probe": 0.41600000858306885})
    run = mlflow.get_run(tracker.run_id)
    assert run.data.tags["mlflow.source.git.commit"] == head and run.data.tags["mlflow.source.name"]
    assert run.data.metrics["acc"] == 0.32 and run.data.tags["probe"] == "0.416"  # not 0.3199999928474426
