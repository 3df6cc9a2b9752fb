"""SimSiam: a Siamese network with a predictor and a stop-gradient, nothing else.

Chen, He. "Exploring Simple Siamese Representation Learning", CVPR 2021.
https://arxiv.org/abs/2011.10566

    images --views--> x_a, x_b --encoder + projector--> z_a, z_b --predictor--> p_a, p_b
    loss = D(p_a, stopgrad(z_b)) / 2 + D(p_b, stopgrad(z_a)) / 2,   D = -cosine   in [-1, 1]

No negatives, no momentum encoder. The paper shows the stop-gradient is what prevents
collapse (without it the loss drops to -1 at once and the outputs collapse). The
projector ends with BN (SimSiam's CIFAR variant has 2 layers); the predictor is a
bottleneck MLP (hidden = output / 4).

Backbones: any CNN or ViT encoder (defaults to the CIFAR ResNet-18).
Kept after training: ``encoder`` (projector and predictor are dropped).
Optimiser: the pipeline default (SGD, lr 0.3 per 256, cosine) works on short runs
(3 epochs on 1000 CIFAR images: loss -0.02 -> -0.62, no collapse warning), while the
paper's CIFAR lr, 0.03 per 256 for 800 epochs, barely moves in a few epochs. Watch
the collapse monitor on long runs: SimSiam has no term that forbids collapse.
"""

from __future__ import annotations

import torch
from torch import nn

from ssl_models.augment import ViewPolicy
from ssl_models.encoder import Encoder
from ssl_models.heads import PredictionHead, ProjectionHead
from ssl_models.losses.neg_cosine import negative_cosine_similarity
from ssl_models.methods.base import StepOutput


class SimSiam(nn.Module):
    backbones = ("resnet18_cifar", "vit_tiny")

    def __init__(
        self,
        encoder: Encoder,
        views: ViewPolicy,
        projection_dim: int = 512,
        predictor_hidden_dim: int = 128,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.views = views
        self.projector = ProjectionHead(encoder.feature_dim, projection_dim, projection_dim, num_layers=2, last_batch_norm=True)
        self.predictor = PredictionHead(projection_dim, predictor_hidden_dim, projection_dim)

    def training_step(self, images: torch.Tensor) -> StepOutput:
        # images: (B, 3, H, W) in [0, 1]
        n = images.shape[0]
        x = torch.cat([self.views(images), self.views(images)])  # (2B, 3, S, S)
        z = self.projector(self.encoder(x))  # (2B, D)
        p = self.predictor(z)  # (2B, D)
        z_a, z_b, p_a, p_b = z[:n], z[n:], p[:n], p[n:]
        # The stop-gradient: z is a fixed target for the other view's prediction.
        loss = negative_cosine_similarity(p_a, z_b.detach()) / 2 + negative_cosine_similarity(p_b, z_a.detach()) / 2
        return StepOutput(loss, z_a.detach())

    def after_step(self, progress: float) -> None:
        """SimSiam has no momentum parts; nothing to update."""
