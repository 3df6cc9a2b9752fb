"""The image part of evaluate (the shell: tasks/evaluate.py, whose ``EvaluatePart`` this module is).

Rows: ``ssl`` and ``random_init`` (the shell) and ``raw_pixels``, the images' baseline (at most
32 px, ssl_models/evaluation.py). Fine-tuning takes the images' recipe (``FinetuneSettings``'
defaults: SGD) and their light augmentation (random resized crop + flip).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ssl_models.encoder import Encoder, load_encoder
from ssl_models.evaluation import extract_features as features
from ssl_models.evaluation import raw_pixel_features
from ssl_models.finetune import FinetuneSettings
from ssl_models.finetune import image_augment as augment
from tasks.evaluation.scoring import Labeled
from tasks.image.prepared import load_classes
from tasks.image.prepared import load_labeled as load_arrays

UNIT = "images"
FINETUNE = FinetuneSettings()

__all__ = ["FINETUNE", "UNIT", "augment", "baselines", "features", "load_encoder", "load_labeled"]


def load_labeled(directory: str | Path) -> Labeled:
    arrays = load_arrays(directory)
    return Labeled(
        (arrays["train_images"], arrays["train_labels"]), (arrays["test_images"], arrays["test_labels"]), load_classes(directory)
    )


def baselines(encoder: Encoder, labeled: Labeled) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {"raw_pixels": (raw_pixel_features(labeled.train[0]), raw_pixel_features(labeled.test[0]))}
