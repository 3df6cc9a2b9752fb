"""VICReg: invariance, plus variance and covariance terms that rule out collapse.

Bardes, Ponce, LeCun. "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning", ICLR 2022. https://arxiv.org/abs/2105.04906

    images --views--> x_a, x_b --encoder + expander--> z_a, z_b  (N, D)
    loss = 25 * MSE(z_a, z_b)                                   invariance
         + 25 * mean over both branches of mean_i relu(1 - std_i)   variance (gamma = 1)
         +  1 * sum over both branches of sum_{i != j} Cov_ij^2 / D  covariance

Each branch is regularised on its own, so nothing is shared or normalised between
them: no negatives, no momentum encoder, no stop-gradient. The expander (3 layers,
8192 wide in the paper; 512 here for a CPU) ends in a plain Linear so the variance
term sees unnormalised outputs.

Backbones: any CNN or ViT encoder (defaults to the CIFAR ResNet-18).
Kept after training: ``encoder`` (the expander is dropped).
Optimiser: SGD with a lower lr than the pipeline default, 0.03 per 256 (see
``recommended``): at 0.3 a 3-epoch run on 1000 CIFAR images diverged to NaN, at 0.1
the loss went up and down, at 0.03 it fell steadily. The paper uses
LARS (lr 0.2 per 256, wd 1e-6), which normalises each layer's step and so tolerates
the large loss; plain SGD does not.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ssl_models.augment import ViewPolicy
from ssl_models.encoder import Encoder
from ssl_models.heads import ProjectionHead
from ssl_models.losses.vicreg import vicreg_loss
from ssl_models.methods.base import StepOutput


class VICReg(nn.Module):
    backbones = ("resnet18_cifar", "vit_tiny")
    # Several processes: BN statistics of the global batch, as the paper's SyncBN.
    sync_batchnorm = True
    recommended: ClassVar[dict[str, Any]] = {"optimizer": "sgd", "lr": 0.03, "weight_decay": 5e-4}

    def __init__(
        self,
        encoder: Encoder,
        views: ViewPolicy,
        projection_dim: int = 512,
        hidden_dim: int = 512,
        sim_coeff: float = 25.0,
        std_coeff: float = 25.0,
        cov_coeff: float = 1.0,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.views = views
        self.expander = ProjectionHead(encoder.feature_dim, hidden_dim, projection_dim, num_layers=3)
        self.coeffs = {"sim_coeff": sim_coeff, "std_coeff": std_coeff, "cov_coeff": cov_coeff}

    def training_step(self, images: torch.Tensor) -> StepOutput:
        # images: (B, 3, H, W) in [0, 1]
        n = images.shape[0]
        x = torch.cat([self.views(images), self.views(images)])  # (2B, 3, S, S)
        z = self.expander(self.encoder(x))  # (2B, D)
        z_a, z_b = z[:n], z[n:]
        return StepOutput(vicreg_loss(z_a, z_b, **self.coeffs), z_a.detach())
