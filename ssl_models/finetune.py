"""Supervised training of an encoder + linear head: fine-tuning and its from-scratch reference.

One loop serves both, for every modality. Given the SSL encoder it fine-tunes it; given the
same architecture at random initialisation it is the supervised from-scratch reference. The
only difference between the two is the starting weights, so a gap between them is the
value of pretraining and nothing else.

The budget is a fixed number of optimisation steps, not epochs: 1% of the labels and
100% of the labels get the same compute, which keeps the label-efficiency curve cheap
and its points comparable.

What differs between modalities is given to the loop, never decided in it:

- ``augment``: what a training batch (as read, on the device) becomes before the model sees
  it. Images: :func:`image_augment`, [0, 1] floats with a random resized crop and a horizontal
  flip, on the device on whole batches as in pretraining. Text: none, token ids go in as read.
- ``features``: a model's outputs over a whole set, batch by batch, no augmentation; the test
  accuracy is read from them. Images: ``ssl_models.evaluation.extract_features``; text:
  ``ssl_models.text.text_features``.
- the recipe (:class:`FinetuneSettings`): its defaults are the images' (SGD with Nesterov
  momentum, for the ResNets); text has its own (:data:`TEXT_FINETUNE`: AdamW, as a Transformer
  wants).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ssl_models.augment import random_resized_crop
from ssl_models.data import ImageSource, SubsetSource, as_source
from ssl_models.encoder import CONFIG_FILE, WEIGHTS_FILE, Classifier, Encoder
from ssl_models.memory_format import training_memory_format

Augment = Callable[[torch.Tensor], torch.Tensor]  # a training batch on the device -> the classifier's input
Features = Callable[..., torch.Tensor]  # features(model, rows, device=...) -> (N, D) float32 on the CPU, eval mode
Rows = torch.Tensor | ImageSource  # (N, 3, H, W) uint8 images, an ImageSource, or (N, L) token ids


@dataclass(frozen=True)
class FinetuneSettings:
    """The fine-tuning recipe. The defaults are the images' (:data:`TEXT_FINETUNE`: text's)."""

    steps: int = 150
    batch_size: int = 32
    optimizer: str = "sgd"  # sgd (Nesterov momentum 0.9) | adamw
    lr: float = 0.05  # the peak, after a linear warm-up; cosine decay to zero
    weight_decay: float = 5e-4  # not on biases and norm parameters
    warmup_steps: int = 10
    crop_scale_min: float = 0.5  # images only (image_augment): milder than SSL views, labels must survive the crop
    flip_p: float = 0.5  # images only
    seed: int = 0


# The Transformer text encoder's recipe (the label-efficiency curve, `sslpipe finetune` on text):
# AdamW at 5e-4, as for BERT; the rest of the images' recipe (steps, batch, warm-up, weight decay)
# serves as it is. SGD at the images' 0.05 does not learn it: from scratch it stayed at chance on AG
# News (docs/methods.md). The pipeline's ``finetune.optimizer`` / ``finetune.lr`` override both recipes.
TEXT_FINETUNE = FinetuneSettings(optimizer="adamw", lr=5e-4)


def classifier_from_weights(config: dict, state_dict: dict[str, torch.Tensor]) -> Classifier:
    """Rebuild an image classifier from :attr:`Classifier.config` and a state_dict (no pickle involved)."""
    classifier = Classifier(Encoder.from_config(config["encoder"]), int(config["num_classes"]))
    classifier.load_state_dict(state_dict)
    return classifier.eval()


def save_classifier(classifier: Classifier, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """weights.pt (a state_dict) + config.json (plus ``extra``, e.g. class names), as for encoders."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in classifier.state_dict().items()}, directory / WEIGHTS_FILE)
    (directory / CONFIG_FILE).write_text(json.dumps({**classifier.config, **(extra or {})}, indent=2, sort_keys=True))
    return directory


def load_classifier(directory: str | Path) -> Classifier:
    """Load an image classifier saved by :func:`save_classifier`; never runs pickle."""
    directory = Path(directory)
    config = json.loads((directory / CONFIG_FILE).read_text())
    return classifier_from_weights(config, torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True))


def random_init_like(encoder: nn.Module, seed: int = 0) -> nn.Module:
    """The same architecture (``type(encoder).from_config(encoder.config)``), freshly initialised with ``seed``."""
    torch.manual_seed(seed)
    return type(encoder).from_config(encoder.config)


def fresh_copy(encoder: nn.Module, random_init: bool = False, seed: int = 0) -> nn.Module:
    """A trainable copy of ``encoder`` (the caller's stays untouched), or its architecture re-initialised."""
    model = random_init_like(encoder, seed)
    if not random_init:
        model.load_state_dict({k: v.detach().clone().cpu() for k, v in encoder.state_dict().items()})
    return model


def stratified_subset(labels: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """Indices of ``fraction`` of the examples of every class (at least one each), sorted.

    Per-class sampling keeps 1% of a balanced set balanced; a plain random 1% could miss
    a class entirely and measure that instead of label efficiency.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    generator = torch.Generator().manual_seed(seed)
    picked = []
    for cls in labels.unique():
        members = (labels == cls).nonzero().flatten()
        n = max(1, round(fraction * len(members)))
        picked.append(members[torch.randperm(len(members), generator=generator)[:n]])
    return torch.cat(picked).sort().values


def image_augment(settings: FinetuneSettings) -> Augment:
    """The images' training batches: uint8 (B, 3, H, W) -> floats in [0, 1], a random resized crop
    (``crop_scale_min`` to all of the area) and a horizontal flip (``flip_p``), at the same size."""

    def augment(batch: torch.Tensor) -> torch.Tensor:
        return random_resized_crop(batch.float().div_(255), batch.shape[-1], (settings.crop_scale_min, 1.0), flip_p=settings.flip_p)

    return augment


def make_optimizer(model: nn.Module, settings: FinetuneSettings) -> torch.optim.Optimizer:
    """``settings.optimizer`` at ``settings.lr``; weight decay on weights only, not on biases and norm parameters."""
    groups = [
        {"params": [p for p in model.parameters() if p.ndim > 1], "weight_decay": settings.weight_decay},
        {"params": [p for p in model.parameters() if p.ndim <= 1], "weight_decay": 0.0},
    ]
    if settings.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=settings.lr, momentum=0.9, nesterov=True)
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=settings.lr)
    raise ValueError(f"unknown optimizer {settings.optimizer!r}; choose sgd or adamw")


def lr_factor(settings: FinetuneSettings, step: int) -> float:
    """The share of ``settings.lr`` at ``step``: linear warm-up over ``warmup_steps``, then cosine decay to zero."""
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    return 0.5 * (1 + math.cos(math.pi * (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)))


def train_classifier(
    encoder: nn.Module,
    rows: Rows,
    labels: torch.Tensor,
    num_classes: int,
    settings: FinetuneSettings,
    device: torch.device | str = "cpu",
    progress: str | None = None,
    *,
    augment: Augment | None,
) -> Classifier:
    """Train ``encoder`` (updated in place) + a new linear head with cross-entropy.

    rows: (N, 3, H, W) uint8 images or an ImageSource (read batch by batch: only a batch is
    ever on the device), or (N, L) token ids; labels: (N,) int64. ``augment``: what a batch
    becomes on the device before the model sees it (images: :func:`image_augment`; None: the
    rows go in as read, e.g. token ids). Returns the classifier in eval mode, on the CPU.
    ``progress``: a progress bar over the steps with this description (None: no bar).
    """
    torch.manual_seed(settings.seed)
    device = torch.device(device)
    # channels_last on CUDA only, as in pretraining (see ssl_models/memory_format.py).
    classifier = Classifier(encoder, num_classes)
    memory_format = training_memory_format(classifier, device)
    classifier = classifier.to(device, memory_format=memory_format)
    source, targets = as_source(rows), labels.to(device)
    # BatchNorm needs at least two examples per batch; tiny subsets repeat examples within a batch.
    batch_size = max(2, settings.batch_size)
    optimizer = make_optimizer(classifier, settings)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(settings, step))
    classifier.train()
    order = torch.empty(0, dtype=torch.long)
    for _ in tqdm(range(settings.steps), desc=progress, disable=progress is None, leave=False):
        # Walk through shuffled passes over the data, so every labeled example is used equally often.
        while len(order) < batch_size:
            order = torch.cat([order, torch.randperm(len(source))])
        batch_idx, order = order[:batch_size], order[batch_size:]
        batch = source.read(batch_idx.numpy(), pin=device.type == "cuda").to(device, non_blocking=True)
        if augment is not None:
            batch = augment(batch)
        loss = F.cross_entropy(classifier(batch.contiguous(memory_format=memory_format)), targets[batch_idx.to(device)])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return classifier.cpu().to(memory_format=torch.contiguous_format).eval()


@torch.no_grad()
def classifier_accuracy(
    classifier: nn.Module, rows: Rows, labels: torch.Tensor, features: Features, device: torch.device | str = "cpu"
) -> float:
    """Top-1 accuracy on ``rows``, no augmentation: the arg-max of ``features`` (the modality's, here logits)."""
    predictions = features(classifier, rows, device=device).argmax(1)
    classifier.cpu()
    return (predictions == labels).float().mean().item()


def finetune_accuracy(
    encoder: nn.Module,
    train: tuple[Rows, torch.Tensor],
    test: tuple[Rows, torch.Tensor],
    num_classes: int,
    settings: FinetuneSettings,
    fraction: float = 1.0,
    random_init: bool = False,
    device: torch.device | str = "cpu",
    progress: str | None = None,
    *,
    features: Features,
    augment: Augment | None,
) -> tuple[float, Classifier]:
    """Train on a stratified ``fraction`` of ``train`` from the encoder's weights (or from
    scratch with ``random_init``) and return (test accuracy, classifier). ``encoder`` is not modified.
    ``features`` and ``augment``: the modality's (see the module docstring)."""
    idx = stratified_subset(train[1], fraction, settings.seed)
    model = fresh_copy(encoder, random_init, settings.seed)
    rows = train[0][idx] if isinstance(train[0], torch.Tensor) else SubsetSource(train[0], idx.numpy())
    classifier = train_classifier(model, rows, train[1][idx], num_classes, settings, device, progress, augment=augment)
    return classifier_accuracy(classifier, test[0], test[1], features, device), classifier


@torch.no_grad()
def confusion_matrix(
    classifier: nn.Module, rows: Rows, labels: torch.Tensor, num_classes: int, features: Features, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts on ``rows``, no augmentation: row = true class,
    column = predicted class (the arg-max of ``features``, as :func:`classifier_accuracy` reads it).
    Its trace over its sum is that accuracy; row ``i``'s diagonal over its sum, class ``i``'s."""
    predictions = features(classifier, rows, device=device).argmax(1)
    classifier.cpu()
    pairs = labels.long() * num_classes + predictions.long()
    return torch.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
