"""The MLflow model of an encoder or a classifier: a models-from-code pyfunc, no pickle.

tasks/registry/models.py logs this file as ``python_model``; MLflow copies it into the model
and executes it on load (``mlflow.pyfunc.load_model``, ``mlflow models serve``). So it
imports only mlflow, torch, numpy and ``ssl_models`` (shipped in the model's ``code/``
folder through ``code_paths``), never ``tasks``. Its two artifacts are the plain files the
pipeline writes: ``config`` (config.json) and ``weights`` (weights.pt, read with
``torch.load(weights_only=True)``).

    predict(float32 (B, 3, H, W) in [0, 1]) -> float32 (B, feature_dim)   an encoder's embeddings
                                            -> float32 (B, classes)       a classifier's logits
"""

import json
from pathlib import Path

import numpy as np
import torch
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

BATCH = 256  # images per forward pass: a large request does not need memory for all of it at once


class TorchWeightsModel(PythonModel):
    def load_context(self, context) -> None:
        from ssl_models.encoder import encoder_from_weights
        from ssl_models.finetune import classifier_from_weights

        config = json.loads(Path(context.artifacts["config"]).read_text())
        state = torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True)
        # A classifier's config names its classes count; an encoder's does not.
        build = classifier_from_weights if "num_classes" in config else encoder_from_weights
        self.module = build(config, state).eval()

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        # The np.ndarray hint tells MLflow to pass the array as it is (the signature checks it).
        images = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.inference_mode():
            outputs = [self.module(chunk) for chunk in images.split(BATCH)]
        return torch.cat(outputs).numpy()


set_model(TorchWeightsModel())
