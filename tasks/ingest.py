"""Ingest stage: what validation accepted -> the training data in ``data/prepared``.

Training then reads shards instead of thousands of files. Fails closed: it needs a passing
validation and its tables. ``data/prepared`` is staged whole and swapped in
(tasks/core/atomic.py), so a failure or a kill leaves the previous version intact, never a
mix of an old unlabeled set with a new labeled one.

The shell does, for every modality: the check of the validation, the staging, the counts
(``counts.json``, what ``Prepared.load`` reads back), their metrics and the result. The
modality's part (``ctx.part``, tasks/<modality>/ingest.py) writes its format:

    UNIT: str                                           "image" | "document": names the counts
    prepare(ctx, validated, unlabeled_dir, labeled_dir) -> {"unlabeled": n, "labeled_train": n, "labeled_test": n}

A full disk is an ``OSError`` (ENOSPC) naming ``data/prepared``; a part whose output has a known
size checks the free space first (tasks/core/disk.py), before anything is written.
"""

from __future__ import annotations

import logging

from tasks.core.atomic import staged_dir, write_json
from tasks.core.context import StageContext
from tasks.core.disk import writing
from tasks.core.lineage import dvc_hash
from tasks.core.results import Prepared, Validated
from tasks.image.sources import SourceError

log = logging.getLogger(__name__)


def ingest(ctx: StageContext, validated: Validated) -> Prepared:
    layout, part = ctx.layout, ctx.part
    if not validated.success:
        raise SourceError("the data failed validation; nothing is ingested (see `sslpipe validate`):\n" + "\n".join(validated.summaries))
    # A full disk names data/prepared (the staging folder is removed, the previous version stays).
    with writing(layout.prepared), staged_dir(layout.prepared) as staging:
        counts = part.prepare(ctx, validated, staging / "unlabeled", staging / "labeled")
        write_json(staging / "unlabeled" / "counts.json", {"unlabeled": counts["unlabeled"]})
        write_json(
            staging / "labeled" / "counts.json", {k.removeprefix("labeled_"): n for k, n in counts.items() if k.startswith("labeled_")}
        )
    ctx.tracker.log_params({f"{part.UNIT}s/{key}": n for key, n in counts.items()})  # counts of the data: params, not metric charts
    log.info("prepared %s", ", ".join(f"{n} {key.replace('_', ' ')} {part.UNIT}s" for key, n in counts.items()))
    return Prepared(str(layout.unlabeled), str(layout.labeled), counts, dvc_hash(layout.unlabeled), dvc_hash(layout.labeled))
