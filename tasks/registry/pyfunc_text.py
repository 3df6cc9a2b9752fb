"""The MLflow model of a text encoder or text classifier: a models-from-code pyfunc, no pickle.

tasks/registry/models.py logs this file as ``python_model`` (as tasks/registry/pyfunc_image.py for
images); it imports only mlflow, torch, numpy, ``tokenizers`` and ``ssl_models`` (shipped
in the model's ``code/`` folder). Its three artifacts are the plain files the pipeline
writes: ``config`` (config.json), ``weights`` (weights.pt, ``torch.load(weights_only=True)``)
and ``tokenizer`` (tokenizer.json, the BPE tokenizer the encoder was trained with).

    predict(DataFrame with a string column "text", or a list of strings)
        -> float32 (B, feature_dim)   a text encoder's mean-pooled embeddings
        -> float32 (B, classes)       a text classifier's logits

Texts are cleaned as the training data was (ssl_models.text.clean_text) before tokenizing.
"""

import json
from pathlib import Path

import numpy as np
import torch
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

BATCH = 256  # documents per forward pass


class TextWeightsModel(PythonModel):
    def load_context(self, context) -> None:
        from tokenizers import Tokenizer

        from ssl_models.text import text_module_from_weights

        config = json.loads(Path(context.artifacts["config"]).read_text())
        state = torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True)
        self.module = text_module_from_weights(config, state).eval()
        self.tokenizer = Tokenizer.from_file(context.artifacts["tokenizer"])

    def predict(self, context, model_input, params=None):
        from ssl_models.text import clean_text

        texts = model_input["text"] if hasattr(model_input, "columns") else model_input
        encoded = self.tokenizer.encode_batch([clean_text(str(t)) for t in texts])
        ids = torch.tensor([e.ids for e in encoded], dtype=torch.long)
        with torch.inference_mode():
            outputs = [self.module(chunk) for chunk in ids.split(BATCH)]
        return torch.cat(outputs).numpy().astype(np.float32)


set_model(TextWeightsModel())
