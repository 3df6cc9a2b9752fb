"""Projection and prediction heads: small MLPs put on top of a backbone.

The head is thrown away after pretraining; only the backbone is kept as the encoder.
SimCLR (Chen et al., 2020) showed that the loss is best computed on a projection
``z = g(h)`` rather than on the representation ``h`` itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ProjectionHead(nn.Sequential):
    """MLP ``Linear -> BN -> ReLU`` repeated, then a last ``Linear`` (optionally BN).

    >>> head = ProjectionHead(128, 512, 64)
    >>> head(torch.zeros(4, 128)).shape  # doctest: +SKIP
    torch.Size([4, 64])
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int = 2,
        last_batch_norm: bool = False,
    ) -> None:
        layers: list[nn.Module] = []
        dim = input_dim
        for _ in range(num_layers - 1):
            layers += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
            dim = hidden_dim
        layers.append(nn.Linear(dim, output_dim, bias=not last_batch_norm))
        if last_batch_norm:
            # SimSiam ends its projector with BN. (Its paper's code turns BN's affine part
            # off; with it on, as here, 10-epoch runs did as well: simsiam.py.)
            layers.append(nn.BatchNorm1d(output_dim))
        super().__init__(*layers)


class PredictionHead(ProjectionHead):
    """The asymmetric predictor of BYOL / SimSiam: a 2-layer MLP with a bottleneck."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int) -> None:
        super().__init__(input_dim, hidden_dim, output_dim, num_layers=2)


class ConvDecoder(nn.Sequential):
    """A light decoder from a feature map to a dense prediction, for pixel pretext tasks.

    Each stage resizes to the next size in ``sizes`` (bilinear) and applies
    ``Conv3x3 -> BN -> ReLU``; a 1x1 convolution gives ``output_channels`` per pixel.
    Resizing to fixed sizes rather than by fixed factors makes the same head work on
    the 4x4 map of ResNet18Cifar and the 8x8 map of the ViT.

    >>> head = ConvDecoder(128, 3, sizes=(8, 16, 32))
    >>> head(torch.zeros(2, 128, 4, 4)).shape  # doctest: +SKIP
    torch.Size([2, 3, 32, 32])
    """

    def __init__(self, input_channels: int, output_channels: int, sizes: tuple[int, ...], hidden_channels: int = 64) -> None:
        layers: list[nn.Module] = []
        channels = input_channels
        for size in sizes:
            layers += [
                nn.Upsample(size=(size, size), mode="bilinear", align_corners=False),
                nn.Conv2d(channels, hidden_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(hidden_channels),
                nn.ReLU(inplace=True),
            ]
            channels = hidden_channels
        layers.append(nn.Conv2d(channels, output_channels, 1))
        super().__init__(*layers)


class DINOHead(nn.Module):
    """DINO's projection head (Caron et al., 2021, appendix; ``DINOHead`` in facebookresearch/dino).

        h (B, in) --MLP: Linear-GELU-Linear-GELU-Linear--> (B, bottleneck) --l2-normalise--> z
        logits = z @ normalize(V).T                     (B, out_dim), V (out_dim, bottleneck)

    The last layer is weight-normalised with its gain fixed at 1 (DINO's ``norm_last_layer``):
    each of the ``out_dim`` prototypes is a unit vector, so a logit is a cosine in [-1, 1],
    divided by the temperature in the loss. That bounded scale keeps the teacher's sharpened
    softmax stable. ``forward(h, freeze_last_layer=True)`` uses V without a gradient: DINO
    freezes the last layer during the first epoch, when it would otherwise move too fast.
    ``batch_norm``: BatchNorm after the hidden layers, as DINO's heads on ResNets
    (``use_bn_in_head``); off, as on its ViTs, a head's output depends on its own image only.

    >>> head = DINOHead(128, 512, 64, 1024)
    >>> head(torch.zeros(4, 128)).shape  # doctest: +SKIP
    torch.Size([4, 1024])
    """

    def __init__(self, input_dim: int, hidden_dim: int, bottleneck_dim: int, output_dim: int, batch_norm: bool = False) -> None:
        super().__init__()

        def hidden(dim_in: int) -> list[nn.Module]:
            return [nn.Linear(dim_in, hidden_dim), *([nn.BatchNorm1d(hidden_dim)] if batch_norm else []), nn.GELU()]

        self.mlp = nn.Sequential(*hidden(input_dim), *hidden(hidden_dim), nn.Linear(hidden_dim, bottleneck_dim))
        for module in self.mlp:
            if isinstance(module, nn.Linear):  # as DINO: truncated normal, std 0.02
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer = nn.Parameter(torch.empty(output_dim, bottleneck_dim))  # V: one row per prototype
        nn.init.trunc_normal_(self.last_layer, std=0.02)

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """(B, input_dim) -> the l2-normalised bottleneck z (B, bottleneck_dim)."""
        return F.normalize(self.mlp(h), dim=-1)

    def prototypes(self, z: torch.Tensor, freeze_last_layer: bool = False) -> torch.Tensor:
        """z (B, bottleneck_dim) -> logits (B, output_dim): cosines with the unit prototypes."""
        v = self.last_layer.detach() if freeze_last_layer else self.last_layer
        return z @ F.normalize(v, dim=1).T

    def forward(self, h: torch.Tensor, freeze_last_layer: bool = False) -> torch.Tensor:
        return self.prototypes(self.project(h), freeze_last_layer)


class Prototypes(nn.Module):
    """SwAV's prototypes: K trainable unit vectors; scores are cosine similarities.

    ``forward(z)`` takes l2-normalised embeddings (N, D) and returns (N, K) scores
    ``z @ C.T`` with C the prototypes normalised to unit length. With ``frozen=True`` the
    scores carry no gradient to C (SwAV freezes the prototypes in the first iterations, so
    the randomly initialised codes do not chase moving targets); C stays in the graph
    with a zero gradient, which keeps DDP's every-parameter-gets-a-gradient contract.

    >>> protos = Prototypes(128, 100)
    >>> protos(F.normalize(torch.randn(8, 128), dim=1)).shape  # doctest: +SKIP
    torch.Size([8, 100])
    """

    def __init__(self, dim: int, count: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(count, dim))
        nn.init.normal_(self.weight)

    def forward(self, z: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        c = F.normalize(self.weight, dim=1)  # (K, D)
        if frozen:
            c = c.detach() + 0 * c  # the same values; a zero gradient
        return z @ c.T
