"""SSL methods, one readable file each, chosen by name with ``pretrain.method``."""

from __future__ import annotations

from typing import Any

from ssl_models.augment import ViewPolicy
from ssl_models.encoder import Encoder
from ssl_models.methods.barlow_twins import BarlowTwins
from ssl_models.methods.base import SSLMethod, StepOutput
from ssl_models.methods.byol import BYOL
from ssl_models.methods.colorization import Colorization
from ssl_models.methods.dino import DINO
from ssl_models.methods.ibot import IBOT
from ssl_models.methods.inpainting import Inpainting
from ssl_models.methods.mae import MAE
from ssl_models.methods.mlm import MLM
from ssl_models.methods.moco import MoCo
from ssl_models.methods.mocov3 import MoCoV3
from ssl_models.methods.nnclr import NNCLR
from ssl_models.methods.relative_patch import RelativePatchLocation
from ssl_models.methods.rotation import RotationPrediction
from ssl_models.methods.simclr import SimCLR
from ssl_models.methods.simsiam import SimSiam
from ssl_models.methods.swav import SwAV
from ssl_models.methods.vicreg import VICReg

METHODS: dict[str, type] = {
    "simclr": SimCLR,
    "moco": MoCo,
    "byol": BYOL,
    "simsiam": SimSiam,
    "barlow_twins": BarlowTwins,
    "vicreg": VICReg,
    "mae": MAE,
    "rotation": RotationPrediction,
    "relative_patch": RelativePatchLocation,
    "colorization": Colorization,
    "inpainting": Inpainting,
    "dino": DINO,
    "ibot": IBOT,
    "swav": SwAV,
    "nnclr": NNCLR,
    "mocov3": MoCoV3,
}

# Methods over token ids (ssl_models/text.py's TextEncoder), kept apart from the image methods:
# they take text data, a text encoder, and register as a text model.
TEXT_METHODS: dict[str, type] = {"mlm": MLM}


def method_class(name: str) -> type:
    known = METHODS | TEXT_METHODS
    if name not in known:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(known)}")
    return known[name]


def is_text_method(name: str) -> bool:
    return name in TEXT_METHODS


def default_backbone(name: str) -> str:
    """The backbone a method prefers, used when ``pretrain.backbone`` is ``auto``."""
    return method_class(name).backbones[0]


def default_local_crops(name: str) -> int:
    """How many local crops (multi-crop) a method draws by default; 0 for methods without them."""
    return getattr(method_class(name), "local_crops", 0)


def uses_local_crops(name: str) -> bool:
    """Whether a method takes local crops at all (it declares ``local_crops``, its default number)."""
    return hasattr(method_class(name), "local_crops")


def check_image_size(name: str, image_size: int, backbone: str = "auto", **hparams: Any) -> None:
    """Raise a ValueError naming the method and the size when ``name`` cannot train on
    ``image_size`` px images; run it before training. It builds a width-4 copy of the
    method and takes one step on two random images, so every constraint is checked
    (patch grids, MAE's patches, relative-patch geometry, decoders) without a list to keep."""
    import torch

    if not 32 <= image_size <= 512:
        raise ValueError(f"image size {image_size} px: the pipeline supports 32 to 512 px")
    backbone = default_backbone(name) if backbone == "auto" else backbone
    try:
        encoder = Encoder(backbone, {"width": 4, "image_size": image_size}, image_size)
        method = build_method(name, encoder, ViewPolicy(size=image_size), **hparams)
        with torch.no_grad():
            method.training_step(torch.rand(2, 3, image_size, image_size))
    except Exception as err:  # noqa: BLE001 - any failure of the trial step: re-raised, with its message
        raise ValueError(f"method {name!r} with backbone {backbone!r} cannot train on {image_size} px images: {err}") from None


def build_method(name: str, encoder: Encoder, views: ViewPolicy, **hparams: Any) -> SSLMethod:
    """Build method ``name`` around ``encoder``; ``hparams`` override its defaults."""
    return method_class(name)(encoder, views, **hparams)


__all__ = [
    "METHODS",
    "TEXT_METHODS",
    "SSLMethod",
    "StepOutput",
    "build_method",
    "check_image_size",
    "default_backbone",
    "default_local_crops",
    "is_text_method",
    "method_class",
    "uses_local_crops",
]
