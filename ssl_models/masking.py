"""Blockwise patch masks, as BEiT and iBOT hide patches: rectangles, not scattered patches.

Bao, Dong, Piao, Wei. "BEiT: BERT Pre-Training of Image Transformers", ICLR 2022,
algorithm 1 (``MaskingGenerator`` in microsoft/unilm beit/masking_generator.py), used by
iBOT (Zhou et al., 2022) for its masked-patch loss.

    block_mask(grid, n):  until n of the grid x grid patches are hidden, add a rectangle
                          of area in [min_patches, what is left to hide] and aspect ratio
                          log-uniform in [0.3, 1/0.3], at a random place; a rectangle that
                          hides nothing new or too much is redrawn (up to 10 tries)
    block_masks(B, grid): per image, with probability ``prob`` a block mask hiding a
                          uniform ``ratio`` of the patches, else nothing (iBOT: half the
                          images masked, 10% to 50% of their patches)

Neighbouring patches are nearly predictable from each other, so hiding blocks makes
the task about content rather than interpolation. Plain Python loops on the CPU (about
0.3 ms an image), with a Python generator seeded from torch's global one, so masks are
reproducible with ``torch.manual_seed`` and resume with the RNG state of a checkpoint.

Example:
    >>> masks = block_masks(256, 8)          # (256, 64) bool, True = hidden, row-major
"""

from __future__ import annotations

import math
import random

import torch


def _seeded() -> random.Random:
    return random.Random(int(torch.randint(0, 2**62, ()).item()))


def block_mask(
    grid: int, num_masked: int, min_patches: int = 4, aspect: tuple[float, float] = (0.3, 1 / 0.3), rng: random.Random | None = None
) -> torch.Tensor:
    """(grid, grid) bool with about ``num_masked`` True (never more), in rectangles."""
    rng = rng or _seeded()
    mask = torch.zeros(grid, grid, dtype=torch.bool)
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    count = 0
    while count < num_masked:
        left_to_hide = num_masked - count
        added = 0
        for _ in range(10):
            area = rng.uniform(min_patches, left_to_hide)
            ratio = math.exp(rng.uniform(*log_aspect))
            h, w = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            if not (0 < h < grid and 0 < w < grid):
                continue
            top, left = rng.randint(0, grid - h), rng.randint(0, grid - w)
            new = h * w - int(mask[top : top + h, left : left + w].sum())
            if 0 < new <= left_to_hide:
                mask[top : top + h, left : left + w] = True
                added = new
                break
        if added == 0:  # no rectangle fits what is left: stop short of num_masked
            break
        count += added
    return mask


def block_masks(batch: int, grid: int, ratio: tuple[float, float] = (0.1, 0.5), prob: float = 0.5, min_patches: int = 4) -> torch.Tensor:
    """(batch, grid * grid) bool, row-major as the ViT's patch tokens: per image, with
    probability ``prob``, a block mask of a ``ratio`` (uniform in the range) of the patches."""
    masks = torch.zeros(batch, grid * grid, dtype=torch.bool)
    rng = _seeded()
    for b in range(batch):
        if rng.random() < prob:
            num = round(rng.uniform(*ratio) * grid * grid)
            masks[b] = block_mask(grid, num, min_patches, rng=rng).flatten()
    return masks
