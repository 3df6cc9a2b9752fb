"""Colorization: from the grey image, predict the colour (the ab channels of Lab).

Zhang, Isola, Efros. "Colorful Image Colorization", ECCV 2016.
https://arxiv.org/abs/1603.08511

    image --crop + flip--> x --Lab--> L, ab
    gray = luminance(x) copied to 3 channels      (the encoder's input stays RGB-shaped)
    logits = decoder(feature map of encoder(gray))   (B, Q, 16, 16), Q = 22 x 22 ab bins
    loss = cross entropy between logits and the soft-encoded true ab (5 nearest bins,
           Gaussian weights, sigma 5), averaged over pixels

Classification, not regression, as the paper argues (section 2.1): colour is
ambiguous (a shirt may be red or blue), and an L2 regression answers an ambiguous
pixel with the mean of the plausible colours, a desaturated grey-brown that scores
well without knowing what the object is. A distribution over quantised ab bins keeps
the alternatives apart. The ab plane is cut into 10 x 10 bins over [-110, 110]^2
(484 bins; the paper keeps the 313 in gamut, here out-of-gamut bins simply never
occur as targets). Left out: the paper's class rebalancing (a re-weighting that
favours rare saturated colours, mostly for nicer pictures) and its annealed-mean
decoding (only needed to produce images).

Prediction at 16x16 for 32x32 inputs (ab average-pooled 2x2 as the target), the
paper's quarter resolution being too coarse at this size. The decoder reads the
backbone's spatial map: ``backbone.forward_features_map`` (4x4 for the CIFAR
ResNet, 8x8 for the ViT), with the Encoder's normalisation applied here, since
``Encoder.forward`` returns pooled features only.

Backbones: ``resnet18_cifar`` or ``vit_tiny`` (anything with ``forward_features_map``).
Kept after training: ``encoder`` (the decoder is dropped). The encoder has only seen
grey images; at evaluation it gets colour ones, a mild shift the paper also accepts.
Embeddings for collapse monitoring: the pooled encoder features of the grey images.
Optimiser: the pipeline default (SGD, lr 0.3 per 256, cosine) works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_models.augment import ViewPolicy, luminance, random_resized_crop
from ssl_models.encoder import Encoder
from ssl_models.heads import ConvDecoder
from ssl_models.methods.base import StepOutput

# sRGB (D65) linear RGB -> XYZ, and the D65 white point (IEC 61966-2-1).
_RGB_TO_XYZ = torch.tensor([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]])
_WHITE = (0.950456, 1.0, 1.088754)


def rgb_to_lab(images: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] (B, 3, H, W) -> CIE Lab (B, 3, H, W): L in [0, 100], a, b about +-110."""
    # Undo the sRGB gamma: the Lab formulas need linear light.
    linear = torch.where(images > 0.04045, ((images + 0.055) / 1.055) ** 2.4, images / 12.92)
    xyz = torch.einsum("ij,bjhw->bihw", _RGB_TO_XYZ.to(images), linear)
    xyz = xyz / torch.tensor(_WHITE, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    # The cube root, with a linear piece near 0 (its slope would be infinite there).
    delta = 6 / 29
    f = torch.where(xyz > delta**3, xyz.clamp_min(delta**3) ** (1 / 3), xyz / (3 * delta**2) + 4 / 29)
    fx, fy, fz = f.unbind(1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=1)


def ab_bin_centres(bin_size: float = 10.0, ab_range: float = 110.0) -> torch.Tensor:
    """Centres of the square ab bins covering [-ab_range, ab_range]^2: (Q, 2), Q = 22^2 by default."""
    centres = torch.arange(-ab_range + bin_size / 2, ab_range, bin_size)
    a, b = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack([a.flatten(), b.flatten()], dim=1)


def soft_encode(ab: torch.Tensor, centres: torch.Tensor, neighbours: int = 5, sigma: float = 5.0) -> torch.Tensor:
    """ab (B, 2, h, w) -> target distribution (B, Q, h, w) over the bins, as the paper:
    the ``neighbours`` nearest bin centres weighted by a Gaussian of the distance."""
    n, _, h, w = ab.shape
    points = ab.permute(0, 2, 3, 1).reshape(-1, 2)  # (P, 2)
    dist2 = torch.cdist(points, centres).pow(2)  # (P, Q)
    nearest_d2, nearest = dist2.topk(neighbours, dim=1, largest=False)
    weights = torch.softmax(-nearest_d2 / (2 * sigma**2), dim=1)  # normalised Gaussian weights
    target = torch.zeros_like(dist2).scatter_(1, nearest, weights)
    return target.view(n, h, w, -1).permute(0, 3, 1, 2)


class Colorization(nn.Module):
    backbones = ("resnet18_cifar", "vit_tiny")

    def __init__(
        self,
        encoder: Encoder,
        views: ViewPolicy,
        output_size: int = 16,
        bin_size: float = 10.0,
        hidden_channels: int = 64,
        crop_scale: tuple[float, float] = (0.5, 1.0),
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.image_size = views.size  # only the crop size is taken from the view policy
        self.crop_scale, self.output_size = crop_scale, output_size
        self.register_buffer("centres", ab_bin_centres(bin_size), persistent=False)  # (Q, 2)
        sizes = (*(s for s in (8, 16, 32, 64) if s < output_size), output_size)
        self.decoder = ConvDecoder(encoder.feature_dim, self.centres.shape[0], sizes, hidden_channels)

    def training_step(self, images: torch.Tensor) -> StepOutput:
        # images: (B, 3, H, W) in [0, 1]
        x = random_resized_crop(images, self.image_size, scale=self.crop_scale)
        gray = luminance(x).expand(-1, 3, -1, -1)  # (B, 3, S, S), all channels equal
        fmap = self.encoder.backbone.forward_features_map((gray - self.encoder.mean) / self.encoder.std)  # (B, C, h, w)
        logits = self.decoder(fmap)  # (B, Q, s, s)
        with torch.no_grad():
            ab = F.adaptive_avg_pool2d(rgb_to_lab(x)[:, 1:], self.output_size)  # (B, 2, s, s)
            target = soft_encode(ab, self.centres)  # (B, Q, s, s)
        loss = -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()  # cross entropy per pixel
        return StepOutput(loss, fmap.mean(dim=(2, 3)).detach())
