"""An independent BYOL, written from the paper, to check ssl_models/methods/byol.py against.

Grill et al. "Bootstrap Your Own Latent", NeurIPS 2020, arXiv:2006.07733, section 3 and
appendix B/J. Written from the paper, not from byol.py: its own heads, EMA, loss and view
recipe; only the batched view primitives (crop, jitter, grayscale) and the training loop
(``ssl_models.training.pretrain``, SGD with wd off for biases and norms, cosine lr) are the
project's, so that a difference in the scores is the method's.

    y = f(t(x)), z = g(y), p = q(z)             online (theta); q only here
    z' = g_xi(f_xi(t'(x)))                       target (xi), no gradient
    L = |p/|p| - z'/|z'||^2 + the same with t and t' swapped          (eq. 2, summed)
    xi <- tau xi + (1 - tau) theta,  tau = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2

Paper's choices kept: MLP heads Linear -> BN -> ReLU -> Linear (hidden 4096, out 256 at
ResNet-50 scale; here ``hidden`` / ``out``), the predictor the same MLP, tau_base 0.996,
asymmetric views (t: blur always, no solarize; t': blur 0.1, solarize 0.2; blur dropped at
32 px, as CIFAR ports do), colour jitter (0.4, 0.4, 0.2, 0.1) with p 0.8, grayscale 0.2,
crop scale 0.08-1. The paper's LARS (lr 0.2 per 256, wd 1.5e-6) is not here: the project's
loop has SGD and AdamW; pass ``--settings`` to learn_budget.py for lr and weight decay.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from ssl_models.augment import color_jitter, random_grayscale, random_resized_crop
from ssl_models.encoder import Encoder
from ssl_models.methods.base import StepOutput


def mlp(dim_in: int, hidden: int, dim_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, dim_out))


def view(images: torch.Tensor, solarize_p: float, crop_min: float) -> torch.Tensor:
    """The paper's t or t' without the blur: crop + flip, jitter, grayscale, solarize."""
    x = random_resized_crop(images, images.shape[-1], scale=(crop_min, 1.0))
    x = color_jitter(x, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, p=0.8)
    x = random_grayscale(x, p=0.2)
    solarize = (torch.rand(x.shape[0], 1, 1, 1, device=x.device) < solarize_p) & (x >= 0.5)
    return torch.where(solarize, 1 - x, x)


def regression_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Eq. 2: mean over the batch of |p~ - z~|^2, ~ the l2-normalisation."""
    return (F.normalize(p, dim=-1) - F.normalize(z, dim=-1)).pow(2).sum(-1).mean()


class ReferenceBYOL(nn.Module):
    backbones = ("resnet18_cifar",)

    def __init__(self, encoder: Encoder, hidden: int = 512, out: int = 128, tau_base: float = 0.996,
                 crop_min: float = 0.08, predictor_lr_scale: float = 1.0) -> None:  # fmt: skip
        super().__init__()
        self.encoder = encoder
        self.projector = mlp(encoder.feature_dim, hidden, out)
        self.predictor = mlp(out, hidden, out)
        self.target = nn.ModuleList([copy.deepcopy(encoder), copy.deepcopy(self.projector)]).requires_grad_(False)
        self.tau_base, self.crop_min = tau_base, crop_min
        self.lr_scales = {"predictor": predictor_lr_scale}

    def _online(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.projector(self.encoder(x))
        return z, self.predictor(z)

    def training_step(self, images: torch.Tensor) -> StepOutput:
        v1, v2 = view(images, 0.0, self.crop_min), view(images, 0.2, self.crop_min)
        z1, p1 = self._online(v1)
        _, p2 = self._online(v2)
        with torch.no_grad():
            t1, t2 = self.target[1](self.target[0](v1)), self.target[1](self.target[0](v2))
        loss = regression_loss(p1, t2) + regression_loss(p2, t1)  # the paper sums the two
        return StepOutput(loss, z1.detach())

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        tau = 1 - (1 - self.tau_base) * (math.cos(math.pi * progress) + 1) / 2
        online = [*self.encoder.parameters(), *self.projector.parameters()]
        for xi, theta in zip(self.target.parameters(), online, strict=True):
            xi.lerp_(theta, 1 - tau)  # xi + (1 - tau)(theta - xi) = tau xi + (1 - tau) theta
