"""The one interface every SSL method implements (a Protocol, not a base class).

A method is an ``nn.Module`` with:
    encoder                       the part kept after pretraining (an ``Encoder``)
    backbones                     tuple of backbone names it works with, preferred first
    training_step(images)         images (B, 3, H, W) float in [0, 1] on the device
                                  -> StepOutput(loss, embeddings)

Optional: ``after_step(progress)``, called after each optimiser step with progress in
[0, 1] when a method has one (momentum encoders and schedules update there: BYOL, MoCo);
``lr_scales``, a dict from submodule name to a factor on the learning rate
of that submodule's parameters (SimSiam's faster predictor).

``embeddings`` (B, D) is what collapse monitoring watches: the projector output for
joint-embedding methods, the encoder features for the others.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch

from ssl_models.encoder import Encoder


class StepOutput(NamedTuple):
    loss: torch.Tensor
    embeddings: torch.Tensor


class SSLMethod(Protocol):
    encoder: Encoder
    backbones: tuple[str, ...]

    def training_step(self, images: torch.Tensor) -> StepOutput: ...

    # nn.Module's own API, used by the training loop
    def parameters(self, recurse: bool = True): ...
    def train(self, mode: bool = True): ...
