"""The validate stage's shell: what every modality does once; ``ctx.part`` is the modality's module (tasks/<modality>/validate.py)."""

from __future__ import annotations

from tasks.core.context import StageContext


def validate(ctx: StageContext):
    return ctx.part.validate(ctx)
