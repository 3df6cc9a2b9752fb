"""Validate one image source: the job behind the validate stage and `sslpipe finetune`.

1. walk it without leaving it and describe every image file (cached, in parallel);
2. give each file its first fault (rules in tasks/validation/expectations.py);
3. run the GX checkpoint over all files. With ``validate.on_fail: quarantine`` and at most
   ``validate.max_bad_fraction`` bad files, run it again over the good files only: they must
   pass, and only they are trained on;
4. a labeled set must also have a usable structure (two classes or more, no empty split);
5. write the report (``<name>.json``), the table with an ``accepted`` column (ingest decodes
   exactly those rows), GX Data Docs, and, on a pass, the drift reference.

Bad data is never raised as an exception here: the report says what is wrong.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from tasks.core.atomic import write_text
from tasks.core.config import ValidateConfig
from tasks.validation.drift_reference import load_reference, save_reference
from tasks.validation.expectations import FAULTS, STAT_COLUMNS, Rules
from tasks.validation.gx_checkpoint import Checkpoints, failures
from tasks.image.table import TableCache, build_table
from tasks.image.sources import open_source, scan_images
from tasks.validation.report import MAX_EXAMPLES, DataValidationError, Failure, ValidationReport

log = logging.getLogger(__name__)


def write_csv(table: pd.DataFrame, path: Path) -> None:
    write_text(path, table.to_csv(index=False))


@dataclass(frozen=True)
class Verdict:
    success: bool
    decision: str
    quarantine_failures: list[Failure] = field(default_factory=list)


def decide(table: pd.DataFrame, first, checkpoints: Checkpoints, cfg: ValidateConfig, source: str) -> Verdict:
    """Apply ``validate.on_fail`` to the first checkpoint's result."""
    bad, total = int(table["fault"].notna().sum()), len(table)
    share = f"{bad} of {total} files bad ({bad / max(total, 1):.1%})"
    if first.success:
        return Verdict(True, f"all {total} image files from {source} passed")
    if cfg.on_fail == "stop" or bad == 0:
        what = share if bad else "the dataset as a whole failed (see the failed expectations)"
        return Verdict(False, f"{source}: {what}; validate.on_fail={cfg.on_fail}, so nothing is trained")
    if bad / total > cfg.max_bad_fraction:
        return Verdict(False, f"{source}: {share}, above validate.max_bad_fraction={cfg.max_bad_fraction:.1%}; nothing is trained")
    second = checkpoints.run(table[table["fault"].isna()], "good_files")
    remaining = failures(second, table)
    if second.success:
        return Verdict(True, f"{source}: {share}, quarantined (reports/quarantine.csv); training on the other {total - bad}", remaining)
    return Verdict(False, f"{source}: {share} quarantined, but the remaining {total - bad} still fail; nothing is trained", remaining)


def labeled_structure_problem(paths: list[str]) -> str | None:
    """What makes a labeled set unusable for evaluation, from its accepted files' relative
    paths: fewer than two classes, or a train/test split with an empty side."""
    parts = [p.split("/") for p in paths]
    split = any(len(p) > 2 and p[0] in ("train", "test") for p in parts)
    if split:
        classes = {side: {p[1] for p in parts if len(p) > 2 and p[0] == side} for side in ("train", "test")}
        empty = [side for side, found in classes.items() if not found]
        if empty:
            return f"the {' and '.join(empty)} split has no images"
        found = classes["train"] | classes["test"]
    else:
        found = {p[0] for p in parts if len(p) > 1}
    if len(found) < 2:
        return f"a labeled set needs at least two class folders, found {sorted(found) or 'none'}"
    return None


def check_source(
    source: str | Path,
    name: str,
    cfg: ValidateConfig,
    out_dir: Path,
    downloads: Path | None = None,
    *,
    image_size: int | None = None,
    reference: Path | None = None,
    reference_key: str | None = None,
    cache_dir: Path | None = None,
    labeled: bool = False,
) -> tuple[ValidationReport, pd.DataFrame]:
    """Validate one source; writes ``out_dir/<name>.json``, ``<name>_table.csv`` and ``data_docs/<name>/``.

    ``image_size``: the training size (for ``resize`` in ``validate.convert``); ``reference``: the
    drift reference file, read and, on a pass, updated, under ``reference_key`` (the source as the
    config names it; default ``source``); ``cache_dir``: where the table cache lives; ``labeled``:
    also check the class structure.
    """
    key = reference_key or str(source)
    refused: list = []
    with open_source(source, downloads, refused) as root:
        listing = scan_images(root, refused)
        log.info("%s: describing %d image files under %s", name, len(listing.files), source)
        cache = TableCache(cache_dir / f"{name}.parquet" if cache_dir else None, key, cfg.max_pixels)
        facts = build_table(root, listing, cfg.max_pixels, cache, cfg.workers)
    rules = Rules(cfg, image_size)
    table = rules.assign_faults(facts)
    try:
        ref, ref_error = load_reference(reference, name, key), None
    except DataValidationError as err:  # without its reference the drift check cannot run: fail, do not skip it
        ref, ref_error = None, str(err)
    good = table[table["fault"].isna()]
    bad = table[table["fault"].notna()]

    out_dir.mkdir(parents=True, exist_ok=True)
    docs_tmp = Path(tempfile.mkdtemp(prefix=f".staging-{name}-docs-", dir=out_dir))
    try:
        checkpoints = Checkpoints(name, rules, ref and ref["statistics"], docs_tmp)
        first = checkpoints.run(table, "all_files")
        verdict = decide(table, first, checkpoints, cfg, str(source))
        docs = out_dir / "data_docs" / name
        if docs.exists():
            shutil.rmtree(docs)
        docs.parent.mkdir(exist_ok=True)
        docs_tmp.rename(docs)
    finally:
        shutil.rmtree(docs_tmp, ignore_errors=True)

    success, decision = verdict.success, verdict.decision
    structure = labeled_structure_problem(list(good["path"])) if labeled and success else None
    if ref_error:
        success, decision = False, f"{ref_error}; nothing is trained"
    elif structure:
        success, decision = False, f"{source}: {structure}; nothing is trained"
    elif success and reference is not None and ref is None:
        decision += "; no drift reference yet: this version becomes it"
    # Ingest decodes exactly the accepted rows; a failed validation accepts none.
    table["accepted"] = success & table["fault"].isna()
    report = ValidationReport(
        name,
        str(source),
        len(table),
        success,
        failures(first, table),
        policy=cfg.on_fail,
        accepted=int(table["accepted"].sum()),
        decision=decision,
        faults={f: int(n) for f, n in bad["fault"].value_counts().reindex(FAULTS).dropna().items()},
        bad_files=[f"{r.path}: {r.fault} ({r.detail})" for r in bad.head(MAX_EXAMPLES).itertuples()],
        skipped=dict(sorted(listing.skipped.items())),
        converted=dict(Counter(step for steps in good["convert"].dropna() for step in steps.split("+"))),
        statistics={c: round(float(good[c].mean()), 6) for c in STAT_COLUMNS} if len(good) else {},
        reference=ref,
        quarantine_failures=verdict.quarantine_failures,
        data_docs=str(docs / "index.html"),
    )
    write_csv(table, out_dir / f"{name}_table.csv")
    write_text(out_dir / f"{name}.json", json.dumps(asdict(report), indent=2, default=str))
    if report.success and reference is not None:
        save_reference(reference, name, key, report.accepted, report.statistics)
    return report, table


def validate_source(source: str | Path, name: str, cfg: ValidateConfig, out_dir: Path, downloads: Path | None = None, **options) -> ValidationReport:
    """:func:`check_source`, returning only the report."""
    return check_source(source, name, cfg, out_dir, downloads, **options)[0]
