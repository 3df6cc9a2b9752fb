"""Supervised training of an encoder + linear head: fine-tuning and its from-scratch reference.

One routine serves both. Given the SSL encoder it fine-tunes it; given the same
architecture at random initialisation it is the supervised from-scratch reference. The
only difference between the two is the starting weights, so a gap between them is the
value of pretraining and nothing else.

The budget is a fixed number of optimisation steps, not epochs: 1% of the labels and
100% of the labels get the same compute, which keeps the label-efficiency curve cheap
and its points comparable. Light augmentation (random resized crop + horizontal flip)
runs on the device on whole batches, as in pretraining.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ssl_models.augment import random_resized_crop
from ssl_models.data import ImageSource, SubsetSource, as_source
from ssl_models.encoder import CONFIG_FILE, WEIGHTS_FILE, Encoder, encoder_from_weights
from ssl_models.evaluation import extract_features
from ssl_models.memory_format import training_memory_format


@dataclass(frozen=True)
class FinetuneSettings:
    steps: int = 150
    batch_size: int = 32
    lr: float = 0.05  # SGD with Nesterov momentum, cosine decay to zero after a short warm-up
    weight_decay: float = 5e-4
    warmup_steps: int = 10
    crop_scale_min: float = 0.5  # milder than SSL views: labels must survive the crop
    flip_p: float = 0.5
    seed: int = 0


class Classifier(nn.Module):
    """Encoder + linear head. Input: float images in [0, 1], (B, 3, H, W) -> logits (B, classes)."""

    def __init__(self, encoder: Encoder, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.feature_dim, num_classes)
        self.num_classes = num_classes

    @property
    def config(self) -> dict:
        return {"encoder": self.encoder.config, "feature_dim": self.encoder.feature_dim, "num_classes": self.num_classes}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(images))


def classifier_from_weights(config: dict, state_dict: dict[str, torch.Tensor]) -> Classifier:
    """Rebuild a classifier from :attr:`Classifier.config` and a state_dict (no pickle involved)."""
    encoder_config = config["encoder"]
    encoder = Encoder(encoder_config["backbone"], encoder_config.get("backbone_kwargs"), encoder_config.get("image_size", 32))
    classifier = Classifier(encoder, int(config["num_classes"]))
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
    """Load a classifier saved by :func:`save_classifier`; never runs pickle."""
    directory = Path(directory)
    config = json.loads((directory / CONFIG_FILE).read_text())
    return classifier_from_weights(config, torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True))


def fresh_copy(encoder: Encoder, random_init: bool = False, seed: int = 0) -> Encoder:
    """A trainable copy of ``encoder`` (the caller's stays untouched), or its architecture re-initialised."""
    if random_init:
        torch.manual_seed(seed)
        return Encoder(encoder.config["backbone"], encoder.config["backbone_kwargs"], encoder.config["image_size"])
    state = {k: v.detach().clone().cpu() for k, v in encoder.state_dict().items()}
    return encoder_from_weights(encoder.config, state)


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


def train_classifier(
    encoder: Encoder,
    images: torch.Tensor | ImageSource,
    labels: torch.Tensor,
    num_classes: int,
    settings: FinetuneSettings,
    device: torch.device | str = "cpu",
    progress: str | None = None,
) -> Classifier:
    """Train ``encoder`` (updated in place) + a new linear head with cross-entropy.

    images: (N, 3, H, W) uint8 or an ImageSource (read batch by batch: only a batch is
    ever on the device), labels: (N,) int64. Returns the classifier in eval mode, on the CPU.
    ``progress``: a progress bar over the steps with this description (None: no bar).
    """
    torch.manual_seed(settings.seed)
    device = torch.device(device)
    # channels_last on CUDA only, as in pretraining (see ssl_models/memory_format.py).
    classifier = Classifier(encoder, num_classes)
    memory_format = training_memory_format(classifier, device)
    classifier = classifier.to(device, memory_format=memory_format)
    source, targets = as_source(images), labels.to(device)
    # BatchNorm needs at least two images per batch; tiny subsets repeat images within a batch.
    batch_size = max(2, settings.batch_size)
    decay = [p for p in classifier.parameters() if p.ndim > 1]
    no_decay = [p for p in classifier.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr, momentum=0.9, nesterov=True,
    )  # fmt: skip

    def lr_factor(step: int) -> float:
        if step < settings.warmup_steps:
            return (step + 1) / settings.warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    classifier.train()
    order = torch.empty(0, dtype=torch.long)
    for _ in tqdm(range(settings.steps), desc=progress, disable=progress is None, leave=False):
        # Walk through shuffled passes over the data, so every labeled image is used equally often.
        while len(order) < batch_size:
            order = torch.cat([order, torch.randperm(len(source))])
        batch_idx, order = order[:batch_size], order[batch_size:]
        batch = source.read(batch_idx.numpy(), pin=device.type == "cuda").to(device, non_blocking=True).float().div_(255)
        size = batch.shape[-1]
        batch = random_resized_crop(batch, size, (settings.crop_scale_min, 1.0), flip_p=settings.flip_p)
        batch = batch.contiguous(memory_format=memory_format)
        loss = F.cross_entropy(classifier(batch), targets[batch_idx.to(device)])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return classifier.cpu().to(memory_format=torch.contiguous_format).eval()


@torch.no_grad()
def classifier_accuracy(
    classifier: nn.Module,
    images: torch.Tensor | ImageSource,
    labels: torch.Tensor,
    device: torch.device | str = "cpu",
    batch_size: int = 512,
) -> float:
    """Top-1 accuracy on (N, 3, H, W) uint8 images (or an ImageSource), no augmentation."""
    predictions = extract_features(classifier, images, batch_size, device).argmax(1)  # logits, batch by batch
    classifier.cpu()
    return (predictions == labels).float().mean().item()


def finetune_accuracy(
    encoder: Encoder,
    train: tuple[torch.Tensor | ImageSource, torch.Tensor],
    test: tuple[torch.Tensor | ImageSource, torch.Tensor],
    num_classes: int,
    settings: FinetuneSettings,
    fraction: float = 1.0,
    random_init: bool = False,
    device: torch.device | str = "cpu",
    progress: str | None = None,
) -> tuple[float, Classifier]:
    """Train on a stratified ``fraction`` of ``train`` from the encoder's weights (or from
    scratch with ``random_init``) and return (test accuracy, classifier). ``encoder`` is not modified."""
    idx = stratified_subset(train[1], fraction, settings.seed)
    model = fresh_copy(encoder, random_init, settings.seed)
    images = train[0][idx] if isinstance(train[0], torch.Tensor) else SubsetSource(train[0], idx.numpy())
    classifier = train_classifier(model, images, train[1][idx], num_classes, settings, device, progress)
    return classifier_accuracy(classifier, test[0], test[1], device), classifier
