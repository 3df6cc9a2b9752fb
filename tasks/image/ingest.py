"""Ingest stage: the files validation accepted -> decoded images in ``data/prepared``.

Training then reads one array instead of thousands of image files. Fails closed: it needs
a passing validation and its tables. ``data/prepared`` is staged whole and swapped in
(tasks/core/atomic.py), so a failure or a kill leaves the previous version intact, never a mix
of an old unlabeled set with a new labeled one.
"""

from __future__ import annotations

import logging

from tasks.core.atomic import staged_dir
from tasks.core.context import StageContext
from tasks.core.lineage import dvc_hash
from tasks.image.prepared import write_labeled, write_unlabeled
from tasks.core.results import Prepared, Validated
from tasks.image.sources import SourceError

log = logging.getLogger(__name__)


def ingest(ctx: StageContext, validated: Validated) -> Prepared:
    layout, data = ctx.layout, ctx.cfg.data
    if not validated.success:
        raise SourceError("the data failed validation; nothing is ingested (see `sslpipe validate`):\n" + "\n".join(validated.summaries))
    with staged_dir(layout.prepared) as staging:
        unlabeled = write_unlabeled(layout.source(data.unlabeled), validated.tables["unlabeled"], staging / "unlabeled", data.image_size, layout.downloads)
        labeled = write_labeled(
            layout.source(data.labeled), validated.tables["labeled"], staging / "labeled", data.image_size, data.test_fraction, layout.downloads
        )
    counts = {"unlabeled": unlabeled} | {f"labeled_{split}": n for split, n in labeled.items()}
    ctx.tracker.log_metrics({f"images/{key}": n for key, n in counts.items()})
    log.info("prepared %s", ", ".join(f"{n} {key.replace('_', ' ')} images" for key, n in counts.items()))
    return Prepared(str(layout.unlabeled), str(layout.labeled), counts, dvc_hash(layout.unlabeled), dvc_hash(layout.labeled))
