"""SimSiam: a Siamese network with a predictor and a stop-gradient, nothing else.

Chen, He. "Exploring Simple Siamese Representation Learning", CVPR 2021.
https://arxiv.org/abs/2011.10566

    images --views--> x_a, x_b --encoder + projector--> z_a, z_b --predictor--> p_a, p_b
    loss = D(p_a, stopgrad(z_b)) / 2 + D(p_b, stopgrad(z_a)) / 2,   D = -cosine   in [-1, 1]

No negatives, no momentum encoder. The paper shows the stop-gradient is what prevents
collapse (without it the loss drops to -1 at once and the outputs collapse). The
projector ends with BN (SimSiam's CIFAR variant has 2 layers); the predictor is a
bottleneck MLP (hidden = output / 4). The paper's CIFAR widths (2048, bottleneck
512) are for 800 epochs at batch 512; on short CPU runs wide heads collapsed partly: on
the bundled sample (width-8 ResNet, batch 64, 3 epochs of 5,000 images) a 512-wide
projector ended at embedding std 0.024-0.028 against a healthy 1/sqrt(512) = 0.044 and
kNN 0.200-0.227 under the random-init 0.235, at lr 0.03, 0.1 and 0.3 per 256 alike.
128 wide with a bottleneck of 32 keeps the std healthy (0.06-0.08 of 0.088). Even so,
at a few hundred steps SimSiam does not beat a random-init encoder (3 epochs: kNN 0.231
/ probe 0.219 vs 0.235 / 0.271; 5 epochs in the pipeline: 0.247 / 0.284 vs 0.246 /
0.296); it needs longer runs than a CPU test affords (docs/methods.md).

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
        projection_dim: int = 128,
        predictor_hidden_dim: int = 32,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.views = views
        self.projector = ProjectionHead(encoder.feature_dim, projection_dim, projection_dim, num_layers=2, last_batch_norm=True)
        self.predictor = PredictionHead(projection_dim, predictor_hidden_dim, projection_dim)

    def training_step(self, images: torch.Tensor) -> StepOutput:
        # images: (B, 3, H, W) in [0, 1]
        x_a, x_b = self.views(images), self.views(images)  # (B, 3, S, S) each
        # One pass per view, as the paper's code: BatchNorm then standardises each view's
        # batch on its own, which is part of what keeps the outputs from collapsing.
        z_a, z_b = self.projector(self.encoder(x_a)), self.projector(self.encoder(x_b))  # (B, D)
        p_a, p_b = self.predictor(z_a), self.predictor(z_b)  # (B, D)
        # The stop-gradient: z is a fixed target for the other view's prediction.
        loss = negative_cosine_similarity(p_a, z_b.detach()) / 2 + negative_cosine_similarity(p_b, z_a.detach()) / 2
        return StepOutput(loss, z_a.detach())

    def after_step(self, progress: float) -> None:
        """SimSiam has no momentum parts; nothing to update."""
