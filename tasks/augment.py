"""The augment stage's shell: what every modality does once; ``ctx.part`` is the modality's module (tasks/<modality>/augment.py)."""

from __future__ import annotations

from tasks.core.context import StageContext


def augment(ctx: StageContext, prepared):
    return ctx.part.augment(ctx, prepared)
