"""DINO: a student matches a momentum teacher's centred, sharpened output, across views.

Caron, Touvron, Misra, Jegou, Mairal, Bojanowski, Joulin. "Emerging Properties in
Self-Supervised Vision Transformers", ICCV 2021. https://arxiv.org/abs/2104.14294
Read alongside facebookresearch/dino ``main_dino.py`` (``DINOLoss``, ``DINOHead``).
KoLeo from Oquab et al. "DINOv2", 2023. https://arxiv.org/abs/2304.07193

    images --views--> 2 global views x_1, x_2 (+ ``views.local_crops`` small crops)
    student: s_v = head(f(x_v))         every view; trained by backprop
    teacher: t_g = head'(f'(x_g))       the 2 global views only; EMA of the student, no grad
    loss = mean over pairs (g, v != g) of  H( softmax((t_g - c) / tau_t),  softmax(s_v / tau_s) )
           + koleo_weight * sum_g KoLeo(f(x_g))                          (DINOv2; 0 = off)
    after each step:  theta' <- m theta' + (1 - m) theta,   m: cosine from ``momentum`` to 1
    centre:           c <- 0.9 c + 0.1 mean(t)  over the global batch (all processes)

Shapes: images (B, 3, S, S); logits (B, K) per view, K = ``out_dim`` prototypes; the head
is MLP -> l2-normalised bottleneck -> weight-normalised prototypes (``heads.DINOHead``).
The loss is ``losses.dino``: no negatives; collapse is avoided by centring (no prototype
wins for every image) against sharpening (the teacher's low temperature keeps its
output from going uniform). Local crops teach the student to map a part to the
teacher's view of the whole; a ViT takes them at any size multiple of its patch (its
position embedding is interpolated, ``backbones.interpolate_position_embedding``).

Schedules over training progress p in [0, 1] (the loop's ``after_step(progress)``; the
progress is a buffer, so a resumed run continues its schedules):
    tau_t     linear from ``warmup_teacher_temp`` to ``teacher_temp`` over the first
              ``teacher_temp_warmup`` of training (the paper: 0.04 -> 0.07 over 30 epochs)
    last layer frozen (no gradient) for the first ``freeze_last_layer`` of training
              (the paper: its first epoch; 0 = never)
    momentum  cosine from ``momentum`` to 1 (the paper: 0.996 for 100+ epochs)

Defaults are set for the pipeline's budget (tens of epochs of 32 px images on a CPU, an
hour on a GPU), not the paper's 100-800 epochs; docs/methods.md says what changes for
long runs.

Example:
    >>> method = DINO(Encoder("resnet18_cifar", {"width": 8}), ViewPolicy(local_crops=2))
    >>> out = method.training_step(torch.rand(16, 3, 32, 32))   # out.loss, out.embeddings (16, 128)

Backbones: the CIFAR ResNet-18 (default) or a ViT (``vit_tiny``, ``vit_small``).
Kept after training: ``encoder`` (the student's; the head, the teacher and the centre are
dropped). The paper evaluates the teacher, which is often slightly better after long runs.
Optimiser: the pipeline default (SGD, lr 0.3 per 256, cosine) for the ResNet; the paper
uses AdamW (lr 5e-4 per 256, weight decay 0.04 -> 0.4) for ViTs.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ssl_models.augment import ViewPolicy
from ssl_models.encoder import Encoder
from ssl_models.heads import DINOHead
from ssl_models.losses.dino import dino_loss, teacher_temperature, update_center
from ssl_models.losses.koleo import koleo_loss
from ssl_models.methods.base import StepOutput
from ssl_models.momentum import cosine_schedule, frozen_copy, update_momentum


class DINO(nn.Module):
    backbones = ("resnet18_cifar", "vit_tiny", "vit_small")
    local_crops: ClassVar[int] = 0
    # Several processes: BN over the global batch, as DINO converts ResNets to SyncBN.
    sync_batchnorm = True

    def __init__(
        self,
        encoder: Encoder,
        views: ViewPolicy,
        out_dim: int = 1024,
        hidden_dim: int = 512,
        bottleneck_dim: int = 128,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.04,
        teacher_temp_warmup: float = 0.0,
        center_momentum: float = 0.9,
        momentum: float = 0.99,
        freeze_last_layer: float = 0.0,
        koleo_weight: float = 0.0,
        head_batch_norm: bool | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.views = views
        # BatchNorm in the head on CNNs (None: when the backbone is not a ViT), as DINO's ResNet heads.
        batch_norm = not hasattr(encoder.backbone, "blocks") if head_batch_norm is None else head_batch_norm
        self.head = DINOHead(encoder.feature_dim, hidden_dim, bottleneck_dim, out_dim, batch_norm)
        self.teacher_encoder = frozen_copy(encoder)
        self.teacher_head = frozen_copy(self.head)
        self.student_temp, self.teacher_temp, self.warmup_teacher_temp = student_temp, teacher_temp, warmup_teacher_temp
        self.teacher_temp_warmup, self.center_momentum = teacher_temp_warmup, center_momentum
        self.base_momentum, self.freeze_last_layer, self.koleo_weight = momentum, freeze_last_layer, koleo_weight
        # A frozen last layer gets no gradient: DDP must be told some parameters may be unused.
        self.find_unused_parameters = freeze_last_layer > 0
        self.register_buffer("center", torch.zeros(1, out_dim))  # c, (1, K)
        self.register_buffer("progress", torch.zeros(()))  # p in [0, 1], for the schedules

    def training_step(self, images: torch.Tensor) -> StepOutput:
        # images: (B, 3, H, W) in [0, 1]
        n = images.shape[0]
        global_views = torch.cat([self.views(images), self.views(images)])  # (2B, 3, S, S)
        local_views = self.views.local_views(images)  # [] or V - 2 tensors (B, 3, s, s)
        progress = float(self.progress)
        frozen = progress < self.freeze_last_layer
        with torch.no_grad():  # the teacher: global views only, no gradient
            teacher = self.teacher_head(self.teacher_encoder(global_views))  # (2B, K)
        # The student: one pass per resolution (the global views together, then the local crops).
        features = self.encoder(global_views)  # (2B, D)
        z = self.head.project(features)  # (2B, bottleneck)
        student = [self.head.prototypes(z, frozen)]
        if local_views:
            student.append(self.head(self.encoder(torch.cat(local_views)), frozen))
        tau_t = teacher_temperature(progress, self.warmup_teacher_temp, self.teacher_temp, self.teacher_temp_warmup)
        loss = dino_loss(torch.cat(student).split(n), teacher.split(n), self.center, self.student_temp, tau_t)
        if self.koleo_weight > 0:  # DINOv2: on the backbone features of each global view
            loss = loss + self.koleo_weight * sum(koleo_loss(f) for f in features.split(n))
        self.center.copy_(update_center(self.center, teacher, self.center_momentum))  # after the loss: it used the old c
        return StepOutput(loss, z[:n].detach())

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """EMA of the student into the teacher (momentum rising to 1 by a cosine); the schedules' clock."""
        self.progress.fill_(progress)
        m = cosine_schedule(self.base_momentum, progress)
        update_momentum([self.encoder, self.head], [self.teacher_encoder, self.teacher_head], m)  # theta' <- m theta' + (1 - m) theta
