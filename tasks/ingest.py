"""The ingest stage's shell: what every modality does once; ``ctx.part`` is the modality's module (tasks/<modality>/ingest.py)."""

from __future__ import annotations

from tasks.core.context import StageContext


def ingest(ctx: StageContext, validated):
    return ctx.part.ingest(ctx, validated)
