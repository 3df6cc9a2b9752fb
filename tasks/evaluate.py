"""The evaluate stage's shell: what every modality does once; ``ctx.part`` is the modality's module (tasks/<modality>/evaluate.py)."""

from __future__ import annotations

from tasks.core.context import StageContext


def evaluate(ctx: StageContext, prepared, pretrained):
    return ctx.part.evaluate(ctx, prepared, pretrained)
