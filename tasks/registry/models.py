"""Encoders and classifiers as MLflow models that ``mlflow.pyfunc.load_model`` and
``mlflow models serve`` load, without pickle.

The model is the models-from-code pyfunc in tasks/registry/pyfunc_image.py over the two plain files
the pipeline writes (``weights.pt`` + ``config.json``); ``ssl_models`` travels in the model's
``code/`` folder (the project is not on PyPI), and the pip requirements pin what it needs.

    model_id = log_encoder_model(layout.encoder, "ssl-encoder", run_id, tags, input_example)
    version = mlflow.register_model(f"models:/{model_id}", "ssl-encoder")
    describe_version(client, "ssl-encoder", version.version, version_description(decision, table))

    mlflow.pyfunc.load_model("models:/ssl-encoder@champion").predict(images)   # (B, 3, 32, 32) -> (B, D)
    mlflow models serve -m models:/ssl-encoder@champion --env-manager local -p 5001
    curl -d '{"inputs": [[[[0.5, ...]]]]}' -H 'Content-Type: application/json' localhost:5001/invocations

Each model is a LoggedModel whose ``source_run_id`` is the pipeline's run (the run page lists
it); the run's training data is its input (``log_training_dataset`` in tasks/registry/tracking.py).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

import ssl_models
from ssl_models.backbones import TIMM_PREFIX
from ssl_models.encoder import CONFIG_FILE, SAFETENSORS_FILE, WEIGHTS_FILE, Encoder
from tasks.registry.tracking import weights_dir  # its home was here: importers of it from here still find it

PYFUNC_CODE = Path(__file__).with_name("pyfunc_image.py")
TEXT_PYFUNC_CODE = Path(__file__).with_name("pyfunc_text.py")


def _requirements(text: bool = False, config: dict | None = None) -> list[str]:
    """What loading and running the model needs, pinned to the versions it was logged with.
    torch's local build tag (``+cu130``) is dropped: a CPU or CUDA wheel of the same version
    both load the weights. mlflow itself is added by MLflow; text models need ``tokenizers``,
    a ``timm:`` backbone (an encoder's or a classifier's encoder's) needs ``timm``."""
    import torch

    pins = [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"]
    if text:
        import tokenizers

        pins.append(f"tokenizers=={tokenizers.__version__}")
    config = config or {}
    if str(config.get("encoder", config).get("backbone", "")).startswith(TIMM_PREFIX):
        import timm

        pins.append(f"timm=={timm.__version__}")
    return pins


def write_safetensors(weights: Path, target: Path) -> Path:
    """``weights`` (a weights.pt state_dict) as a .safetensors file: the format other tools load.
    Tensors are cloned: safetensors refuses tensors that share memory."""
    import torch
    from safetensors.torch import save_file

    state = torch.load(weights, map_location="cpu", weights_only=True)
    save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(target))
    return target


def _signature(image_size: int, outputs: int):
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, image_size, image_size))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, outputs))]),
    )


def example_images(image_size: int, count: int = 2, seed: int = 0) -> np.ndarray:
    """A small deterministic input example when the caller has no real images at hand."""
    rng = np.random.default_rng(seed)
    return rng.random((count, 3, image_size, image_size), dtype=np.float32).round(3)


def _text_signature(outputs: int):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    return ModelSignature(inputs=Schema([ColSpec("string", "text")]), outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, outputs))]))


def _log(
    model_dir: Path, name: str, run_id: str | None, tags: dict[str, str], model_type: str, outputs: int, input_example, metadata: dict
) -> str:
    import mlflow
    from mlflow.models import Model

    text = metadata.get("modality") == "text"
    config = json.loads((model_dir / CONFIG_FILE).read_text())
    artifacts = {"weights": str(model_dir / WEIGHTS_FILE), "config": str(model_dir / CONFIG_FILE)}
    if text:
        import pandas as pd

        from ssl_models.text import TOKENIZER_FILE

        artifacts["tokenizer"] = str(model_dir / TOKENIZER_FILE)
        example = pd.DataFrame({"text": list(input_example)})
        signature = _text_signature(outputs)
    else:
        image_size = int(metadata["image_size"])
        example = example_images(image_size) if input_example is None else np.asarray(input_example, dtype=np.float32)
        signature = _signature(image_size, outputs)
    with tempfile.TemporaryDirectory() as tmp:
        # The same weights as safetensors beside weights.pt, for tools that load that format.
        artifacts["safetensors"] = str(write_safetensors(model_dir / WEIGHTS_FILE, Path(tmp) / SAFETENSORS_FILE))
        # A clean copy of the package: no __pycache__ in the model, and nothing of the caller's.
        code = shutil.copytree(Path(ssl_models.__file__).parent, Path(tmp) / "ssl_models", ignore=shutil.ignore_patterns("__pycache__"))
        info = Model.log(
            artifact_path=None,
            name=name,
            flavor=mlflow.pyfunc,
            run_id=run_id,  # the LoggedModel's source run; the run lists it as an output
            python_model=str(TEXT_PYFUNC_CODE if text else PYFUNC_CODE),
            artifacts=artifacts,
            code_paths=[str(code)],
            signature=signature,
            input_example=example,
            pip_requirements=_requirements(text, config),
            metadata=metadata,
            tags=tags,
            model_type=model_type,
        )
    return info.model_id


def log_encoder_model(encoder_dir: str | Path, name: str, run_id: str | None, tags: dict[str, str], input_example=None) -> str:
    """Log ``encoder_dir`` (weights.pt + config.json) as a servable MLflow model; returns its model id.

    ``input_example``: float32 images (B, 3, H, W) in [0, 1], e.g. two test images; a seeded
    random pair when None. ``run_id`` None means the active run.
    """
    encoder_dir = Path(encoder_dir)
    config = json.loads((encoder_dir / CONFIG_FILE).read_text())
    metadata = {"image_size": int(config.get("image_size", 32)), "feature_dim": int(config["feature_dim"]), "output": "embeddings"}
    return _log(encoder_dir, name, run_id, tags, "ssl-encoder", metadata["feature_dim"], input_example, metadata)


def log_text_encoder_model(encoder_dir: str | Path, name: str, run_id: str | None, tags: dict[str, str], input_example: list[str]) -> str:
    """Log a text encoder (weights.pt + config.json + tokenizer.json) as a servable MLflow model:
    strings in (a ``text`` column), mean-pooled embeddings out. ``input_example``: a few documents."""
    encoder_dir = Path(encoder_dir)
    config = json.loads((encoder_dir / CONFIG_FILE).read_text())
    metadata = {
        "modality": "text",
        "feature_dim": int(config["feature_dim"]),
        "max_len": int(config["backbone_kwargs"]["max_len"]),
        "output": "embeddings",
    }
    return _log(encoder_dir, name, run_id, tags, "ssl-text-encoder", metadata["feature_dim"], input_example, metadata)


def log_text_classifier_model(
    classifier_dir: str | Path, name: str, run_id: str | None, tags: dict[str, str], input_example: list[str]
) -> str:
    """Log a text classifier (weights.pt + config.json with ``classes`` + tokenizer.json): strings in, logits out."""
    classifier_dir = Path(classifier_dir)
    config = json.loads((classifier_dir / CONFIG_FILE).read_text())
    metadata = {
        "modality": "text",
        "num_classes": int(config["num_classes"]),
        "classes": list(config.get("classes", [])),
        "output": "logits",
    }
    return _log(classifier_dir, name, run_id, tags, "ssl-text-classifier", metadata["num_classes"], input_example, metadata)


def log_classifier_model(classifier_dir: str | Path, name: str, run_id: str | None, tags: dict[str, str], input_example=None) -> str:
    """Log ``classifier_dir`` (weights.pt + config.json with ``classes``) as a servable MLflow
    model giving logits, one column per class in the order of the metadata's ``classes``."""
    classifier_dir = Path(classifier_dir)
    config = json.loads((classifier_dir / CONFIG_FILE).read_text())
    metadata = {
        "image_size": int(config["encoder"].get("image_size", 32)),
        "num_classes": int(config["num_classes"]),
        "classes": list(config.get("classes", [])),
        "output": "logits",
    }
    return _log(classifier_dir, name, run_id, tags, "ssl-classifier", metadata["num_classes"], input_example, metadata)


def version_description(decision: str, table: str, lines: dict[str, str] | None = None, verdict: str = "") -> str:
    """Markdown for a model version: ``verdict`` (the gate's decision in one sentence: promoted,
    rejected), the gate's numbers, the evaluation table, and any further ``key: value`` lines
    (e.g. data version, run id). It starts with plain words: the registry's versions table shows
    the description's first characters as they are."""
    extra = "".join(f"- **{key}**: {value}\n" for key, value in (lines or {}).items())
    head = f"{verdict} " if verdict else ""
    return f"{head}Promotion gate: {decision}\n\n{extra}\n```\n{table.rstrip()}\n```\n"


def describe_version(client, name: str, version: str | int, text: str) -> None:
    """Set the description shown on the model version's page."""
    client.update_model_version(name, str(version), description=text)


def load_registered_encoder(
    uri: str = "models:/ssl-encoder@champion", root: Path | None = None, experiment: str = "ssl-pipeline"
) -> Encoder:
    """Download ``models:/NAME@ALIAS`` (or ``/VERSION``) and rebuild the encoder, weights only."""
    import mlflow

    from ssl_models.encoder import load_encoder
    from tasks.registry.tracking import use_store

    use_store(root or Path.cwd(), experiment)
    local = mlflow.artifacts.download_artifacts(artifact_uri=uri)
    return load_encoder(weights_dir(local))
