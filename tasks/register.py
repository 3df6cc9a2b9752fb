"""The register stage's shell: what every modality does once; ``ctx.part`` is the modality's module (tasks/<modality>/register.py)."""

from __future__ import annotations

from tasks.core.context import StageContext


def register(ctx: StageContext, prepared, pretrained, evaluation):
    return ctx.part.register(ctx, prepared, pretrained, evaluation)
