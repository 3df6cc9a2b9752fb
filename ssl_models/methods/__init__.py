"""SSL methods, one readable file each, chosen by name with ``pretrain.method``."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ssl_models.augment import ViewPolicy
    from ssl_models.encoder import Encoder
    from ssl_models.methods.base import SSLMethod

# Each method's module in this package and its class, imported when first asked for: a stage
# that runs one method's code (augment runs MLM's masking) then imports, and so depends on, that
# file only. The pretrain stage, which runs whichever ``pretrain.method`` names, lists every
# module of this package as its code (tasks/stages.py: ``picks``).
_IMAGE_METHODS = {  # name -> "module:Class"
    "simclr": "simclr:SimCLR",
    "moco": "moco:MoCo",
    "byol": "byol:BYOL",
    "simsiam": "simsiam:SimSiam",
    "barlow_twins": "barlow_twins:BarlowTwins",
    "vicreg": "vicreg:VICReg",
    "mae": "mae:MAE",
    "rotation": "rotation:RotationPrediction",
    "relative_patch": "relative_patch:RelativePatchLocation",
    "colorization": "colorization:Colorization",
    "inpainting": "inpainting:Inpainting",
    "dino": "dino:DINO",
    "ibot": "ibot:IBOT",
    "swav": "swav:SwAV",
    "nnclr": "nnclr:NNCLR",
    "mocov3": "mocov3:MoCoV3",
}
# Methods over token ids (ssl_models/text.py's TextEncoder), kept apart from the image methods:
# they take text data, a text encoder, and register as a text model.
_TEXT_METHODS = {"mlm": "mlm:MLM"}


def __getattr__(name: str) -> dict[str, type]:
    """``METHODS`` and ``TEXT_METHODS``: name -> class, importing every method (PEP 562)."""
    if name == "METHODS":
        return {method: method_class(method) for method in _IMAGE_METHODS}
    if name == "TEXT_METHODS":
        return {method: method_class(method) for method in _TEXT_METHODS}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def method_class(name: str) -> type:
    known = _IMAGE_METHODS | _TEXT_METHODS
    if name not in known:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(known)}")
    module, cls = known[name].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def is_text_method(name: str) -> bool:
    return name in _TEXT_METHODS


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

    from ssl_models.augment import ViewPolicy
    from ssl_models.encoder import Encoder

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
    "build_method",
    "check_image_size",
    "default_backbone",
    "default_local_crops",
    "is_text_method",
    "method_class",
    "uses_local_crops",
]
