"""The text stages end to end on the bundled AG News slice, tiny settings: validate -> ingest -> pretrain -> evaluate
(the evaluate shell with the text part)."""

from __future__ import annotations

import json
from pathlib import Path

import tasks.text.evaluate as text_part
from ssl_models.text import TextModelSettings, load_text_encoder, save_text_encoder
from tasks.core.config import ValidateConfig, load_config
from tasks.core.context import StageContext
from tasks.core.layout import Layout
from tasks.core.results import Prepared, Pretrained
from tasks.evaluate import evaluate
from tasks.text.checks import DocumentChecks
from tasks.text.pretrain import train_mlm
from tasks.text.tokens import encode_texts, ingest_text, load_tokenizer
from tasks.validation.source_check import run_checks
from tests.conftest import SAMPLE

TINY = TextModelSettings(vocab_size=1000, max_len=32, dim=32, depth=1, epochs=1, batch_size=128)


class RecordingTracker:
    """What the evaluate shell logs, kept instead of sent to MLflow."""

    def __init__(self) -> None:
        self.metrics: dict[str, list] = {}
        self.artifacts: list[tuple[str, str | None]] = []
        self.tables: dict[str, list[dict]] = {}

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        for key, value in metrics.items():
            self.metrics.setdefault(key, []).append((step, value))

    def log_artifact(self, path, folder: str | None = None) -> None:
        self.artifacts.append((Path(path).name, folder))

    def log_table(self, rows: list[dict], artifact_file: str) -> None:
        self.tables[artifact_file] = rows


def test_text_stages_end_to_end(tmp_path):
    for name, source in (("unlabeled", SAMPLE / "news.csv.gz"), ("labeled", SAMPLE / "news_labeled.csv.gz")):
        checks = DocumentChecks(ValidateConfig(), labeled=name == "labeled")
        report, table = run_checks(checks, source, name, tmp_path / "validation", reference=tmp_path / "ref.json")
        assert report.success and table["fault"].isna().all(), report.summary()
    counts = ingest_text(SAMPLE / "news.csv.gz", SAMPLE / "news_labeled.csv.gz", tmp_path / "validation",
                         tmp_path / "prepared" / "unlabeled", tmp_path / "prepared" / "labeled", TINY)  # fmt: skip
    assert counts == {"unlabeled": 1500, "labeled_train": 800, "labeled_test": 200}
    epochs = []
    prepared_unlabeled = tmp_path / "prepared" / "unlabeled"
    history, method = train_mlm(prepared_unlabeled, TINY, on_epoch_end=epochs.append, progress=False)
    assert len(history) == 1 and epochs == history
    extra = {"method": "mlm", "data_version": "abc"}
    save_text_encoder(method.encoder, tmp_path / "encoder", prepared_unlabeled / "tokenizer.json", extra=extra)
    config = json.loads((tmp_path / "encoder" / "config.json").read_text())
    assert config["modality"] == "text" and config["method"] == "mlm" and config["data_version"] == "abc"
    # The saved encoder is usable on its own: its tokenizer is beside it.
    encoder, tokenizer = load_text_encoder(tmp_path / "encoder"), load_tokenizer(tmp_path / "encoder")
    assert encoder(encode_texts(tokenizer, ["Stocks rallied on Wall Street", "The striker scored twice"])).shape == (2, 32)
    cfg = load_config(None, ["evaluate.probe_weight_decays=[0.1]", "evaluate.label_fractions=[0.1]", "finetune.steps=3"]).resolved()
    tracker = RecordingTracker()
    ctx = StageContext(Layout.at(tmp_path), cfg, tracker, progress=False, modality="text", part=text_part)
    prepared = Prepared(str(tmp_path / "prepared" / "unlabeled"), str(tmp_path / "prepared" / "labeled"), counts, "u", "l")
    evaluation = evaluate(ctx, prepared, Pretrained(str(tmp_path / "encoder"), "run-1", "abc123", "mlm"))
    metrics = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    assert metrics == evaluation.metrics and evaluation.encoder_sha256 == "abc123"
    assert list(metrics) == ["ssl", "random_init", "tfidf", "supervised_scratch", "label_efficiency", "encoder"]
    assert set(metrics["label_efficiency"]["ssl_finetune"]) == {"10%", "100%"}
    assert metrics["supervised_scratch"] == {"test_acc": metrics["label_efficiency"]["scratch"]["100%"], "labels": 800}
    assert metrics["encoder"] == {"sha256": "abc123", "run_id": "run-1"}
    assert (tmp_path / "reports" / "label_efficiency.csv").read_text().splitlines()[0] == "fraction,labels,ssl_finetune,scratch"
    assert {"tfidf/linear_probe_acc", "ssl/knn_acc", "supervised_scratch/test_acc"} <= set(tracker.metrics)
    assert "label_efficiency/scratch" not in tracker.metrics  # a table, not metric steps
    assert [row["labels"] for row in tracker.tables["label_efficiency.json"]] == [80, 800]
    assert tracker.metrics["label_efficiency/fewest_labels/scratch"] == [(None, metrics["label_efficiency"]["scratch"]["10%"])]
    plots = {("evaluation.png", "plots"), ("label_efficiency.png", "plots"), ("embeddings.png", "plots")}
    assert plots | {("metrics.json", None), ("label_efficiency.csv", None)} == set(tracker.artifacts)
