"""Text through the same commands as images: `sslpipe run` with pretrain.method=mlm on a tiny
AG News slice runs every stage, scores MLM against random init and TF-IDF, registers
ssl-text-encoder with its tokenizer (exported as ONNX: token ids in); `sslpipe finetune` fine-tunes it on labeled text; a
method of the wrong modality fails before any stage runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from tokenizers import Tokenizer

from ssl_models.export import onnx_features
from ssl_models.text import TOKENIZER_FILE, clean_text
from tests.conftest import TINY_TEXT_PARAMS, write_params
from tests.flows.test_cli import sslpipe

STAGES = ("validate", "ingest", "augment", "pretrain", "evaluate", "register")


@pytest.fixture
def text_project(tmp_path, tiny_text, mlflow_store):
    root = tmp_path / "text_project"
    (root / "input").mkdir(parents=True)
    for src in tiny_text.values():
        shutil.copy(src, root / "input" / src.name)
    write_params(root, "input/news.csv.gz", "input/news_labeled.csv.gz", **TINY_TEXT_PARAMS)
    return root


@pytest.mark.slow
def test_sslpipe_run_and_finetune_on_text(text_project, mlflow_store):
    out = sslpipe("run", "-q", cwd=text_project)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for stage in STAGES:
        assert f"{stage:<9} ran:" in out.stdout
    assert "registered as ssl-text-encoder version 1" in out.stdout

    metrics = json.loads((text_project / "reports" / "metrics.json").read_text())
    for encoder in ("ssl", "random_init", "tfidf"):
        assert 0 <= metrics[encoder]["linear_probe_acc"] <= 1 and 0 <= metrics[encoder]["knn_acc"] <= 1
    assert {"supervised_scratch", "label_efficiency", "encoder"} <= set(metrics)
    for picture in ("augment_preview.png", "evaluation.png", "label_efficiency.png", "embeddings.png", "pretrain/curves.png"):
        assert (text_project / "reports" / picture).stat().st_size > 0
    assert (text_project / "reports" / "validation" / "unlabeled.html").exists()

    client = MlflowClient(mlflow_store, registry_uri=mlflow_store)
    version = client.get_model_version_by_alias("ssl-text-encoder", "champion")
    assert str(version.version) == "1"
    tags = version.tags
    assert tags["modality"] == "text" and tags["method"] == "mlm"
    for lineage in ("data_version", "git_commit", "run_id", "weights_sha256", "tokenizer_sha256", "eval_data_version"):
        assert tags[lineage], lineage
    # Loadable without pickle, tokenizer included: strings in, embeddings out.
    mlflow.set_tracking_uri(mlflow_store)
    model = mlflow.pyfunc.load_model("models:/ssl-text-encoder/1")
    embeddings = model.predict(pd.DataFrame({"text": ["Stocks rallied on Wall Street", "The striker scored twice"]}))
    assert embeddings.shape == (2, 32)
    assert not client.search_registered_models(filter_string="name='ssl-encoder'")  # no image model touched

    # ONNX: token ids in (tokenized by the model's own tokenizer), the pyfunc's embeddings out.
    exported = sslpipe("export", "--model", "models:/ssl-text-encoder/1", cwd=text_project)
    assert exported.returncode == 0, exported.stdout[-3000:] + exported.stderr[-3000:]
    assert "max abs diff" in exported.stdout
    downloaded = Path(mlflow.artifacts.download_artifacts("models:/ssl-text-encoder/1"))
    tokenizer = Tokenizer.from_file(str(downloaded / "artifacts" / TOKENIZER_FILE))
    ids = [e.ids for e in tokenizer.encode_batch([clean_text(t) for t in ["Stocks rallied on Wall Street", "The striker scored twice"]])]
    onnx_embeddings = onnx_features(text_project / "models" / "export" / "ssl-text-encoder-v1.onnx", torch.tensor(ids))
    assert np.abs(onnx_embeddings - embeddings).max() <= 1e-4

    # A new tokenizer changes the evaluation data's token ids: the gate re-scores the text champion
    # on them, through the champion's own tokenizer, before comparing.
    retrained = sslpipe("run", "-q", "--set", "text.vocab_size=280", cwd=text_project)
    assert retrained.returncode == 0, retrained.stdout[-3000:] + retrained.stderr[-3000:]
    second = client.get_model_version("ssl-text-encoder", "2").tags
    assert second["gate/champion_version"] == "1" and second["gate/champion_reevaluated"] == "true"
    assert second["tokenizer_sha256"] != tags["tokenizer_sha256"]

    tuned = sslpipe("finetune", "--data", "input/news_labeled.csv.gz", "-q", cwd=text_project)
    assert tuned.returncode == 0, tuned.stdout[-3000:] + tuned.stderr[-3000:]
    assert "registered as ssl-text-classifier version 1" in tuned.stdout
    classifier = mlflow.pyfunc.load_model("models:/ssl-text-classifier/1")
    assert classifier.predict(pd.DataFrame({"text": ["Oil prices rose again"]})).shape == (1, 4)


def test_a_method_of_the_other_modality_fails_before_any_stage(text_project, project):
    image_on_text = sslpipe("run", "--set", "pretrain.method=simclr", cwd=text_project)
    assert image_on_text.returncode == 2 and "Traceback" not in image_on_text.stderr
    assert "is text, but pretrain.method=simclr trains on images: set pretrain.method=mlm" in image_on_text.stderr
    mlm_on_images = sslpipe("run", "--set", "pretrain.method=mlm", cwd=project)
    assert mlm_on_images.returncode == 2 and "pretrain.method=mlm trains on text" in mlm_on_images.stderr
    for root in (text_project, project):
        assert not (root / "reports").exists() and not (root / "data" / "prepared").exists()
