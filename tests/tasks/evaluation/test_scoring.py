"""The one evaluation protocol on features: every row alike, the gate's re-scoring the same as the
report's, rows read from the metrics (no modality's list), the label-efficiency curve."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from ssl_models.finetune import TEXT_FINETUNE
from ssl_models.text import TextEncoder, text_features
from tasks.core.config import EvaluateConfig
from tasks.evaluation.scoring import (
    Labeled,
    curve_metrics,
    label_efficiency,
    log_evaluation,
    probe_accuracy,
    protocol_version,
    score_features,
    scored_rows,
    summary_table,
)

CFG = EvaluateConfig(knn_k=5, probe_weight_decays=[0.01, 0.1])


def _clusters(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(3).repeat(n)
    return torch.eye(3)[labels] * 4 + torch.randn(len(labels), 3, generator=g), labels


def _labeled() -> Labeled:
    (train_x, train_y), (test_x, test_y) = _clusters(10, 0), _clusters(5, 1)
    return Labeled((train_x, train_y), (test_x, test_y), ["a", "b", "c"])


def test_every_row_goes_through_the_same_protocol_in_the_given_order():
    labeled = _labeled()
    (train_x, _), (test_x, _) = labeled.train, labeled.test
    noise = (torch.randn_like(train_x), torch.randn_like(test_x))
    scores = score_features({"ssl": (train_x, test_x), "random_init": noise, "any_baseline": (train_x * 2, test_x * 2)}, labeled, CFG)
    assert list(scores) == ["ssl", "random_init", "any_baseline"]
    assert scores["ssl"]["linear_probe_acc"] > 0.9 and scores["random_init"]["linear_probe_acc"] < 0.8
    assert scores["ssl"]["linear_probe_acc"] == scores["any_baseline"]["linear_probe_acc"], "the probe standardises its features"
    # The promotion gate's re-scoring is exactly the report's row.
    assert probe_accuracy(train_x, labeled.train[1], test_x, labeled.test[1], CFG) == scores["ssl"]["linear_probe_acc"]


def test_rows_are_read_from_the_metrics_whatever_the_modality_calls_its_baseline():
    row = {"linear_probe_acc": 0.5, "knn_acc": 0.25, "probe_weight_decay": 0.1}
    metrics = {
        "ssl": row,
        "random_init": row,
        "bag_of_words": row,
        "supervised_scratch": {"test_acc": 0.7, "labels": 30},
        "encoder": {"sha256": "x"},
    }
    assert scored_rows(metrics) == ["ssl", "random_init", "bag_of_words"]
    lines = summary_table(metrics).splitlines()
    assert [line.split()[0] for line in lines[2:5]] == ["ssl", "random_init", "bag_of_words"]
    assert lines[5].startswith("supervised reference") and len(lines) == 6


def test_curve_metrics_and_what_is_logged(tmp_path, mlflow_store):
    """Into a real MLflow run: scores as metrics, the label-efficiency curve as a table (not as
    metric steps 3, 30 that the UI charts like a training curve) with its headline at the fewest labels."""
    from mlflow import MlflowClient

    from tasks.registry.tracking import Tracker

    rows = [
        {"fraction": 0.1, "labels": 3, "ssl_finetune": 0.6, "scratch": 0.4},
        {"fraction": 1.0, "labels": 30, "ssl_finetune": 0.9, "scratch": 0.8},
    ]
    curve = curve_metrics(rows)
    assert curve == {
        "supervised_scratch": {"test_acc": 0.8, "labels": 30},
        "label_efficiency": {"ssl_finetune": {"10%": 0.6, "100%": 0.9}, "scratch": {"10%": 0.4, "100%": 0.8}},
    }
    tracker = Tracker(tmp_path, "ssl-pipeline")
    row = {"linear_probe_acc": 0.5, "knn_acc": 0.25, "probe_weight_decay": 0.1}
    for _ in range(2):  # evaluate run again into its model's run: the table is replaced, not appended to
        log_evaluation(tracker, {"ssl": row, "tfidf": row, **curve, "encoder": {"sha256": "x"}}, rows, [], [])
    client = MlflowClient(mlflow_store)
    run = client.get_run(tracker.run_id)
    names = set(run.data.metrics)
    assert {"ssl/linear_probe_acc", "tfidf/knn_acc", "supervised_scratch/test_acc"} <= names
    assert not any(name.startswith("encoder") for name in names)
    assert not any(name in names for name in ("label_efficiency/scratch", "label_efficiency/ssl_finetune"))
    assert {k: v for k, v in run.data.metrics.items() if k.startswith("label_efficiency/")} == {
        "label_efficiency/fewest_labels/ssl_finetune": 0.6,
        "label_efficiency/fewest_labels/scratch": 0.4,
    }
    table = client.load_table(run.info.experiment_id, "label_efficiency.json", run_ids=[tracker.run_id])
    assert table["labels"].tolist() == [3, 30] and table["share"].tolist() == ["10%", "100%"]  # read back as MLflow reads tables
    written = json.loads(Path(client.download_artifacts(tracker.run_id, "label_efficiency.json", str(tmp_path))).read_text())
    assert written == {"columns": ["fraction", "labels", "ssl_finetune", "scratch", "share"],
                       "data": [[0.1, 3, 0.6, 0.4, "10%"], [1.0, 30, 0.9, 0.8, "100%"]]}  # fmt: skip
    assert {"path": "label_efficiency.json", "type": "table"} in json.loads(run.data.tags["mlflow.loggedArtifacts"])


def test_label_efficiency_by_the_one_loop_on_text():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(2).repeat(12)
    ids = torch.randint(10, 30, (24, 8), generator=g)
    ids[:, 1] = 5 + labels  # the class is the second piece
    labeled = Labeled((ids[:16], labels[:16]), (ids[16:], labels[16:]), ["x", "y"])
    torch.manual_seed(0)
    encoder = TextEncoder(vocab_size=30, max_len=8, dim=16, depth=1)
    settings = dataclasses.replace(TEXT_FINETUNE, steps=3, batch_size=4)
    rows = label_efficiency(encoder, labeled, [0.25, 1.0], settings, "cpu", features=text_features, augment=None)
    assert [(row["fraction"], row["labels"]) for row in rows] == [(0.25, 4), (1.0, 16)]
    assert all(0 <= row[key] <= 1 for row in rows for key in ("ssl_finetune", "scratch"))


def test_the_protocol_version_follows_the_probe_settings_only():
    assert protocol_version(CFG) == protocol_version(CFG.model_copy(update={"knn_k": 50}))
    assert protocol_version(CFG) != protocol_version(CFG.model_copy(update={"probe_weight_decays": [0.5]}))
