"""Context encoder: fill in a hidden square of the image from its surroundings.

Pathak, Krahenbuhl, Donahue, Darrell, Efros. "Context Encoders: Feature Learning by
Inpainting", CVPR 2016. https://arxiv.org/abs/1604.07379

    image --crop + flip--> x;  M = a random square, side 16 of 32 (a quarter of the area)
    x_hat = x with M filled by the mean colour (0 after the Encoder's normalisation)
    recon = decoder(feature map of encoder(x_hat))        (B, 3, 32, 32)
    loss = mean over pixels in M of mean_c (recon - x)^2    (normalised pixel values)

To fill the hole the network must know what surrounds what: a wheel under a car, sky
above a horizon. The paper's "random block" masks gave better features than one fixed
central square (no fixed boundary to latch onto), so the square is placed anywhere,
per image. Only the L2 reconstruction term is used: the paper adds an adversarial
term to make the filled pixels sharp, which matters for pictures, not features, and
would add a GAN to train.

The decoder reads the backbone's spatial map (``backbone.forward_features_map``: 4x4
for the CIFAR ResNet, 8x8 for the ViT), upsampled back to full size, the Encoder's
normalisation being applied here since ``Encoder.forward`` returns pooled features.

Backbones: ``resnet18_cifar`` or ``vit_tiny`` (anything with ``forward_features_map``).
Kept after training: ``encoder`` (the decoder is dropped).
Embeddings for collapse monitoring: pooled encoder features of the masked images.
Optimiser: the pipeline default (SGD, lr 0.3 per 256, cosine) works.
"""

from __future__ import annotations

import torch
from torch import nn

from ssl_models.augment import ViewPolicy, random_resized_crop
from ssl_models.encoder import Encoder
from ssl_models.heads import ConvDecoder
from ssl_models.losses.masked_mse import masked_mse_loss
from ssl_models.methods.base import StepOutput


def random_square_mask(n: int, size: int, side: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(n, 1, size, size) float mask, 1 inside one random side x side square per image."""
    top = torch.randint(0, size - side + 1, (n, 1, 1, 1), device=device)
    left = torch.randint(0, size - side + 1, (n, 1, 1, 1), device=device)
    rows = torch.arange(size, device=device).view(1, 1, size, 1)
    cols = torch.arange(size, device=device).view(1, 1, 1, size)
    inside = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
    return inside.float()


class Inpainting(nn.Module):
    backbones = ("resnet18_cifar", "vit_tiny")

    def __init__(
        self,
        encoder: Encoder,
        views: ViewPolicy,
        mask_size: int = 16,
        hidden_channels: int = 64,
        crop_scale: tuple[float, float] = (0.5, 1.0),
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.image_size = views.size  # only the crop size is taken from the view policy
        self.mask_size, self.crop_scale = mask_size, crop_scale
        sizes = (*(s for s in (8, 16, 32, 64, 128) if s < self.image_size), self.image_size)
        self.decoder = ConvDecoder(encoder.feature_dim, 3, sizes, hidden_channels)

    def training_step(self, images: torch.Tensor) -> StepOutput:
        # images: (B, 3, H, W) in [0, 1]
        n, size = images.shape[0], self.image_size
        x = random_resized_crop(images, size, scale=self.crop_scale)
        x = (x - self.encoder.mean) / self.encoder.std  # the Encoder's own normalisation
        mask = random_square_mask(n, size, self.mask_size, x.device)  # (B, 1, S, S)
        fmap = self.encoder.backbone.forward_features_map(x * (1 - mask))  # hole = 0 = mean colour
        recon = self.decoder(fmap)  # (B, 3, S, S)
        # As (B, S*S, 3) pixels with a (B, S*S) mask: only the hidden pixels count.
        loss = masked_mse_loss(recon.flatten(2).transpose(1, 2), x.flatten(2).transpose(1, 2), mask.flatten(1))
        return StepOutput(loss, fmap.mean(dim=(2, 3)).detach())
