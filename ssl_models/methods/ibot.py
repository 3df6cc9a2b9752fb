"""iBOT: DINO on the [CLS] output plus masked-patch self-distillation on the ViT's patches.

Zhou, Wei, Wang, Shen, Xie, Yuille, Kong. "iBOT: Image BERT Pre-Training with Online
Tokenizer", ICLR 2022. https://arxiv.org/abs/2111.07832 (read alongside bytedance/ibot
``main_ibot.py``, ``iBOTLoss``). KoLeo from DINOv2 (Oquab et al., 2023), as in DINO here.

    images --views--> 2 global views x_1, x_2 (+ ``views.local_crops`` small crops)
    masks:   m_g = block masks (``masking.block_masks``): half the global views get 10-50%
             of their patches hidden, in rectangles
    teacher: tokens of the whole x_g -> [CLS] logits t_g, patch logits t_gl      (EMA, no grad)
    student: tokens of x_g with the hidden patches' embeddings replaced by a learned mask
             token -> [CLS] logits s_g and patch logits s_gl; local crops: [CLS] logits only
    loss = lambda_cls   * DINO(s_v, t_g, c)                        (``losses.dino``: v != g)
         + lambda_patch * mean_g mean_b mean_{l hidden} H(softmax((t_gl - c') / tau_t'),
                                                          softmax(s_gl / tau_s))  (``losses.ibot``)
         + koleo_weight * sum_g KoLeo(f(x_g))                      (0 = off)

The teacher is the online tokenizer: its patch outputs are the targets the student
predicts for the patches it cannot see, with a centre c' of their own. One head (iBOT's
``shared_head``) maps both the [CLS] output and the patch tokens to the K prototypes;
it runs on the hidden patches only, the only ones the patch loss reads.

"[CLS]" is the ViT's pooled output, ``pool_tokens``: the mean of the patch tokens with
``pool="mean"`` (the pipeline's ViTs), the class token with ``pool="cls"``, so the feature
trained is the one the pipeline evaluates. The patch centre is updated from the hidden
patches the head runs on (iBOT: all patches), a random subset with the same mean.

Shapes: images (B, 3, S, S); tokens (2B, 1 + L, D); masks (2B, L) bool; [CLS] logits
(B, K) per view; patch logits (M, K) for the M hidden patches.

Schedules over training progress (``after_step``; a buffer, so resumes continue them):
the teacher temperatures (DINO's warm-up, for [CLS] and patches alike), the frozen last
layer and the cosine momentum, as in ``methods/dino.py``.

Example:
    >>> method = IBOT(Encoder("vit_tiny", {"width": 8}), ViewPolicy())
    >>> out = method.training_step(torch.rand(16, 3, 32, 32))

Backbones: ViT only (``vit_tiny`` default, ``vit_small``): masking needs patch tokens.
Kept after training: ``encoder`` (the student's ViT; the head, mask token, teacher and
centres are dropped).
Optimiser: AdamW (see ``recommended``), as the paper (lr 5e-4 per 256, weight decay
0.04 -> 0.4); short runs take a larger lr, as MAE's.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ssl_models.augment import ViewPolicy
from ssl_models.encoder import Encoder
from ssl_models.heads import DINOHead
from ssl_models.losses.dino import dino_loss, teacher_temperature, update_center
from ssl_models.losses.ibot import ibot_patch_loss
from ssl_models.losses.koleo import koleo_loss
from ssl_models.masking import block_masks
from ssl_models.methods.base import StepOutput
from ssl_models.momentum import cosine_schedule, frozen_copy, update_momentum


class IBOT(nn.Module):
    backbones = ("vit_tiny", "vit_small")
    local_crops: ClassVar[int] = 0
    recommended: ClassVar[dict[str, Any]] = {"optimizer": "adamw", "lr": 1.5e-3, "weight_decay": 0.04}

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
        teacher_patch_temp: float = 0.04,
        teacher_temp_warmup: float = 0.0,
        center_momentum: float = 0.9,
        momentum: float = 0.99,
        freeze_last_layer: float = 0.0,
        mask_ratio: tuple[float, float] = (0.1, 0.5),
        mask_prob: float = 0.5,
        lambda_cls: float = 1.0,
        lambda_patch: float = 1.0,
        koleo_weight: float = 0.0,
    ) -> None:
        super().__init__()
        vit = encoder.backbone
        if not hasattr(vit, "forward_tokens"):
            raise ValueError(f"iBOT needs a ViT backbone ({self.backbones}), got {type(vit).__name__}")
        self.encoder = encoder
        self.views = views
        self.head = DINOHead(encoder.feature_dim, hidden_dim, bottleneck_dim, out_dim)  # no BatchNorm, as on DINO's ViTs
        self.mask_token = nn.Parameter(torch.zeros(1, 1, encoder.feature_dim))  # the student's stand-in for a hidden patch
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.teacher_encoder = frozen_copy(encoder)
        self.teacher_head = frozen_copy(self.head)
        self.student_temp, self.teacher_temp, self.warmup_teacher_temp = student_temp, teacher_temp, warmup_teacher_temp
        self.teacher_patch_temp, self.teacher_temp_warmup, self.center_momentum = teacher_patch_temp, teacher_temp_warmup, center_momentum
        self.base_momentum, self.freeze_last_layer = momentum, freeze_last_layer
        self.mask_ratio, self.mask_prob = tuple(mask_ratio), mask_prob
        self.lambda_cls, self.lambda_patch, self.koleo_weight = lambda_cls, lambda_patch, koleo_weight
        self.find_unused_parameters = freeze_last_layer > 0  # a frozen last layer gets no gradient
        self.register_buffer("center", torch.zeros(1, out_dim))  # c, for the [CLS] outputs
        self.register_buffer("patch_center", torch.zeros(1, out_dim))  # c', for the patch outputs
        self.register_buffer("progress", torch.zeros(()))

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.encoder.mean) / self.encoder.std  # the Encoder's own input normalisation

    def training_step(self, images: torch.Tensor) -> StepOutput:
        # images: (B, 3, H, W) in [0, 1]
        n = images.shape[0]
        vit, teacher_vit = self.encoder.backbone, self.teacher_encoder.backbone
        x = self._normalise(torch.cat([self.views(images), self.views(images)]))  # (2B, 3, S, S)
        local_views = self.views.local_views(images)
        grid = x.shape[-1] // vit.patch_size
        masks = block_masks(2 * n, grid, self.mask_ratio, self.mask_prob).to(x.device)  # (2B, L), True = hidden
        progress = float(self.progress)
        frozen = progress < self.freeze_last_layer

        with torch.no_grad():  # the teacher sees the whole global views
            t_tokens = teacher_vit.forward_tokens(x)  # (2B, 1 + L, D)
            t_cls = self.teacher_head(teacher_vit.pool_tokens(t_tokens))  # (2B, K)
            t_patch = self.teacher_head(t_tokens[:, 1:][masks])  # (M, K), hidden patches only

        s_tokens = vit.forward_tokens(x, masks, self.mask_token)  # (2B, 1 + L, D)
        features = vit.pool_tokens(s_tokens)  # (2B, D)
        z = self.head.project(features)
        s_cls = [self.head.prototypes(z, frozen)]
        if local_views:
            s_cls.append(self.head(self.encoder(torch.cat(local_views)), frozen))
        s_patch = self.head(s_tokens[:, 1:][masks], frozen)  # (M, K)

        tau_t = teacher_temperature(progress, self.warmup_teacher_temp, self.teacher_temp, self.teacher_temp_warmup)
        tau_p = teacher_temperature(progress, self.warmup_teacher_temp, self.teacher_patch_temp, self.teacher_temp_warmup)
        loss = self.lambda_cls * dino_loss(torch.cat(s_cls).split(n), t_cls.split(n), self.center, self.student_temp, tau_t)
        loss = loss + self.lambda_patch * ibot_patch_loss(s_patch, t_patch, masks, self.patch_center, self.student_temp, tau_p)
        if self.koleo_weight > 0:
            loss = loss + self.koleo_weight * sum(koleo_loss(f) for f in features.split(n))
        self.center.copy_(update_center(self.center, t_cls, self.center_momentum))
        self.patch_center.copy_(update_center(self.patch_center, t_patch, self.center_momentum))
        return StepOutput(loss, z[:n].detach())

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """EMA of the student into the teacher (cosine momentum to 1); the schedules' clock."""
        self.progress.fill_(progress)
        m = cosine_schedule(self.base_momentum, progress)
        update_momentum([self.encoder, self.head], [self.teacher_encoder, self.teacher_head], m)
