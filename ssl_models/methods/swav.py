"""SwAV: cluster the views online and predict one view's cluster from another's.

Caron, Misra, Mairal, Goyal, Bojanowski, Joulin. "Unsupervised Learning of Visual Features
by Contrasting Cluster Assignments", NeurIPS 2020. https://arxiv.org/abs/2006.09882

    images --views--> 2 global views x_1, x_2 (+ local_crops small crops, multi-crop)
    z_v = normalise(g(f(x_v)))                 encoder + projector, (B, D) per view
    s_v = z_v @ C.T                            scores against K unit prototypes C, (B, K)
    q_i = sinkhorn(s_i)                        codes of the global views: equal cluster sizes
    loss = mean_{i in global, v != i} CE(q_i, softmax(s_v / t))    swapped prediction

The codes replace the pairwise comparisons of contrastive methods: an image is pulled
towards the prototype its other view was assigned to, and Sinkhorn's equal-size constraint
rules out the collapse of every image into one cluster (ssl_models/sinkhorn.py).

Two stabilisers from the paper, both as shares of the run (the loop reports progress):
- The prototypes are frozen for the first ``freeze_prototypes`` of training (the paper:
  its first epoch), while the random codes would otherwise drag them about.
- A queue of the global views' past embeddings joins Sinkhorn from ``queue_start`` on:
  with batches smaller than a few times K, equal cluster sizes within one batch are a
  strong constraint; the queued rows soften it. The queue fills from the first step (with
  every rank's rows), so it is full when it is switched on. Only the batch's codes are used.

Across processes (torch.distributed): Sinkhorn's sums are all-reduced, and the queue (the
same on every rank) is split among the ranks for Sinkhorn (rank r takes rows r, r + W, ...),
so every queued row counts once, as in one process with the whole batch.

Multi-crop: the local crops (``views.local_views``, ``augment.local_crops``) only predict;
codes come from the two global views, as in the paper. Default 0 local crops: at 32 px a
16 px crop costs about a quarter of a view, so 4 of them double a step, and at the
pipeline's budget of a few epochs that has not been shown to pay (docs/methods.md); the
paper's 2x224 + 6x96 is the recipe for long runs on a GPU (``augment.local_crops=6``).

Backbones: the CIFAR ResNet-18 (local crops have another size than the global views; the
ViT's fixed position grid does not take them).
Kept after training: ``encoder`` (projector, prototypes and queue are dropped).
A BatchNorm ends the projector (``projector_batch_norm``; not in the paper). Without it, at
a few epochs, a young encoder's embeddings all point nearly one way: every image scores
alike against the prototypes, Sinkhorn's codes come out nearly uniform, the loss stays at
ln K and the encoder learns nothing (3 epochs, 1 thread: kNN 0.231 / probe 0.241, below
random init's 0.265 / 0.267). Normalising each dimension over the batch spreads the
embeddings over the sphere before they meet the prototypes: the loss falls below ln K and
seeds 0 / 1 reach probe 0.281 / 0.313 (kNN 0.249 / 0.252).

Optimiser: the pipeline default (SGD, lr 0.3 per 256, cosine); the paper uses LARS, lr 4.8
per 4096. Defaults for short runs (K 100, queue 1024 from a quarter of the run): see
docs/methods.md for what changes for long ones.

Example:
    >>> method = SwAV(Encoder("resnet18_cifar", {"width": 8}), ViewPolicy(local_crops=2))
    >>> out = method.training_step(torch.rand(16, 3, 32, 32))
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ssl_models.augment import ViewPolicy
from ssl_models.distributed import world
from ssl_models.encoder import Encoder
from ssl_models.heads import ProjectionHead, Prototypes
from ssl_models.losses.swav import swav_loss
from ssl_models.methods.base import StepOutput
from ssl_models.queue import EmbeddingQueue
from ssl_models.sinkhorn import sinkhorn


class SwAV(nn.Module):
    backbones = ("resnet18_cifar",)
    local_crops: ClassVar[int] = 0  # the default number; augment.local_crops sets it per run
    # Several processes: BN over the global batch, as the paper's SyncBN.
    sync_batchnorm = True

    def __init__(
        self,
        encoder: Encoder,
        views: ViewPolicy,
        projection_dim: int = 128,
        hidden_dim: int = 512,
        prototypes: int = 100,
        temperature: float = 0.1,
        sinkhorn_eps: float = 0.05,
        sinkhorn_iterations: int = 3,
        queue_size: int = 1024,
        queue_start: float = 0.25,
        freeze_prototypes: float = 0.05,
        projector_batch_norm: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.views = views
        self.projector = ProjectionHead(encoder.feature_dim, hidden_dim, projection_dim, last_batch_norm=projector_batch_norm)
        self.prototypes = Prototypes(projection_dim, prototypes)
        self.temperature, self.sinkhorn_eps, self.sinkhorn_iterations = temperature, sinkhorn_eps, sinkhorn_iterations
        self.queue_start, self.freeze_prototypes = queue_start, freeze_prototypes
        # One row per image: the embeddings of both global views, (2, D).
        self.queue = EmbeddingQueue(queue_size, 2, projection_dim) if queue_size else None
        self.register_buffer("progress", torch.zeros(()))  # share of the run done, from after_step

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projector(self.encoder(x)), dim=1)

    @torch.no_grad()
    def _codes(self, scores: torch.Tensor, view: int) -> torch.Tensor:
        """Sinkhorn codes of this rank's rows of global view ``view``, with this rank's share
        of the queue once it is on."""
        n = scores.shape[0]
        if self.queue is not None and float(self.progress) >= self.queue_start and int(self.queue.filled):
            rank, world_size = world()
            queued = self.queue.rows()[rank::world_size, view]  # (L / W, D): each queued row on one rank
            scores = torch.cat([self.prototypes(queued), scores])
        return sinkhorn(scores, self.sinkhorn_eps, self.sinkhorn_iterations)[-n:]

    def training_step(self, images: torch.Tensor) -> StepOutput:
        # images: (B, 3, H, W) in [0, 1]
        n = images.shape[0]
        z = self._embed(torch.cat([self.views(images), self.views(images)]))  # (2B, D): global views in one pass
        z_views = [z[:n], z[n:]]
        local = self.views.local_views(images)  # local_crops x (B, 3, s, s)
        if local:
            z_views += list(self._embed(torch.cat(local)).chunk(len(local)))  # one pass for every local crop
        frozen = float(self.progress) < self.freeze_prototypes
        scores = [self.prototypes(z_v, frozen=frozen) for z_v in z_views]  # (B, K) per view
        codes = [self._codes(scores[i].detach(), i) for i in range(2)]
        loss = swav_loss(scores, codes, self.temperature)
        if self.queue is not None:
            self.queue.push(torch.stack([z_views[0], z_views[1]], dim=1).detach())  # (B, 2, D)
        return StepOutput(loss, z_views[0].detach())

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """Record the progress: it switches the queue on and unfreezes the prototypes."""
        self.progress.fill_(progress)
