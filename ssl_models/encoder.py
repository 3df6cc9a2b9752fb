"""The encoder: what pretraining produces and every later stage consumes.

An encoder is a backbone behind a fixed input normalisation, so its contract is
simple: float RGB images in [0, 1], shape (B, 3, H, W) -> features (B, feature_dim).

A :class:`Classifier` is an encoder with a linear head on its features (fine-tuning:
ssl_models/finetune.py), for an image encoder and a text encoder (ssl_models/text.py) alike.

On disk it is two files, loadable without pickle:
    weights.pt   the state_dict, read with ``torch.load(weights_only=True)``
    config.json  everything needed to rebuild the module (backbone name and kwargs)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ssl_models.backbones import build_backbone

# Generic RGB statistics; the encoder owns them so callers never normalise by hand.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

WEIGHTS_FILE = "weights.pt"
SAFETENSORS_FILE = "weights.safetensors"  # the same weights, beside weights.pt in a registered model
CONFIG_FILE = "config.json"


class Encoder(nn.Module):
    def __init__(self, backbone: str = "resnet18_cifar", backbone_kwargs: dict[str, Any] | None = None, image_size: int = 32) -> None:
        super().__init__()
        backbone_kwargs = dict(backbone_kwargs or {})
        self.config = {"backbone": backbone, "backbone_kwargs": backbone_kwargs, "image_size": image_size}
        self.backbone = build_backbone(backbone, **backbone_kwargs)
        self.feature_dim: int = self.backbone.feature_dim
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Encoder:
        """The architecture ``config`` describes (:attr:`config`, or a saved config.json), freshly initialised."""
        return cls(config["backbone"], config.get("backbone_kwargs"), config.get("image_size", 32))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # images: (B, 3, H, W) in [0, 1] -> (B, feature_dim)
        return self.backbone((images - self.mean) / self.std)


class Classifier(nn.Module):
    """Encoder + linear head on its features: what the encoder takes (float images in [0, 1], token ids) -> logits (B, classes)."""

    def __init__(self, encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.feature_dim, num_classes)
        self.num_classes = num_classes

    @property
    def config(self) -> dict:
        """The encoder's config and the class count (and the encoder's modality, so a loader knows what to build)."""
        modality = {"modality": self.encoder.config["modality"]} if "modality" in self.encoder.config else {}
        return {**modality, "encoder": self.encoder.config, "feature_dim": self.encoder.feature_dim, "num_classes": self.num_classes}

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(inputs))


def save_encoder(encoder: nn.Module, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write weights.pt and config.json (plus ``extra`` metadata) into ``directory``.

    ``encoder``: an :class:`Encoder`, or any module with ``config`` and ``feature_dim`` (a TextEncoder).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
    torch.save(state, directory / WEIGHTS_FILE)
    config = {**encoder.config, "feature_dim": encoder.feature_dim, **(extra or {})}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    return directory


def encoder_from_weights(config: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> Encoder:
    """Rebuild an encoder from its config and a state_dict."""
    encoder = Encoder.from_config(config)
    encoder.load_state_dict(state_dict)
    return encoder.eval()


def load_encoder(directory: str | Path, map_location: str | torch.device = "cpu") -> Encoder:
    """Load an encoder saved by :func:`save_encoder`; never runs pickle."""
    directory = Path(directory)
    config = json.loads((directory / CONFIG_FILE).read_text())
    state = torch.load(directory / WEIGHTS_FILE, map_location=map_location, weights_only=True)
    return encoder_from_weights(config, state)


class InitWeightsError(ValueError):
    """Given weights do not fit the encoder (missing tensors or other shapes); the message names them."""


# Where a given state_dict's keys may sit in an Encoder's: the whole encoder (the project's own
# weights.pt), its backbone, or the model inside a torchvision / timm backbone (their own files).
INIT_PREFIXES = ("", "backbone.", "backbone.net.")


def _names(keys: list[str], shown: int = 3) -> str:
    more = f" (+{len(keys) - shown} more)" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def load_init_weights(encoder: nn.Module, given: dict[str, torch.Tensor]) -> list[str]:
    """Load ``given`` (a state_dict of the encoder, of its backbone, or of a torchvision / timm
    model) into ``encoder``; every tensor of the encoder must be given, in its shape.

    Returns the given keys that the encoder has no place for (a classifier's ``fc.*``), which
    are left out; raises :class:`InitWeightsError` naming the keys whose shapes differ, or
    those missing. The prefix is the one under which most given keys find a place.

    >>> net = Encoder("resnet18_cifar", {"width": 4})
    >>> load_init_weights(net, {"fc.weight": torch.zeros(1), **net.backbone.state_dict()})
    ['fc.weight']
    """
    target = encoder.state_dict()
    prefix = max(INIT_PREFIXES, key=lambda p: sum(p + key in target for key in given))
    matched = {prefix + key: value for key, value in given.items() if prefix + key in target}
    ignored = sorted(key for key in given if prefix + key not in target)
    wrong = [key for key, value in matched.items() if tuple(value.shape) != tuple(target[key].shape)]
    if wrong:
        shapes = "; ".join(f"{key} {tuple(matched[key].shape)} given, {tuple(target[key].shape)} here" for key in wrong[:3])
        more = f" (+{len(wrong) - 3} more)" if len(wrong) > 3 else ""
        raise InitWeightsError(f"{len(wrong)} tensor(s) have another shape: {shapes}{more}")
    missing = sorted(set(target) - set(matched))
    if missing:
        raise InitWeightsError(f"{len(missing)} of the encoder's {len(target)} tensors are not in the given weights: {_names(missing)}")
    encoder.load_state_dict(matched)
    return ignored
