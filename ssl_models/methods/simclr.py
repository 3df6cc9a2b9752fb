"""SimCLR: two augmented views of each image should agree, against all other views.

Chen, Kornblith, Norouzi, Hinton. "A Simple Framework for Contrastive Learning of
Visual Representations", ICML 2020. https://arxiv.org/abs/2002.05709

    images --views--> x_a, x_b --encoder--> h_a, h_b --projector--> z_a, z_b
    loss = NT-Xent(z_a, z_b, t)

Multi-crop (``augment.local_crops`` > 0, off by default): each local crop is an extra
positive of both global views; the loss averages NT-Xent over the pairs (a, b), (a, l) and
(b, l) for every local crop l. With 0 crops it is the loss above, unchanged.

Backbones: any CNN or ViT encoder (defaults to the CIFAR ResNet-18).
Kept after training: ``encoder`` (the projector is dropped).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ssl_models.augment import ViewPolicy
from ssl_models.encoder import Encoder
from ssl_models.heads import ProjectionHead
from ssl_models.losses.nt_xent import nt_xent_loss
from ssl_models.methods.base import StepOutput


class SimCLR(nn.Module):
    backbones = ("resnet18_cifar",)
    local_crops: ClassVar[int] = 0  # local crops as extra positives only when augment.local_crops > 0
    # Several processes: BN over the global batch, else each rank's BN statistics leak which views share a rank.
    sync_batchnorm = True

    def __init__(
        self,
        encoder: Encoder,
        views: ViewPolicy,
        projection_dim: int = 128,
        hidden_dim: int = 512,
        temperature: float = 0.2,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.views = views
        self.projector = ProjectionHead(encoder.feature_dim, hidden_dim, projection_dim)
        self.temperature = temperature

    def training_step(self, images: torch.Tensor) -> StepOutput:
        # images: (B, 3, H, W) in [0, 1]; the two views are drawn independently.
        n = images.shape[0]
        views = torch.cat([self.views(images), self.views(images)])  # (2B, 3, S, S)
        z = self.projector(self.encoder(views))  # one pass: BN sees both views
        z_a, z_b = z[:n], z[n:]
        loss = nt_xent_loss(z_a, z_b, self.temperature)
        local = self.views.local_views(images)
        if local:  # extra positives of both global views; one BN pass for the small crops
            z_local = self.projector(self.encoder(torch.cat(local))).chunk(len(local))
            pairs = [nt_xent_loss(z_g, z_l, self.temperature) for z_l in z_local for z_g in (z_a, z_b)]
            loss = (loss + sum(pairs)) / (1 + len(pairs))
        return StepOutput(loss, z_a.detach())
