"""Register stage: the encoder becomes a new version of ``ssl-encoder`` in MLflow.

The model is an MLflow model (tasks/registry/models.py: a models-from-code pyfunc over
``weights.pt`` + ``config.json``, linked to the encoder's run, with a signature and an input
example) that ``mlflow.pyfunc.load_model`` and ``mlflow models serve`` load without pickle;
:func:`load_registered_encoder` gives back the torch module. The version's description holds
the evaluation table and the gate's decision.

What is registered is checked first: the scores must be those of this encoder (its
weights' sha256 and run id, recorded by evaluate). Every new version gets
``register.alias`` (``@challenger``) and then goes through the promotion gate
(tasks/registry/promotion.py), which may make it ``@champion``. The decision and both numbers are
tags of the version and of the run, and are in ``reports/registered.json``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ssl_models.encoder import Encoder, load_encoder
from ssl_models.evaluation import extract_features
from tasks.core.config import PipelineConfig
from tasks.core.context import StageContext
from tasks.core.results import Evaluation, Prepared, Pretrained, Registered
from tasks.evaluation.scoring import probe_accuracy
from tasks.image.prepared import load_labeled
from tasks.registry.models import log_encoder_model, weights_dir
from tasks.registry.registration import (
    MismatchedScores,
    check_scores_belong,
    gate_tags,
    lineage_tags,
    record_registration,
    register_version_and_gate,
)
from tasks.registry.tracking import use_store

__all__ = ["MismatchedScores", "check_scores_belong", "gate_tags", "load_registered_encoder", "register", "register_and_gate"]


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
    return register_version_and_gate(root, cfg, cfg.register.model_name, model_id, tags, _champion_rescorer(cfg, labeled_dir))


def register(ctx: StageContext, prepared: Prepared, pretrained: Pretrained, evaluation: Evaluation) -> Registered:
    """Log the encoder to its run, register it with ``register.alias``, run the promotion gate."""
    cfg = ctx.cfg
    check_scores_belong(pretrained, evaluation)
    tags = lineage_tags(ctx, prepared, pretrained, evaluation, "image")
    use_store(ctx.layout.root, cfg.register.experiment)
    # A real input example: two evaluation images, as the model takes them (float in [0, 1]).
    example = load_labeled(prepared.labeled)["test_images"][:2].float().div(255).numpy()
    model_id = log_encoder_model(pretrained.encoder_dir, cfg.register.model_name, pretrained.run_id, tags, input_example=example)
    version, decision = register_and_gate(ctx.layout.root, cfg, model_id, tags, prepared.labeled)
    return record_registration(ctx, cfg.register.model_name, version, decision, prepared, pretrained, evaluation)


def load_registered_encoder(uri: str = "models:/ssl-encoder@champion", root: Path | None = None, experiment: str = "ssl-pipeline") -> Encoder:
    """Download ``models:/NAME@ALIAS`` (or ``/VERSION``) and rebuild the encoder, weights only."""
    import mlflow

    use_store(root or Path.cwd(), experiment)
    local = mlflow.artifacts.download_artifacts(artifact_uri=uri)
    return load_encoder(weights_dir(local))
