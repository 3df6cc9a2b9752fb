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
