"""The image part of augment: the view policy checked on real images, and a preview grid
(rows: original, view 1, view 2, and each local crop when multi-crop is on)."""

from __future__ import annotations

from pathlib import Path

import torch

from ssl_models.augment import ViewPolicy
from tasks.core.context import StageContext
from tasks.core.plots import augment_preview
from tasks.core.results import Prepared
from tasks.image.prepared import preview_images


class AugmentPolicyError(ValueError):
    """The view policy produced something training must not see."""


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


def check_local_views(policy: ViewPolicy, images: torch.Tensor) -> list[torch.Tensor]:
    """The policy's local crops (multi-crop; [] when off), checked for shape and range."""
    crops = policy.local_views(images)
    expected = (images.shape[0], 3, policy.local_size, policy.local_size)
    for crop in crops:
        if crop.shape != expected:
            raise AugmentPolicyError(f"local crops have shape {tuple(crop.shape)}, expected {expected}")
        if not torch.isfinite(crop).all() or crop.min() < 0 or crop.max() > 1:
            raise AugmentPolicyError("local crops leave the [0, 1] range or hold NaN")
    return crops


def preview(ctx: StageContext, prepared: Prepared, path: Path) -> Path:
    """Check the policy on the first training images; draw them and their views to ``path``."""
    cfg = ctx.cfg
    torch.manual_seed(cfg.pretrain.seed)
    images = preview_images(prepared.unlabeled, cfg.augment.preview_images)
    policy = cfg.views()
    views = check_views(policy, images)
    local_views = check_local_views(policy, images)
    return augment_preview(images, views[: len(images)], views[len(images) :], path, local_views=local_views)
