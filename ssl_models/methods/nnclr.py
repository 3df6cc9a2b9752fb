"""NNCLR: the positive of a view is the nearest neighbour of the other view among past embeddings.

Dwibedi, Aytar, Tompson, Sermanet, Zisserman. "With a Little Help from My Friends:
Nearest-Neighbor Contrastive Learning of Visual Representations", ICCV 2021.
https://arxiv.org/abs/2104.14548

    images --views--> x_a, x_b
    z = g(f(x)),  p = h(z)                     encoder, projector, predictor; (B, D)
    NN(z) = argmax_{q in Q} cos(z, q)           nearest neighbour in the support set Q
    loss = ( NT-Xent(NN(z_a), p_b) + NT-Xent(NN(z_b), p_a) ) / 2,   t = 0.1
    then z_a is pushed into Q (a queue of ``support_size`` past projections).

A neighbour is another image (or this one, seen at an earlier step) close in embedding
space: a positive more varied than any augmentation. The negatives are the predictions of
the other images in the batch (every rank's). The neighbour carries no gradient.

Until anything is stored (the very first step) the neighbour of z is z itself: SimCLR's
positive. Across processes the support set is filled with every rank's projections
(ssl_models/queue.py), so it is the same on every rank, as in one process.

Multi-crop (``augment.local_crops`` > 0): each local crop's prediction is an extra
positive of both global views' neighbours; the loss averages every (neighbour, prediction)
pair. Off (0) by default.

Backbones: any CNN or ViT encoder (defaults to the CIFAR ResNet-18).
Kept after training: ``encoder`` (projector, predictor and support set are dropped).
Optimiser: the pipeline default (SGD, lr 0.3 per 256, cosine); the paper uses LARS, lr
4.8 per 4096, a 98,304-row support set and a 4096-wide predictor, sized for ImageNet.

Example:
    >>> method = NNCLR(Encoder("resnet18_cifar", {"width": 8}), ViewPolicy())
    >>> out = method.training_step(torch.rand(16, 3, 32, 32))
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ssl_models.augment import ViewPolicy
from ssl_models.encoder import Encoder
from ssl_models.heads import PredictionHead, ProjectionHead
from ssl_models.losses.nnclr import nearest_neighbour, nnclr_loss
from ssl_models.methods.base import StepOutput
from ssl_models.queue import EmbeddingQueue


class NNCLR(nn.Module):
    backbones = ("resnet18_cifar", "vit_tiny")
    local_crops: ClassVar[int] = 0  # local crops as extra positives only when augment.local_crops > 0
    # Several processes: BN over the global batch, as SimCLR (the paper's SyncBN).
    sync_batchnorm = True

    def __init__(
        self,
        encoder: Encoder,
        views: ViewPolicy,
        projection_dim: int = 128,
        hidden_dim: int = 512,
        temperature: float = 0.1,
        support_size: int = 1024,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.views = views
        self.projector = ProjectionHead(encoder.feature_dim, hidden_dim, projection_dim)
        self.predictor = PredictionHead(projection_dim, hidden_dim, projection_dim)
        self.temperature = temperature
        self.support = EmbeddingQueue(support_size, projection_dim)

    def _neighbours(self, z: torch.Tensor) -> torch.Tensor:
        stored = self.support.rows()
        return nearest_neighbour(z, stored) if len(stored) else z.detach()

    def training_step(self, images: torch.Tensor) -> StepOutput:
        # images: (B, 3, H, W) in [0, 1]
        n = images.shape[0]
        z = self.projector(self.encoder(torch.cat([self.views(images), self.views(images)])))  # (2B, D), one BN pass
        p = self.predictor(z)
        z_a, z_b, p_a, p_b = z[:n], z[n:], p[:n], p[n:]
        nn_a, nn_b = self._neighbours(F.normalize(z_a, dim=1)), self._neighbours(F.normalize(z_b, dim=1))
        pairs = [(nn_a, p_b), (nn_b, p_a)]
        local = self.views.local_views(images)
        if local:
            p_local = self.predictor(self.projector(self.encoder(torch.cat(local)))).chunk(len(local))
            pairs += [(neighbours, p_l) for p_l in p_local for neighbours in (nn_a, nn_b)]
        loss = sum(nnclr_loss(neighbours, pred, self.temperature) for neighbours, pred in pairs) / len(pairs)
        self.support.push(F.normalize(z_a, dim=1))
        return StepOutput(loss, z_a.detach())
