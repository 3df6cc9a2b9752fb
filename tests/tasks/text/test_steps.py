"""The text stages end to end on the bundled AG News slice, tiny settings: validate -> ingest -> pretrain -> evaluate."""

from __future__ import annotations

import json

from ssl_models.text import TextModelSettings, load_text_encoder, save_text_encoder
from tasks.core.config import EvaluateConfig, ValidateConfig
from tasks.text.checks import DocumentChecks
from tasks.text.evaluate import evaluate_text
from tasks.text.pretrain import train_mlm
from tasks.text.tokens import encode_texts, ingest_text, load_tokenizer
from tasks.validation.source_check import run_checks
from tests.conftest import SAMPLE

TINY = TextModelSettings(vocab_size=1000, max_len=32, dim=32, depth=1, epochs=1, batch_size=128)


def test_text_stages_end_to_end(tmp_path):
    for name, source in (("unlabeled", SAMPLE / "news.csv.gz"), ("labeled", SAMPLE / "news_labeled.csv.gz")):
        report, table = run_checks(
            DocumentChecks(ValidateConfig(), labeled=name == "labeled"),
            source,
            name,
            tmp_path / "validation",
            reference=tmp_path / "ref.json",
        )
        assert report.success and table["fault"].isna().all(), report.summary()
    counts = ingest_text(SAMPLE / "news.csv.gz", SAMPLE / "news_labeled.csv.gz", tmp_path / "validation",
                         tmp_path / "prepared" / "unlabeled", tmp_path / "prepared" / "labeled", TINY)  # fmt: skip
    assert counts == {"unlabeled": 1500, "labeled_train": 800, "labeled_test": 200}
    epochs = []
    prepared = tmp_path / "prepared" / "unlabeled"
    history, method = train_mlm(prepared, TINY, on_epoch_end=epochs.append, progress=False)
    assert len(history) == 1 and epochs == history
    save_text_encoder(method.encoder, tmp_path / "encoder", prepared / "tokenizer.json", extra={"method": "mlm", "data_version": "abc"})
    config = json.loads((tmp_path / "encoder" / "config.json").read_text())
    assert config["modality"] == "text" and config["method"] == "mlm" and config["data_version"] == "abc"
    # The saved encoder is usable on its own: its tokenizer is beside it.
    encoder, tokenizer = load_text_encoder(tmp_path / "encoder"), load_tokenizer(tmp_path / "encoder")
    assert encoder(encode_texts(tokenizer, ["Stocks rallied on Wall Street", "The striker scored twice"])).shape == (2, 32)
    metrics = evaluate_text(tmp_path / "encoder", tmp_path / "prepared" / "labeled",
                            EvaluateConfig(probe_weight_decays=[0.1], label_fractions=[0.1]), finetune_steps=3)  # fmt: skip
    assert {"ssl", "random_init", "tfidf", "supervised_scratch", "label_efficiency"} <= set(metrics)
    assert set(metrics["label_efficiency"]["ssl_finetune"]) == {"10%", "100%"}
