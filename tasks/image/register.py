"""The image part of register: the encoder as ``register.model_name``, a pyfunc taking images
(float in [0, 1])."""

from __future__ import annotations

from pathlib import Path

import torch

from ssl_models.encoder import load_encoder
from ssl_models.evaluation import extract_features
from tasks.core.config import PipelineConfig
from tasks.core.context import StageContext
from tasks.core.results import Prepared, Pretrained
from tasks.evaluation.scoring import probe_accuracy
from tasks.image.prepared import load_labeled
from tasks.registry.models import log_encoder_model, weights_dir
from tasks.registry.registration import (
    register_version_and_gate,
)


def _champion_rescorer(cfg: PipelineConfig, labeled_dir: str):
    """Re-evaluate a registered encoder on the current labeled set, by the evaluate protocol."""

    def rescore(model_version) -> float:
        import mlflow

        local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_version.name}/{model_version.version}")
        encoder, labeled, device = load_encoder(weights_dir(local)), load_labeled(labeled_dir), torch.device(cfg.pretrain.device)
        train_x, test_x = (extract_features(encoder, labeled[f"{split}_images"], device=device) for split in ("train", "test"))
        return probe_accuracy(train_x, labeled["train_labels"], test_x, labeled["test_labels"], cfg.evaluate)

    return rescore


def register_and_gate(root: Path, cfg: PipelineConfig, model_id: str, tags: dict[str, str], labeled_dir: str):
    """Register an image encoder as a new version of ``register.model_name`` and run the gate."""
    return register_version_and_gate(root, cfg, cfg.register.model_name, lambda: model_id, tags, _champion_rescorer(cfg, labeled_dir))


def model_name(cfg: PipelineConfig) -> str:
    return cfg.register.model_name


def extra_tags(pretrained: Pretrained) -> dict[str, str]:
    return {}


def log_model(ctx: StageContext, prepared: Prepared, pretrained: Pretrained, name: str, tags: dict[str, str]) -> str:
    # A real input example: two evaluation images, as the model takes them (float in [0, 1]).
    example = load_labeled(prepared.labeled)["test_images"][:2].float().div(255).numpy()
    return log_encoder_model(pretrained.encoder_dir, name, pretrained.run_id, tags, input_example=example)


def champion_rescorer(ctx: StageContext, labeled_dir: str):
    return _champion_rescorer(ctx.cfg, labeled_dir)
