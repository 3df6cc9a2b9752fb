"""MoCo v2: match a query against its key among a large queue of old keys.

He, Fan, Wu, Xie, Girshick. "Momentum Contrast for Unsupervised Visual Representation
Learning", CVPR 2020. https://arxiv.org/abs/1911.05722
Chen, Fan, Girshick, He. "Improved Baselines with Momentum Contrastive Learning"
(MoCo v2: MLP head, blur, t = 0.2), 2020. https://arxiv.org/abs/2003.04297

    images --views--> x_a, x_b
    q = g(f(x))       query: encoder + MLP projector, trained by backprop
    k = g'(f'(x))     key: a momentum copy, theta' <- m theta' + (1 - m) theta, no grad
    loss = ( InfoNCE(q_a, k_b, queue) + InfoNCE(q_b, k_a, queue) ) / 2,   t = 0.2
    then the new keys are pushed into the queue (K = 1024), the oldest dropped.

The queue decouples the number of negatives from the batch size; the momentum
encoder keeps the keys in the queue consistent with each other although they were
computed at different steps. The loss is symmetrised (as MoCo v3), which uses both
views of a batch as queries.

The queue starts empty and fills up; only filled slots are used as negatives, and on
the very first step, with nothing queued yet, the other keys of the batch are the
negatives. K larger than the dataset works, but then the queue holds older keys of
the very image being queried, which act as false negatives; K well below the
dataset size is better. The default K = 1024 is a fifth of the bundled 5,000-image
sample; raise it with the pool (MoCo's CIFAR runs used 4096 for 50k images).

Shuffling BN: with one device, a batch's keys share BatchNorm statistics that the
queued keys never had, and the query can find its key by that leak instead of by
content (the paper's section 3.3). As the paper does across GPUs, the batch is split
into ``bn_groups`` groups for BN, and the keys are shuffled before the split, so a
query and its key never share statistics.

Across processes (torch.distributed), as the paper: ``bn_groups`` is the number of BN
groups per process (so 2 processes with 2 groups each compute what one process with
``bn_groups=4`` computes on their joint batch). For the keys, the key images of all
ranks are gathered, shuffled by one permutation drawn on rank 0, and each rank
encodes its slice (in its groups); the keys are then gathered back and unshuffled.
The in-batch negatives of the first step are every rank's keys, and the queue
enqueues every rank's keys, so it stays the same on every rank. No SyncBN: BN
statistics per process are what shuffle-BN is about.

Momentum: constant ``momentum``, as MoCo v2 (0.99 suits short runs; the paper's
0.999 suits long ones), or with ``cosine_momentum`` increased from it to 1 over
training (MoCo v3/BYOL). The cosine is off by default: over a run of a few hundred
steps it freezes the key encoder close to its random initialisation.

Reading the loss: it rises while the queue fills (more negatives, a harder
(K+1)-way problem), so compare epochs only once the queue is full.

Backbones: any CNN or ViT encoder (defaults to the CIFAR ResNet-18).
Kept after training: ``encoder`` (the query encoder; the key encoder, projectors and
queue are dropped). Optimiser: the pipeline default (SGD, lr 0.3 per 256, cosine) works.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ssl_models.augment import ViewPolicy
from ssl_models.distributed import broadcast_from_main, gather, world
from ssl_models.encoder import Encoder
from ssl_models.losses.info_nce import info_nce_loss
from ssl_models.methods.base import StepOutput
from ssl_models.momentum import cosine_schedule, update_momentum


class MoCo(nn.Module):
    backbones = ("resnet18_cifar", "vit_tiny")
    # Several processes: per-process BN is the point of shuffle-BN (see above), so no SyncBN.
    sync_batchnorm = False

    def __init__(
        self,
        encoder: Encoder,
        views: ViewPolicy,
        projection_dim: int = 128,
        hidden_dim: int = 512,
        temperature: float = 0.2,
        queue_size: int = 1024,
        momentum: float = 0.99,
        cosine_momentum: bool = False,
        bn_groups: int = 2,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.views = views
        # MoCo v2's head: fc -> ReLU -> fc, no BN.
        self.projector = nn.Sequential(
            nn.Linear(encoder.feature_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, projection_dim)
        )
        # The key network starts as an exact copy and is never touched by the optimiser.
        self.key_encoder = copy.deepcopy(encoder)
        self.key_projector = copy.deepcopy(self.projector)
        for p in [*self.key_encoder.parameters(), *self.key_projector.parameters()]:
            p.requires_grad_(False)
        self.temperature, self.base_momentum, self.cosine_momentum = temperature, momentum, cosine_momentum
        self.bn_groups = bn_groups
        # Buffers, so they move with .to() and are saved in checkpoints.
        self.register_buffer("queue", torch.zeros(queue_size, projection_dim))  # (K, D), normalised keys
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))  # next slot to write
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))  # valid slots

    def _query(self, x: torch.Tensor) -> torch.Tensor:
        # BN per group, so BN statistics are per group, as on separate GPUs.
        groups = min(self.bn_groups, x.shape[0] // 2) or 1
        return torch.cat([self.projector(self.encoder(c)) for c in x.chunk(groups)])

    @torch.no_grad()
    def _key(self, x: torch.Tensor) -> torch.Tensor:
        # x: (2n, 3, S, S), this rank's [views a; views b]
        rank, world_size = world()
        rows = x.shape[0]
        groups = min(self.bn_groups, rows // 2) or 1
        # The global batch in the order one process would hold it: [all views a; all views b].
        x_all = _view_major(gather(x), world_size)  # (2N, 3, S, S)
        order = broadcast_from_main(torch.randperm(x_all.shape[0], device=x.device))  # shuffle BN: another grouping
        mine = x_all[order][rank * rows : (rank + 1) * rows]  # this rank encodes its slice of the shuffled batch
        k = torch.cat([self.key_projector(self.key_encoder(c)) for c in mine.chunk(groups)])
        k = gather(k)[order.argsort()]  # unshuffle: row i is image i again, view-major
        return F.normalize(_rank_major(k, world_size)[rank], dim=1)  # (2n, D): this rank's keys

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        # A ring buffer: write at the pointer, wrapping around, overwriting the oldest.
        size = self.queue.shape[0]
        keys = keys[-size:]  # a batch larger than the queue keeps its last K keys
        slots = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queue[slots] = keys
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % size)
        self.queue_filled.copy_((self.queue_filled + keys.shape[0]).clamp(max=size))

    def training_step(self, images: torch.Tensor) -> StepOutput:
        # images: (B, 3, H, W) in [0, 1]
        n = images.shape[0]
        x = torch.cat([self.views(images), self.views(images)])  # (2B, 3, S, S)
        q = self._query(x)  # (2B, D)
        k = self._key(x)  # (2B, D), detached
        q_a, q_b, k_a, k_b = q[:n], q[n:], k[:n], k[n:]
        filled = int(self.queue_filled)
        # The queue's filled slots are contiguous from 0 until it wraps, then all are filled.
        negatives = self.queue[:filled].clone() if filled else None  # clone: _enqueue edits in place
        loss = (info_nce_loss(q_a, k_b, negatives, self.temperature) + info_nce_loss(q_b, k_a, negatives, self.temperature)) / 2
        self._enqueue(gather(k_b))  # every rank's; one key per image per step keeps the queue's images distinct
        return StepOutput(loss, q_a.detach())

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """EMA of the query network into the key network, after the optimiser step."""
        m = cosine_schedule(self.base_momentum, progress) if self.cosine_momentum else self.base_momentum
        update_momentum([self.encoder, self.projector], [self.key_encoder, self.key_projector], m)  # theta' <- m theta' + (1 - m) theta


def _view_major(x: torch.Tensor, world_size: int) -> torch.Tensor:
    """Gathered [a_0; b_0; a_1; b_1; ...] (rank-major) -> [a_0; a_1; ...; b_0; b_1; ...]."""
    return x.unflatten(0, (world_size, 2, -1)).transpose(0, 1).flatten(0, 2)


def _rank_major(x: torch.Tensor, world_size: int) -> torch.Tensor:
    """[a_0; a_1; ...; b_0; b_1; ...] -> (world_size, 2n, ...): row r is [a_r; b_r]."""
    return x.unflatten(0, (2, world_size, -1)).transpose(0, 1).flatten(1, 2)
