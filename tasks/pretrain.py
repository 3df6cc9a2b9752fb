"""The pretrain stage's shell: what every modality does once; ``ctx.part`` is the modality's module (tasks/<modality>/pretrain.py)."""

from __future__ import annotations

from tasks.core.context import StageContext


def pretrain(ctx: StageContext, prepared, preview):
    return ctx.part.pretrain(ctx, prepared, preview)
