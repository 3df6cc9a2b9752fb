"""Relative patch location: which of the 8 neighbours of the centre patch is this?

Doersch, Gupta, Efros. "Unsupervised Visual Representation Learning by Context
Prediction", ICCV 2015. https://arxiv.org/abs/1505.05192

    image --3x3 grid of patches, with gaps and jitter--> centre c, neighbour n_r, r = 0..7
    logits = head( [encoder(c), encoder(n_r)] )     features concatenated, (pairs, 8)
    loss = cross_entropy(logits, r)

The network can only solve this by knowing what objects look like and how their
parts are laid out, unless it finds a shortcut; the paper closes two:
  * low-level continuation (lines, textures running across the border): patches are
    separated by a gap and each is jittered by a few pixels, so borders never meet
    and the grid is not exactly regular;
  * chromatic aberration (colour fringes that grow towards the image border give the
    absolute position away): "colour dropping" replaces 2 of 3 channels of a patch
    by faint noise. At 32x32 there is little aberration left, and the encoder is
    evaluated on colour images, so here it is off by default (``color_drop_p`` is the
    fraction of images, all their patches, that get it). Measured on the bundled sample
    (width-8 ResNet, batch 64, 3 epochs; random init kNN 0.265 / probe 0.267): at 0.5,
    kNN 0.212-0.242 / probe 0.232-0.277 over 5 runs, below random init; at 0,
    0.265-0.288 / 0.277-0.334 over 5 runs, with a lower pretext loss (1.86-1.94 vs
    1.95-1.98). (Those runs, with 16 px patches, trained in channels_last on the CPU,
    whose oneDNN kernels were later found to corrupt width-8 training; without it the
    same run fell below random init: see the patch resolution below.)

Geometry at 32x32 (pixels): patches of 7, gaps of 4, jitter of +-1 and a random grid
offset: 3 * 7 + 2 * 4 = 29 px, which fits with the jitter. The paper's ratios are
about the same (96 px patches, 48 px gaps, 7 px jitter). Each patch is resampled to
``patch_resolution`` = 8 px (bilinear, one ``grid_sample`` for the whole batch, so
sub-pixel jitter costs nothing): about its own size, so the encoder learns its filters
on pixels at the scale it later sees in whole images. The CIFAR ResNet's last stage then
sees a 1x1 map; its adaptive pooling takes that as it takes the 4x4 of a whole image.

Why 8 and not 16 (the default until 2026-12): at 16 px every patch is a 2.3x bilinear
magnification, blurred, and the encoder learned filters for that; on whole 32 px images
its features fell below random init (learn test, width-8 ResNet, batch 64, 3 epochs,
random init kNN 0.265 / probe 0.267: kNN 0.218 / probe 0.253, and longer training made
it worse while the pretext loss kept falling). At 8 px the same run (benchmarks/
learn_budget.py) gives kNN 0.282 / probe 0.281 (seed 0; after its first epoch 0.282 /
0.292) and kNN 0.261 / probe 0.272 (seed 1, which starts from the random-init encoder
itself): above random init, but by little on seed 1. Patches of 8 px with gaps of 3
(span 32) made the pretext easier (loss 1.91 vs 1.96) and the features no better
(seed 0: kNN 0.258 / probe 0.276). 9 patches of 8x8 are a quarter of the pixels of
9 of 16x16 (about 0.6 of one 32 px image).

Pairs per image: the paper draws one neighbour per image. With ``all_neighbours``
(the default here) every image gives all 8 pairs, sharing one centre patch: 9
patches for 8 times the labels. On 1000 CIFAR images (16 px patches) one pair per
image stayed at chance (ln 8 = 2.08) for 8 epochs, while all 8 pairs went below it
within 4 (2.13, 2.09, 2.08, 2.07); the task is hard at this resolution and needs the
denser signal.

BatchNorm's running statistics follow whole images (``running_stats_frozen`` and a
no-gradient pass of a quarter of the crops): the encoder trains on 8 px patches but is used on
whole images, and statistics kept from patches (a 1x1 map in the last stage) normalised them
wrongly. Recalibrating a trained encoder on whole images showed it first (2 epochs, kNN 0.248 ->
0.288 on seed 0, 0.269 -> 0.285 on seed 1); training this way, 2 epochs on one thread give kNN
0.275 / 0.282 / 0.269, probe 0.282 / 0.291 / 0.302 on seeds 0 / 1 / 2 (random init 0.265 / 0.267).

At these budgets the features it learns transfer only a little to whole images: a lift
of 0.005-0.035 over random init, best early (3 epochs fell back below random init on seed 0:
kNN 0.235 / probe 0.255).

Backbones: ``resnet18_cifar`` (any CNN with adaptive pooling; the ViT's position
embedding is fixed to 32x32 inputs).
Kept after training: ``encoder`` (the pair classifier is dropped).
Embeddings for collapse monitoring: encoder features of the centre patches.
Optimiser: the pipeline default (SGD, lr 0.3 per 256, cosine) works.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ssl_models.augment import ViewPolicy, random_resized_crop
from ssl_models.encoder import Encoder
from ssl_models.heads import ProjectionHead
from ssl_models.methods.base import StepOutput


@contextlib.contextmanager
def running_stats_frozen(module: nn.Module) -> Iterator[None]:
    """BatchNorm in ``module`` normalises by each batch's statistics but leaves its running
    statistics (what it normalises with at inference) as they are: momentum 0 for the block."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum


# (row, col) of the 8 neighbours in the 3x3 grid; the class label is the index here.
NEIGHBOURS = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]


class RelativePatchLocation(nn.Module):
    backbones = ("resnet18_cifar",)

    def __init__(
        self,
        encoder: Encoder,
        views: ViewPolicy,
        patch_pixels: float = 7,
        gap_pixels: float = 4,
        jitter_pixels: float = 1,
        patch_resolution: int = 8,
        color_drop_p: float = 0.0,
        hidden_dim: int = 256,
        crop_scale: tuple[float, float] = (0.5, 1.0),
        all_neighbours: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.image_size = views.size  # only the crop size is taken from the view policy
        self.all_neighbours = all_neighbours
        span = 3 * patch_pixels + 2 * gap_pixels + 2 * jitter_pixels
        if span > self.image_size:
            raise ValueError(f"a 3x3 grid of {patch_pixels}px patches spans {span}px > image size {self.image_size}")
        self.patch, self.pitch, self.jitter = patch_pixels, patch_pixels + gap_pixels, jitter_pixels
        self.patch_resolution, self.color_drop_p, self.crop_scale = patch_resolution, color_drop_p, crop_scale
        self.head = ProjectionHead(2 * encoder.feature_dim, hidden_dim, len(NEIGHBOURS))

    def _extract(self, images: torch.Tensor, cells: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
        """Cut one jittered patch per image from grid cell ``cells`` (B, 2) = (row, col).

        origin (B, 2): top-left of the grid in pixels (x, y). Returns (B, 3, R, R).
        """
        n, size = images.shape[0], self.image_size
        jitter = (torch.rand(n, 2, device=images.device) * 2 - 1) * self.jitter
        top_left = origin + cells.flip(1) * self.pitch + jitter  # (B, 2) as (x, y)
        center = (top_left + self.patch / 2) / size * 2 - 1  # normalised coordinates
        theta = torch.zeros(n, 2, 3, device=images.device)
        theta[:, 0, 0] = theta[:, 1, 1] = self.patch / size  # half-extent of the patch
        theta[:, :, 2] = center
        grid = F.affine_grid(theta, [n, 3, self.patch_resolution, self.patch_resolution], align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _drop_colour(self, patches: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
        """Keep one random channel where ``apply`` (B,); the other two become faint noise."""
        n = patches.shape[0]
        keep = torch.randint(0, 3, (n,), device=patches.device)
        kept_std = patches[torch.arange(n), keep].flatten(1).std(dim=1).view(n, 1, 1, 1)
        noise = self.encoder.mean + 0.01 * kept_std * torch.randn_like(patches)  # ~0 after normalising
        dropped = torch.where(F.one_hot(keep, 3).bool().view(n, 3, 1, 1), patches, noise)
        return torch.where(apply.view(n, 1, 1, 1), dropped, patches)

    def training_step(self, images: torch.Tensor) -> StepOutput:
        # images: (B, 3, H, W) in [0, 1]
        n, device = images.shape[0], images.device
        x = random_resized_crop(images, self.image_size, scale=self.crop_scale)
        span = 2 * self.pitch + self.patch
        # Random grid placement within what the jitter leaves free.
        origin = self.jitter + torch.rand(n, 2, device=device) * (self.image_size - span - 2 * self.jitter)
        if self.all_neighbours:  # every image with each of its 8 neighbours: (8B,) labels
            labels = torch.arange(len(NEIGHBOURS), device=device).repeat_interleave(n)
        else:  # one random neighbour per image, as the paper: (B,) labels
            labels = torch.randint(0, len(NEIGHBOURS), (n,), device=device)
        pairs = len(labels)
        owner = torch.arange(pairs, device=device) % n  # the image each pair comes from
        neighbour_cells = torch.tensor(NEIGHBOURS, device=device, dtype=torch.float)[labels]  # (P, 2)
        centre = self._extract(x, torch.ones(n, 2, device=device), origin)  # (B, 3, R, R)
        neighbour = self._extract(x[owner], neighbour_cells, origin[owner])  # (P, 3, R, R)
        drop = torch.rand(n, device=device) < self.color_drop_p  # per image: all its patches
        centre, neighbour = self._drop_colour(centre, drop), self._drop_colour(neighbour, drop[owner])
        # BatchNorm's running statistics are what the encoder normalises with downstream, on
        # whole images; 8 px patches have others (a 1x1 map in the last stage). The patches are
        # normalised by their own batch statistics, and the running ones follow a no-gradient
        # pass of a quarter of the whole crops (a quarter: it costs about 15% of a step).
        with running_stats_frozen(self.encoder):
            features = self.encoder(torch.cat([centre, neighbour]))  # (B + P, F), one pass
        with torch.no_grad():
            self.encoder(x[: max(2, n // 4)])
        logits = self.head(torch.cat([features[:n][owner], features[n:]], dim=1))  # (P, 8)
        return StepOutput(F.cross_entropy(logits, labels), features[:n].detach())
