"""Augment stage: check the view policy on real images and draw a preview grid.

Views are made on the fly during pretraining (on the training device), so this stage
writes no data: it proves the policy behaves and shows it, as
``reports/augment_preview.png`` (row 1 originals, rows 2-3 two views of each).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from ssl_models.augment import ViewPolicy
from tasks.config import AugmentConfig, PipelineConfig
from tasks.layout import Layout


class AugmentPolicyError(ValueError):
    """The view policy produced something training must not see."""


def view_policy(cfg: AugmentConfig, image_size: int) -> ViewPolicy:
    return ViewPolicy(
        size=image_size,
        crop_scale=(cfg.crop_scale_min, 1.0),
        flip_p=cfg.flip_p,
        jitter_p=cfg.jitter_p,
        brightness=cfg.brightness,
        contrast=cfg.contrast,
        saturation=cfg.saturation,
        hue=cfg.hue,
        grayscale_p=cfg.grayscale_p,
        blur_p=cfg.blur_p,
    )


def check_views(policy: ViewPolicy, images: torch.Tensor) -> torch.Tensor:
    """Two views per image, checked for shape and range, and that random parameters
    are drawn per image (one image repeated must not get identical views)."""
    size = policy.size
    views = torch.cat([policy(images), policy(images)])
    if views.shape != (2 * images.shape[0], 3, size, size):
        raise AugmentPolicyError(f"views have shape {tuple(views.shape)}, expected {(2 * images.shape[0], 3, size, size)}")
    if not torch.isfinite(views).all() or views.min() < 0 or views.max() > 1:
        raise AugmentPolicyError("views leave the [0, 1] range or hold NaN")
    repeated = policy(images[:1].expand(8, -1, -1, -1).contiguous())
    if policy.is_random and all(torch.allclose(repeated[0], other) for other in repeated[1:]):
        raise AugmentPolicyError("one image repeated got identical views: random parameters are not per image")
    return views


def augment_stage(layout: Layout, cfg: PipelineConfig) -> Path:
    """Check the policy on the first training images; save ``reports/augment_preview.png``."""
    from torchvision.utils import save_image

    torch.manual_seed(cfg.pretrain.seed)
    image_size, out_png = cfg.data.image_size, layout.reports / "augment_preview.png"
    sample = np.load(layout.unlabeled / "images.npy", mmap_mode="r")[: cfg.augment.preview_images]
    images = torch.from_numpy(np.array(sample)).permute(0, 3, 1, 2).float() / 255
    views = check_views(view_policy(cfg.augment, image_size), images)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    save_image(torch.cat([images, views]), out_png, nrow=len(images), padding=2)
    return out_png


# The Prefect task is the stage function as-is. No result caching: inputs are a layout
# and a config, and DVC already decides what is stale from content hashes.
augment_task = task(augment_stage, name="augment", cache_policy=NO_CACHE)
