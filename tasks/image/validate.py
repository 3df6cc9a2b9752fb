"""The image part of validate: the image checks (tasks/image/checks.py) at the training size,
with the per-image table cached between runs; the shell (tasks/validate.py) does the rest."""

from __future__ import annotations

from tasks.core.context import StageContext
from tasks.image.checks import ImageChecks


def checks(ctx: StageContext, labeled: bool) -> ImageChecks:
    layout = ctx.layout
    return ImageChecks(
        ctx.cfg.validate, ctx.cfg.data.image_size, labeled=labeled, downloads=layout.downloads, cache_dir=layout.validation_cache
    )
