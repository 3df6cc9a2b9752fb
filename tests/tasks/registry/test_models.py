"""The encoder and the classifier as MLflow models, on a real sqlite store: loaded back by
``mlflow.pyfunc.load_model`` through a registry alias, served over HTTP by ``mlflow models
serve``, with no pickle, a signature, pinned requirements, the run linked to the model and
the training data as a dataset input."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from ssl_models.encoder import Encoder, load_encoder, save_encoder
from ssl_models.finetune import Classifier, load_classifier, save_classifier
from tasks.registry.models import (
    describe_version,
    log_classifier_model,
    log_encoder_model,
    version_description,
    weights_dir,
)
from tasks.registry.tracking import log_training_dataset, use_store

IMAGES = np.random.default_rng(1).random((5, 3, 32, 32), dtype=np.float32)


@pytest.fixture
def encoder_dir(tmp_path) -> Path:
    torch.manual_seed(0)
    return save_encoder(Encoder("resnet18_cifar", {"width": 4}), tmp_path / "encoder", extra={"method": "simclr"})


@pytest.fixture
def run_id(tmp_path, mlflow_store) -> str:
    use_store(tmp_path, "ssl-pipeline")
    with mlflow.start_run() as run:
        pass
    return run.info.run_id


def _register(model_id: str, name: str, alias: str) -> str:
    version = mlflow.register_model(f"models:/{model_id}", name)
    MlflowClient().set_registered_model_alias(name, alias, version.version)
    return version.version


def test_registered_encoder_loads_as_pyfunc_and_gives_the_encoders_embeddings(encoder_dir, run_id):
    model_id = log_encoder_model(encoder_dir, "ssl-encoder", run_id, {"probe_acc": "0.5"})
    _register(model_id, "ssl-encoder", "champion")

    model = mlflow.pyfunc.load_model("models:/ssl-encoder@champion")
    expected = load_encoder(encoder_dir)(torch.from_numpy(IMAGES)).detach().numpy()
    embeddings = model.predict(IMAGES)
    assert embeddings.shape == (5, 32) and embeddings.dtype == np.float32
    np.testing.assert_allclose(embeddings, expected, rtol=0, atol=1e-6)

    signature = model.metadata.signature
    assert signature.inputs.inputs[0].shape == (-1, 3, 32, 32)
    assert signature.outputs.inputs[0].shape == (-1, 32)
    # The signature guards the door: a batch of the wrong shape is refused with a message.
    with pytest.raises(mlflow.exceptions.MlflowException, match=r"[Ss]hape"):
        model.predict(IMAGES[:, :, :16, :16])

    client = MlflowClient()
    logged = client.get_logged_model(model_id)
    assert logged.source_run_id == run_id and logged.tags["probe_acc"] == "0.5"
    assert [o.model_id for o in client.get_run(run_id).outputs.model_outputs] == [model_id]

    local = Path(mlflow.artifacts.download_artifacts(f"models:/{model_id}"))
    assert not [p for p in local.rglob("*") if p.suffix in {".pkl", ".pickle", ".cloudpickle"}]
    mlmodel = (local / "MLmodel").read_text()
    assert "loader_module: mlflow.pyfunc.loaders.code_model" in mlmodel  # models from code: a source file, not a pickle
    assert (local / "pyfunc_image.py").exists()
    assert (local / "code" / "ssl_models" / "encoder.py").exists()  # the project is not on PyPI
    requirements = (local / "requirements.txt").read_text().split()
    assert f"torch=={torch.__version__.split('+')[0]}" in requirements and f"numpy=={np.__version__}" in requirements
    assert json.loads((local / "input_example.json").read_text())  # an example of the input is kept
    # The plain files stay loadable without MLflow's loader, weights only.
    np.testing.assert_allclose(load_encoder(weights_dir(local))(torch.from_numpy(IMAGES)).detach().numpy(), expected, rtol=0, atol=0)


def test_classifier_loads_as_pyfunc_and_gives_its_logits(tmp_path, run_id):
    torch.manual_seed(0)
    classifier = Classifier(Encoder("resnet18_cifar", {"width": 4}), num_classes=3)
    directory = save_classifier(classifier, tmp_path / "classifier", extra={"classes": ["cat", "dog", "ship"]})
    model_id = log_classifier_model(directory, "ssl-classifier", run_id, {})
    _register(model_id, "ssl-classifier", "latest-test")

    model = mlflow.pyfunc.load_model("models:/ssl-classifier@latest-test")
    expected = load_classifier(directory)(torch.from_numpy(IMAGES)).detach().numpy()
    np.testing.assert_allclose(model.predict(IMAGES), expected, rtol=0, atol=1e-6)
    assert model.metadata.metadata["classes"] == ["cat", "dog", "ship"]
    assert model.metadata.signature.outputs.inputs[0].shape == (-1, 3)


def test_training_data_is_a_dataset_input_with_its_dvc_hash_as_digest(tmp_path, run_id):
    log_training_dataset("unlabeled", "0a1b2c3d4e.dir", str(tmp_path), 128, run_id=run_id)
    log_training_dataset("cifar", "ff00.dir", "torchvision:CIFAR10", 50000, run_id=run_id)

    inputs = {d.dataset.name: d for d in MlflowClient().get_run(run_id).inputs.dataset_inputs}
    assert inputs["unlabeled"].dataset.digest == "0a1b2c3d4e.dir"
    assert json.loads(inputs["unlabeled"].dataset.profile) == {"num_images": 128}
    assert tmp_path.resolve().as_uri() in inputs["unlabeled"].dataset.source
    assert "torchvision:CIFAR10" in inputs["cifar"].dataset.source
    assert {t.key: t.value for t in inputs["unlabeled"].tags}["mlflow.data.context"] == "training"


def test_version_description_holds_the_decision_and_the_table(encoder_dir, run_id):
    version = _register(log_encoder_model(encoder_dir, "ssl-encoder", run_id, {}), "ssl-encoder", "challenger")
    table = "encoder      linear probe      kNN\nssl                 0.420    0.375"
    describe_version(MlflowClient(), "ssl-encoder", version, version_description("version 1 is the first champion", table, {"data": "abc"}))

    text = MlflowClient().get_model_version("ssl-encoder", version).description
    assert "version 1 is the first champion" in text and "ssl                 0.420    0.375" in text and "**data**: abc" in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_mlflow_models_serve_answers_with_embeddings(tmp_path, encoder_dir, run_id, mlflow_store):
    _register(log_encoder_model(encoder_dir, "ssl-encoder", run_id, {}), "ssl-encoder", "champion")
    port = _free_port()
    # No PYTHONPATH and another working directory: the model must bring its own code.
    # The venv's bin on PATH, as in an activated venv: the server runs `uvicorn` from it.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
        "MLFLOW_TRACKING_URI": mlflow_store,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        "models:/ssl-encoder@champion",
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-w",
        "1",
    ]
    log = tmp_path / "serve.log"
    server = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "mlflow models serve did not answer /ping in 180 s"
                time.sleep(0.5)
        status, body = _post(f"http://127.0.0.1:{port}/invocations", {"inputs": IMAGES[:3].tolist()})
        assert status == 200, body
        embeddings = np.asarray(body["predictions"], dtype=np.float32)
        assert embeddings.shape == (3, 32)
        expected = load_encoder(encoder_dir)(torch.from_numpy(IMAGES[:3])).detach().numpy()
        np.testing.assert_allclose(embeddings, expected, rtol=0, atol=1e-5)
        status, body = _post(f"http://127.0.0.1:{port}/invocations", {"inputs": IMAGES[:1, :2].tolist()})  # 2 channels
        assert status == 400 and "shape" in body["message"].lower()
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
