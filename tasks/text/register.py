"""The text part of register: the encoder (weights, config, tokenizer) as ``register.text_model_name``, a pyfunc taking strings."""

from __future__ import annotations

from pathlib import Path

import torch

from ssl_models.text import TOKENIZER_FILE, load_text_encoder, text_features
from tasks.core.context import StageContext
from tasks.core.results import Prepared, Pretrained, file_sha256
from tasks.evaluation.scoring import probe_accuracy
from tasks.registry.models import log_text_encoder_model, weights_dir
from tasks.text.tokens import encode, load_labeled_texts, load_labeled_tokens, load_tokenizer


def _text_champion_rescorer(ctx: StageContext, labeled_dir: str):
    """A registered text encoder's probe accuracy on the current labeled set, encoded with its own tokenizer."""

    def rescore(model_version) -> float:
        import mlflow

        local = weights_dir(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_version.name}/{model_version.version}"))
        tokenizer, texts, labeled = load_tokenizer(local), load_labeled_texts(Path(labeled_dir)), load_labeled_tokens(Path(labeled_dir))
        encoder, device = load_text_encoder(local), torch.device(ctx.cfg.pretrain.device)
        ids = {split: torch.from_numpy(encode(tokenizer, texts[f"{split}_texts"])).long() for split in ("train", "test")}
        train_x, test_x = (text_features(encoder, ids[split], device=device) for split in ("train", "test"))
        return probe_accuracy(train_x, labeled["train_labels"], test_x, labeled["test_labels"], ctx.cfg.evaluate)

    return rescore


def model_name(cfg) -> str:
    return cfg.register.text_model_name


def extra_tags(pretrained: Pretrained) -> dict[str, str]:
    return {"tokenizer_sha256": file_sha256(Path(pretrained.encoder_dir) / TOKENIZER_FILE)}


def log_model(ctx: StageContext, prepared: Prepared, pretrained: Pretrained, name: str, tags: dict[str, str]) -> str:
    """The text encoder (weights, config, tokenizer) as a pyfunc taking strings."""
    example = load_labeled_texts(prepared.labeled)["test_texts"][:2]  # a real input example: two evaluation documents
    return log_text_encoder_model(pretrained.encoder_dir, name, pretrained.run_id, tags, example)


champion_rescorer = _text_champion_rescorer
