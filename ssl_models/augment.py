"""Batched view augmentations, run on the training device.

Per-image PIL transforms in DataLoader workers starve a 2-core CPU (see the field
notes); here a whole batch is transformed with tensor ops, and every image still
draws its own random parameters. Input and output: float images in [0, 1],
shape (B, 3, H, W).

``ViewPolicy`` is SimCLR's recipe (Chen et al., 2020, appendix A): random resized
crop, horizontal flip, colour jitter (brightness, contrast, saturation, hue) with
probability ``jitter_p``, grayscale with probability ``grayscale_p`` and an optional
Gaussian blur. Jitter is applied in a fixed order (torchvision shuffles it).

Multi-crop (Caron et al., SwAV, 2020, https://arxiv.org/abs/2006.09882): besides the two
global views, ``local_crops`` small crops per image (``local_size`` px, ``local_scale`` of
the area) drawn by ``ViewPolicy.local_views`` with the same colour recipe. Small crops are
cheap (a 96 px crop costs about a fifth of a 224 px one) and teach the encoder to match a
part to the whole. Off (0) unless the method uses them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# ITU-R BT.601 luma weights, as torchvision's rgb_to_grayscale.
_LUMA = (0.299, 0.587, 0.114)
# RGB <-> YIQ: hue is an angle in the IQ (chroma) plane, so a hue shift is a rotation.
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def luminance(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W)."""
    r, g, b = images.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _uniform(low: float, high: float, n: int, device: torch.device) -> torch.Tensor:
    return torch.empty(n, device=device).uniform_(low, high)


def _coin(p: float, n: int, device: torch.device) -> torch.Tensor:
    return torch.rand(n, device=device) < p


def random_resized_crop(
    images: torch.Tensor,
    size: int,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_p: float = 0.5,
) -> torch.Tensor:
    """Crop a random area fraction and aspect ratio per image, resize, maybe flip.

    One affine ``grid_sample`` does crop, resize and flip for the whole batch.
    """
    n, device = images.shape[0], images.device
    area = _uniform(*scale, n, device)
    log_ratio = _uniform(math.log(ratio[0]), math.log(ratio[1]), n, device)
    aspect = torch.exp(log_ratio)
    # Half-extents in normalised coordinates ([-1, 1] spans the image).
    half_w = torch.sqrt(area * aspect).clamp(max=1.0)
    half_h = torch.sqrt(area / aspect).clamp(max=1.0)
    center_x = (torch.rand(n, device=device) * 2 - 1) * (1 - half_w)
    center_y = (torch.rand(n, device=device) * 2 - 1) * (1 - half_h)
    flip = torch.where(_coin(flip_p, n, device), -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0] = half_w * flip
    theta[:, 0, 2] = center_x
    theta[:, 1, 1] = half_h
    theta[:, 1, 2] = center_y
    grid = F.affine_grid(theta, [n, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def color_jitter(
    images: torch.Tensor,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.1,
    p: float = 0.8,
) -> torch.Tensor:
    """Per-image brightness, contrast, saturation and hue factors, applied with prob. p.

    Images that skip jitter get identity factors, so the batch stays one computation.
    """
    n, device = images.shape[0], images.device
    apply = _coin(p, n, device)

    def factors(strength: float) -> torch.Tensor:  # (B, 1, 1, 1), 1 where not applied
        f = _uniform(max(0.0, 1 - strength), 1 + strength, n, device)
        return torch.where(apply, f, torch.ones_like(f)).view(n, 1, 1, 1)

    out = (images * factors(brightness)).clamp(0, 1)
    mean = luminance(out).mean(dim=(2, 3), keepdim=True)
    out = ((out - mean) * factors(contrast) + mean).clamp(0, 1)
    gray = luminance(out)
    out = ((out - gray) * factors(saturation) + gray).clamp(0, 1)
    if hue > 0:
        angle = _uniform(-hue, hue, n, device) * 2 * math.pi * apply
        out = rotate_hue(out, angle)
    return out


def rotate_hue(images: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate each image's chroma by ``angle`` radians (B,) in YIQ space."""
    to_yiq = _RGB_TO_YIQ.to(images)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.zeros(angle.shape[0], 3, 3, device=images.device, dtype=images.dtype)
    rotation[:, 0, 0] = 1
    rotation[:, 1, 1], rotation[:, 1, 2] = cos, -sin
    rotation[:, 2, 1], rotation[:, 2, 2] = sin, cos
    matrix = torch.linalg.inv(to_yiq) @ rotation @ to_yiq  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", matrix, images).clamp(0, 1)


def random_grayscale(images: torch.Tensor, p: float = 0.2) -> torch.Tensor:
    apply = _coin(p, images.shape[0], images.device).view(-1, 1, 1, 1)
    return torch.where(apply, luminance(images).expand_as(images), images)


def gaussian_blur(images: torch.Tensor, sigma: tuple[float, float] = (0.1, 2.0), p: float = 0.5) -> torch.Tensor:
    """Separable Gaussian blur with a per-image sigma; kernel about 10% of the side."""
    n, c, h, w = images.shape
    radius = max(1, int(0.05 * min(h, w)))
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    sigmas = _uniform(*sigma, n, images.device).to(images.dtype)
    kernel = torch.exp(-(offsets[None, :] ** 2) / (2 * sigmas[:, None] ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B*C, K)
    flat = images.reshape(1, n * c, h, w)
    flat = F.pad(flat, (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel.view(n * c, 1, 1, -1), groups=n * c)
    flat = F.conv2d(flat, kernel.view(n * c, 1, -1, 1), groups=n * c)
    blurred = flat.view(n, c, h, w)
    apply = _coin(p, n, images.device).view(-1, 1, 1, 1)
    return torch.where(apply, blurred, images)


@dataclass(frozen=True)
class ViewPolicy:
    """SimCLR's view policy; call it on a batch to get one random view per image."""

    size: int = 32
    crop_scale: tuple[float, float] = (0.2, 1.0)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    local_crops: int = 0  # small crops per image from local_views; 0: off
    local_size: int = 16  # side of a local crop, px
    local_scale: tuple[float, float] = (0.05, 0.4)  # area share of a local crop

    @property
    def is_random(self) -> bool:
        """False only for a policy that returns every image unchanged up to resizing."""
        return self.crop_scale[0] < 1 or any(p > 0 for p in (self.flip_p, self.jitter_p, self.grayscale_p, self.blur_p))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """One global view per image: (B, 3, H, W) -> (B, 3, size, size)."""
        return self._view(images, self.size, self.crop_scale)

    def local_views(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``local_crops`` small views per image: a list of (B, 3, local_size, local_size); [] when off."""
        return [self._view(images, self.local_size, self.local_scale) for _ in range(self.local_crops)]

    def _view(self, images: torch.Tensor, size: int, scale: tuple[float, float]) -> torch.Tensor:
        views = random_resized_crop(images, size, scale, flip_p=self.flip_p)
        views = color_jitter(views, self.brightness, self.contrast, self.saturation, self.hue, self.jitter_p)
        views = random_grayscale(views, self.grayscale_p)
        if self.blur_p > 0:
            views = gaussian_blur(views, p=self.blur_p)
        return views


def local_crop_size(size: int) -> int:
    """The side of a local crop for ``size`` px images: 3/7 of it as DINO's and SwAV's 96 px
    at 224 (rounded to a multiple of 8 so ViT patch grids stay whole), at least 16 px."""
    return max(16, 8 * round(size * 3 / 7 / 8))


def recipe_for_size(size: int) -> ViewPolicy:
    """SimCLR's view recipe for ``size`` px (Chen et al., 2020, appendix A and B.9).

    From 96 px on, the ImageNet recipe: crops down to 8% of the area, colour jitter of
    strength 1 (0.8 brightness/contrast/saturation, 0.2 hue) and Gaussian blur with
    probability 0.5. Below, the CIFAR recipe (the ``ViewPolicy`` defaults): crops down
    to 20%, jitter strength 0.5, no blur (blur hurts on 32 px images, the paper says).
    """
    local = local_crop_size(size)
    if size >= 96:
        return ViewPolicy(
            size=size, crop_scale=(0.08, 1.0), brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, blur_p=0.5, local_size=local
        )
    return ViewPolicy(size=size, local_size=local)
