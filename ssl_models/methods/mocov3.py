"""MoCo v3: symmetric InfoNCE between a predictor's queries and a momentum encoder's keys.

Chen, Xie, He. "An Empirical Study of Training Self-Supervised Vision Transformers",
ICCV 2021. https://arxiv.org/abs/2104.02057

    images --views--> x_1, x_2
    q_v = h(g(f(x_v)))      query: encoder, projector (3 layers, BN), predictor; trained
    k_v = g'(f'(x_v))       key: a momentum copy of encoder + projector, no gradient
    loss = 2t * ( InfoNCE(q_1, k_2) + InfoNCE(q_2, k_1) ),   t = 0.2
    after each step:  theta' <- m theta' + (1 - m) theta

No queue: the negatives are the other keys of the batch, gathered from every rank (the
paper's all_gather; ssl_models/losses/mocov3.py), so the batch must be large enough to
hold them. The predictor (BYOL's asymmetry) on top of MoCo's momentum keys is what the
paper found stabilises training.

The ViT-friendly recipe of the paper: AdamW (see ``recommended``), and with a ViT the
patch projection is frozen at its random initialisation (``freeze_patch_embed``), which
the paper found removes the loss spikes of ViT training. Momentum: constant ``momentum``
(0.99), or with ``cosine_momentum`` raised to 1 over training as the paper; over a run
of a few hundred steps the cosine freezes the keys close to their start (moco.py).

Backbones: the CIFAR ResNet-18 and the ViT (vit_tiny).
Kept after training: ``encoder`` (the query encoder; projector, predictor and the momentum
copy are dropped). Optimiser: AdamW, lr 1.5e-3 per 256, weight decay 0.1 (the paper:
1.5e-4 per 256 for 300 epochs with 40 of warm-up; short runs want the larger lr).

Example:
    >>> method = MoCoV3(Encoder("vit_tiny"), ViewPolicy())
    >>> out = method.training_step(torch.rand(16, 3, 32, 32))
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
from torch import nn

from ssl_models.augment import ViewPolicy
from ssl_models.encoder import Encoder
from ssl_models.heads import PredictionHead, ProjectionHead
from ssl_models.losses.mocov3 import mocov3_loss
from ssl_models.methods.base import StepOutput
from ssl_models.momentum import cosine_schedule, update_momentum


class MoCoV3(nn.Module):
    backbones = ("resnet18_cifar", "vit_tiny")
    recommended: ClassVar[dict[str, Any]] = {"optimizer": "adamw", "lr": 1.5e-3, "weight_decay": 0.1}
    # Several processes: BN over the global batch, as the paper (SyncBN in the heads and the ResNet).
    sync_batchnorm = True

    def __init__(
        self,
        encoder: Encoder,
        views: ViewPolicy,
        projection_dim: int = 128,
        hidden_dim: int = 512,
        temperature: float = 0.2,
        momentum: float = 0.99,
        cosine_momentum: bool = False,
        freeze_patch_embed: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.views = views
        patch_embed = getattr(encoder.backbone, "patch_embed", None)
        if freeze_patch_embed and patch_embed is not None:  # a ViT: a fixed random patch projection
            patch_embed.requires_grad_(False)
        self.projector = ProjectionHead(encoder.feature_dim, hidden_dim, projection_dim, num_layers=3, last_batch_norm=True)
        self.predictor = PredictionHead(projection_dim, hidden_dim, projection_dim)
        # The momentum network starts as an exact copy and is never touched by the optimiser.
        self.momentum_encoder = copy.deepcopy(encoder)
        self.momentum_projector = copy.deepcopy(self.projector)
        for p in [*self.momentum_encoder.parameters(), *self.momentum_projector.parameters()]:
            p.requires_grad_(False)
        self.temperature, self.base_momentum, self.cosine_momentum = temperature, momentum, cosine_momentum

    def training_step(self, images: torch.Tensor) -> StepOutput:
        # images: (B, 3, H, W) in [0, 1]; one pass per view, as the paper.
        x_1, x_2 = self.views(images), self.views(images)
        z_1, z_2 = self.projector(self.encoder(x_1)), self.projector(self.encoder(x_2))  # (B, D)
        q_1, q_2 = self.predictor(z_1), self.predictor(z_2)
        with torch.no_grad():  # the keys: no gradient
            k_1 = self.momentum_projector(self.momentum_encoder(x_1))
            k_2 = self.momentum_projector(self.momentum_encoder(x_2))
        return StepOutput(mocov3_loss(q_1, q_2, k_1, k_2, self.temperature), z_1.detach())

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """EMA of the query network into the momentum network, after the optimiser step."""
        m = cosine_schedule(self.base_momentum, progress) if self.cosine_momentum else self.base_momentum
        update_momentum([self.encoder, self.projector], [self.momentum_encoder, self.momentum_projector], m)
