"""The image part of ingest: decode the accepted files into uint8 shards (tasks/image/prepared.py)."""

from __future__ import annotations

from pathlib import Path

from tasks.core.context import StageContext
from tasks.core.disk import check_free
from tasks.core.results import Validated
from tasks.image.prepared import accepted_rows, write_labeled, write_unlabeled

UNIT = "image"


def prepare(ctx: StageContext, validated: Validated, unlabeled_dir: Path, labeled_dir: Path) -> dict[str, int]:
    layout, data = ctx.layout, ctx.cfg.data
    # Decoded pixels have a known size: a disk that cannot hold them is refused before the first write.
    accepted = sum(len(accepted_rows(validated.tables[name])) for name in ("unlabeled", "labeled"))
    check_free(layout.prepared, accepted * data.image_size**2 * 3)
    unlabeled = write_unlabeled(
        layout.source(data.unlabeled), validated.tables["unlabeled"], unlabeled_dir, data.image_size, layout.downloads
    )
    labeled = write_labeled(
        layout.source(data.labeled), validated.tables["labeled"], labeled_dir, data.image_size, data.test_fraction, layout.downloads
    )
    return {"unlabeled": unlabeled} | {f"labeled_{split}": n for split, n in labeled.items()}
