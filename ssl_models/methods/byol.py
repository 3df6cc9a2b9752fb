"""BYOL: an online network predicts a slowly moving target network's projection.

Grill et al. "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning",
NeurIPS 2020. https://arxiv.org/abs/2006.07733

    images --views--> x_a, x_b
    online:  z = g(f(x)),  p = q(z)       encoder, projector, predictor; trained
    target:  z' = g'(f'(x))               EMA copy of encoder + projector; no gradient
    loss = ( |p_a~ - z'_b~|^2 + |p_b~ - z'_a~|^2 ) / 2  with ~ l2-normalisation,
         = ( (2 - 2 cos(p_a, z'_b)) + (2 - 2 cos(p_b, z'_a)) ) / 2     in [0, 4]
    after each step:  xi <- tau xi + (1 - tau) theta,
                      tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2,   paper: tau_base = 0.996

There are no negatives. Collapse is avoided by the asymmetry: only the online branch
has a predictor and gets gradients, and the target moves slowly. The paper sums the two
directions; here they are averaged so the scale matches one direction.

The recipe for short runs (the defaults): the predictor learns at 10x the lr
(``predictor_lr_scale``, as SimSiam's), heads 128 wide (``hidden_dim``; the paper's 4096
serve a 2048-d ResNet-50 feature) and a target that follows closely (``tau_base`` 0.9: it
averages about the last 10 steps at the start, rising to 1 by the cosine). Measured with
benchmarks/learn_budget.py (the learn test's data and scoring: width-8 ResNet (64-d features),
batch 64, the 5,000 bundled images, no warm-up, 1 thread; random init kNN 0.265 / probe 0.267),
kNN / probe:
    recipe                                   epochs  seed 0          seed 1
    first: tau 0.99, predictor x1, heads 512    4    0.193 / 0.259   -
    tau 0.996, predictor x10, heads 512         4    0.224 / 0.269   0.226 / 0.262
                                               10    0.239 / 0.285   0.259 / 0.275
    tau 0.9, predictor x10, heads 512           6    0.254 / 0.283   0.282 / 0.294
    tau 0.9, predictor x10, heads 128 (default) 4    0.269 / 0.297   0.280 / 0.324  (of a 6-epoch run)
                                                6    0.271 / 0.302   0.284 / 0.330
    benchmarks/byol_reference.py (written       4    0.241 / 0.291   -
      from the paper: tau 0.996, summed loss,
      crop 0.08-1, solarize on one view)
Why BYOL did not learn here at first: not a bug (the independent reference did no better at the
same budget) but a recipe for 300 epochs run for 4. With tau_base 0.996 the target barely
leaves its random init in 300 steps (tau^300 = 0.3: a third of the target is still the start),
so the online network chases a nearly random projection; a target that follows within ~10
steps gives it its own, improving targets, as SimSiam's stop-gradient does (tau = 0), while the
cosine still slows the target to a halt by the end. Heads 8x wider than the 64-d feature
(512) learned more slowly than 2x (128). With the predictor at the base lr the projections fell
into dimensional collapse (effective rank 26 -> 10 in 2 epochs; Tian, Chen and Ganguli, ICML
2021, arXiv:2102.06810: the predictor's relative lr decides it). kNN dips below random init in
the first epochs for every recipe: the colour jitter and grayscale views make colour useless
to the task, and colour is much of what a random encoder's kNN uses on CIFAR-10; the shape
features come later. For long runs (hundreds of epochs, a full-width encoder) use the paper's:
``--set pretrain.method_params.tau_base=0.996 --set pretrain.method_params.hidden_dim=4096``.

Multi-crop (``augment.local_crops`` > 0, off by default): the online network's prediction
of each local crop must also match both global views' targets (the targets see only the
global views); the loss averages every (prediction, target) pair.

Backbones: any CNN or ViT encoder (defaults to the CIFAR ResNet-18).
Kept after training: ``encoder`` (the online encoder; projector, predictor and the
target network are dropped). Optimiser: the pipeline default (SGD, lr 0.3 per 256,
cosine) is used; the paper uses LARS, lr 0.2 per 256, wd 1.5e-6.
"""

from __future__ import annotations

import copy
from typing import ClassVar

import torch
from torch import nn

from ssl_models.augment import ViewPolicy
from ssl_models.encoder import Encoder
from ssl_models.heads import PredictionHead, ProjectionHead
from ssl_models.losses.neg_cosine import byol_loss
from ssl_models.methods.base import StepOutput
from ssl_models.momentum import cosine_schedule, update_momentum


class BYOL(nn.Module):
    backbones = ("resnet18_cifar", "vit_tiny")
    local_crops: ClassVar[int] = 0  # local crops as extra positives only when augment.local_crops > 0
    # Several processes: BN statistics of the global batch, as the paper (BYOL relies on BN's batch statistics).
    sync_batchnorm = True

    def __init__(
        self,
        encoder: Encoder,
        views: ViewPolicy,
        projection_dim: int = 128,
        hidden_dim: int = 128,
        tau_base: float = 0.9,
        predictor_lr_scale: float = 10.0,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.views = views
        self.projector = ProjectionHead(encoder.feature_dim, hidden_dim, projection_dim)
        self.predictor = PredictionHead(projection_dim, hidden_dim, projection_dim)
        # The target starts as an exact copy and is never touched by the optimiser.
        self.target_encoder = copy.deepcopy(encoder)
        self.target_projector = copy.deepcopy(self.projector)
        for p in [*self.target_encoder.parameters(), *self.target_projector.parameters()]:
            p.requires_grad_(False)
        self.tau_base = tau_base
        self.lr_scales = {"predictor": predictor_lr_scale}  # read by the training loop's optimiser

    def training_step(self, images: torch.Tensor) -> StepOutput:
        # images: (B, 3, H, W) in [0, 1]
        x_a, x_b = self.views(images), self.views(images)  # (B, 3, S, S) each
        # One pass per view, as the paper's code: BatchNorm standardises each view's batch
        # on its own, which is part of what keeps the outputs from collapsing.
        z_a, z_b = self.projector(self.encoder(x_a)), self.projector(self.encoder(x_b))  # (B, D)
        p_a, p_b = self.predictor(z_a), self.predictor(z_b)  # (B, D)
        with torch.no_grad():  # the stop-gradient on the target branch
            t_a = self.target_projector(self.target_encoder(x_a))  # (B, D)
            t_b = self.target_projector(self.target_encoder(x_b))
        loss = (byol_loss(p_a, t_b) + byol_loss(p_b, t_a)) / 2
        local = self.views.local_views(images)
        if local:  # each local crop's prediction against both global targets
            p_local = [self.predictor(self.projector(self.encoder(x))) for x in local]
            pairs = [byol_loss(p_l, t) for p_l in p_local for t in (t_a, t_b)]
            loss = (2 * loss + sum(pairs)) / (2 + len(pairs))
        return StepOutput(loss, z_a.detach())

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """EMA of the online network into the target, tau rising to 1 by a cosine."""
        tau = cosine_schedule(self.tau_base, progress)
        update_momentum([self.encoder, self.projector], [self.target_encoder, self.target_projector], tau)  # xi <- tau xi + (1 - tau) theta
