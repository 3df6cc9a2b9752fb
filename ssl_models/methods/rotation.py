"""RotNet: predict by how much an image was rotated (0, 90, 180 or 270 degrees).

Gidaris, Singh, Komodakis. "Unsupervised Representation Learning by Predicting Image
Rotations", ICLR 2018. https://arxiv.org/abs/1803.07728

    images --light crop + flip--> x --rotate by r * 90 deg, r = 0..3--> x_r
    logits_r = head(encoder(x_r))                   (4B, 4)
    loss = cross_entropy(logits_r, r)

To tell which way is up the network has to recognise objects and their parts and
where they sit in the image. As in the paper, every image goes in with all four
rotations in the same batch (better than one random rotation per image), so a step
costs four forward passes per image. Rotations by multiples of 90 degrees are exact
(``torch.rot90``): no interpolation artefacts that would give the answer away. The
head is a small MLP on the pooled features (the paper trains conv blocks on top of
the feature maps; an MLP leaves the last encoder layer less task-specific than a
linear head would).

Backbones: any CNN or ViT encoder (defaults to the CIFAR ResNet-18).
Kept after training: ``encoder`` (the rotation head is dropped).
Embeddings for collapse monitoring: encoder features of the upright images.
Optimiser: the pipeline default (SGD, lr 0.3 per 256, cosine) works; the paper uses
SGD lr 0.1 at batch 128, wd 5e-4.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_models.augment import ViewPolicy, random_resized_crop
from ssl_models.encoder import Encoder
from ssl_models.heads import ProjectionHead
from ssl_models.methods.base import StepOutput


class RotationPrediction(nn.Module):
    backbones = ("resnet18_cifar", "vit_tiny")

    def __init__(
        self,
        encoder: Encoder,
        views: ViewPolicy,
        hidden_dim: int = 256,
        crop_scale: tuple[float, float] = (0.5, 1.0),
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.image_size = views.size  # only the crop size is taken from the view policy
        self.crop_scale = crop_scale
        self.head = ProjectionHead(encoder.feature_dim, hidden_dim, 4)  # 4 rotation classes

    def training_step(self, images: torch.Tensor) -> StepOutput:
        # images: (B, 3, H, W) in [0, 1]; light augmentation: strong crops make "up" ambiguous.
        n = images.shape[0]
        x = random_resized_crop(images, self.image_size, scale=self.crop_scale)
        x = torch.cat([torch.rot90(x, r, dims=(2, 3)) for r in range(4)])  # (4B, 3, S, S), counter-clockwise
        labels = torch.arange(4, device=x.device).repeat_interleave(n)  # (4B,): r for the r-th block
        features = self.encoder(x)  # (4B, F)
        loss = F.cross_entropy(self.head(features), labels)
        return StepOutput(loss, features[:n].detach())
