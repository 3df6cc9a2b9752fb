"""A timm encoder through every stage, then pretraining from its weights, then ONNX export, for real:

1. ``sslpipe run --set pretrain.backbone=timm:resnet18`` registers a timm encoder whose MLflow
   model (pins timm, weights also as safetensors) loads and predicts;
2. ``sslpipe export --format onnx`` writes an .onnx file whose onnxruntime features match
   ``mlflow.pyfunc.load_model("models:/ssl-encoder@champion").predict`` to 1e-4, logged to the
   version's run;
3. pretraining again with ``pretrain.init=<the first run's weights.pt>`` starts from them (at
   a learning rate of 1e-9 its weights stay theirs), recorded as a param and the sha256 tag;
4. ``sslpipe finetune`` fine-tunes the timm champion and registers the classifier.
"""

import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from mlflow.models import Model
from safetensors.torch import load_file

from ssl_models.export import onnx_features
from tasks.core.results import file_sha256
from tests.conftest import run_sslpipe

TIMM = ("--set", "pretrain.backbone=timm:resnet18")


@pytest.mark.slow  # two Prefect flows, a stage and an export: about 5 min of CPU on 2 cores
def test_timm_encoder_registered_exported_continued_and_fine_tuned(project, mlflow_store):
    client = MlflowClient(mlflow_store, registry_uri=mlflow_store)
    run_sslpipe("run", "-q", *TIMM, cwd=project)
    first = shutil.copyfile(project / "models" / "encoder" / "weights.pt", project / "first.pt")
    version = client.get_model_version_by_alias("ssl-encoder", "champion")
    assert client.get_run(version.run_id).data.params["pretrain.backbone"] == "timm:resnet18"

    # The registered model: timm pinned, the same weights as safetensors beside weights.pt.
    local = mlflow.artifacts.download_artifacts(artifact_uri="models:/ssl-encoder@champion", dst_path=str(project / "downloaded"))
    requirements = (project / "downloaded" / "requirements.txt").read_text()
    assert "timm==" in requirements
    pt = torch.load(project / "downloaded" / "artifacts" / "weights.pt", weights_only=True)
    st = load_file(project / "downloaded" / "artifacts" / "weights.safetensors")
    assert pt.keys() == st.keys() and all(torch.equal(pt[k], st[k]) for k in pt)

    # ONNX export of the champion, checked against the pyfunc on the version's input example.
    out = run_sslpipe("export", "--format", "onnx", cwd=project).stdout
    assert "max abs diff" in out
    onnx_file = project / "models" / "export" / f"ssl-encoder-v{version.version}.onnx"
    images = np.asarray(Model.load(local).load_input_example(local), dtype=np.float32)
    served = mlflow.pyfunc.load_model("models:/ssl-encoder@champion").predict(images)
    assert np.abs(onnx_features(onnx_file, torch.from_numpy(images)) - served).max() <= 1e-4
    assert [a.path for a in client.list_artifacts(version.run_id, "export")] == [f"export/{onnx_file.name}"]

    # Continue from the first run's weights (the pretrain stage alone): at lr 1e-9 the
    # convolutions stay the given ones; from a fresh init (seed 0, as the first run's) they
    # would be the first run's starting point instead.
    run_sslpipe("pretrain", "-q", *TIMM, "--set", f"pretrain.init={first}", "--set", "pretrain.lr=1e-9", cwd=project)
    run = client.get_run(json.loads((project / "models" / "encoder" / "config.json").read_text())["run_id"])
    assert run.data.params["pretrain.init"] == str(first)
    assert run.data.tags["init_sha256"] == file_sha256(first)
    given, trained = torch.load(first, weights_only=True), torch.load(project / "models" / "encoder" / "weights.pt", weights_only=True)
    conv = "backbone.net.conv1.weight"
    torch.testing.assert_close(trained[conv], given[conv], rtol=0, atol=1e-6)

    # Fine-tuning the (timm) champion registers a classifier that pins timm too.
    run_sslpipe("finetune", "--data", "input/labeled", "-q", cwd=project)
    (classifier,) = client.search_model_versions("name = 'ssl-classifier'")
    model = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/ssl-classifier/{classifier.version}", dst_path=str(project / "clf"))
    assert "timm==" in (Path(model) / "requirements.txt").read_text()
