"""Augment stage: check the modality's view policy on real items and show it.

Views are made on the fly during pretraining (on the training device), so this stage writes
no data: it proves the policy behaves and shows it as ``reports/augment_preview.png``. The
modality's part (``ctx.part``, tasks/<modality>/augment.py) checks and draws:

    preview(ctx, prepared, path) -> path    raises a ValueError naming what the policy got wrong

images: crops, flips and colour changes (rows: original, view 1, view 2); text: BERT's masking.
"""

from __future__ import annotations

from tasks.core.context import StageContext
from tasks.core.results import Prepared, Preview


def augment(ctx: StageContext, prepared: Prepared) -> Preview:
    out = ctx.part.preview(ctx, prepared, ctx.layout.augment_preview)
    ctx.tracker.log_artifact(out, "augment")
    return Preview(str(out))
