"""Validate one source, of any modality: the one path behind the validate stage and `sslpipe finetune`.

1. the modality reads the source into a per-item table and gives each item its first fault
   (:meth:`Checks.describe`: images in tasks/image/checks.py, documents in tasks/text/checks.py);
2. the modality's GX suite runs as a checkpoint over all items (tasks/validation/gx_checkpoint.py),
   and ``validate.on_fail`` decides (tasks/validation/policy.py): with ``quarantine`` and at most
   ``validate.max_bad_fraction`` bad items, the good items alone must pass, and only they are
   trained on;
3. a labeled set must also have a usable structure (:meth:`Checks.structure_problem`);
4. the report (``<name>.json``), the table with an ``accepted`` column (ingest reads exactly those
   rows), GX Data Docs (``data_docs/<name>/``, replaced whole) and, on a pass, the drift
   reference (tasks/validation/drift_reference.py) are written, each all or nothing.

Bad data is never raised as an exception here: the report says what is wrong. A source that
cannot be read at all raises the modality's ``SourceError`` before anything is written.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.core.atomic import staged_dir, write_text
from tasks.core.config import ValidateConfig
from tasks.validation.drift_reference import load_reference, save_reference
from tasks.validation.gx_checkpoint import Checkpoints, failures
from tasks.validation.policy import decide
from tasks.validation.report import MAX_EXAMPLES, DataValidationError, ValidationReport


@dataclass(frozen=True)
class Unit:
    """What a modality's table rows are, as reports, pages and the quarantine list name them."""

    name: str  # what the report counts: "images", "documents"
    rows: str  # what a row is in decisions and pages: "image files", "documents"
    key: str  # the column naming a row: "path", "location"
    faults: dict[str, str]  # every fault a row can have, in the order they are checked (a row gets the first), and its meaning


class Checks(ABC):
    """A modality's side of validation: how to read a source into a per-item table, the per-item
    rules and the GX suite, and the drift statistics. Subclassed by ``ImageChecks``
    (tasks/image/checks.py) and ``DocumentChecks`` (tasks/text/checks.py)."""

    unit: Unit
    cfg: ValidateConfig  # validate.*: the rules, and the policy run_checks applies
    gx_columns: tuple[str, ...] = ()  # the table's columns the suite reads
    gx_floats: tuple[str, ...] = ()  # of those, the integer ones GX gets as floats (nullable integers trip it)
    stat_columns: tuple[str, ...] = ()  # the drift statistics a reference must hold

    @abstractmethod
    def describe(self, source: str | Path, name: str, key: str, reference: dict | None) -> tuple[pd.DataFrame, dict[str, int]]:
        """One row per item, with ``fault`` and ``detail``, and what was skipped (not rows, only counted).

        ``key`` names the source in caches and the drift reference; ``reference`` is its entry, if any."""

    @abstractmethod
    def expectations(self, reference: dict | None) -> list:
        """The GX expectations over :attr:`gx_columns`, with drift checks against ``reference``
        (the entry of the last passing version, or None)."""

    def statistics(self, good: pd.DataFrame) -> dict[str, float]:
        """The drift statistics of the good rows."""
        return {c: round(float(good[c].mean()), 6) for c in self.stat_columns} if len(good) else {}

    def converted(self, good: pd.DataFrame) -> dict[str, int]:
        """Good rows per conversion ingest will make on the way to training."""
        return {}

    def structure_problem(self, good: pd.DataFrame) -> str | None:
        """What makes the good rows unusable as a labeled set, if anything (None for an unlabeled source)."""
        return None

    def check_reference(self, entry: dict) -> None:
        """Raise (KeyError, TypeError, ValueError) when a drift reference entry is not usable."""
        for column in self.stat_columns:
            float(entry["statistics"][column])  # a hand-edited file must still hold numbers

    def reference_entry(self, accepted: pd.DataFrame, statistics: dict[str, float]) -> dict[str, Any]:
        """What the drift reference keeps of a passing version (besides its count)."""
        return {"statistics": statistics}


def mark_fault(table: pd.DataFrame, fault: str, mask: pd.Series, detail: Callable[[pd.Series], str]) -> None:
    """Give ``fault`` and its ``detail(row)`` to the rows in ``mask`` that have no fault yet."""
    rows = mask.fillna(False).astype(bool) & table["fault"].isna()
    if rows.any():
        table.loc[rows, "fault"] = fault
        table.loc[rows, "detail"] = table[rows].apply(detail, axis=1)


def run_checks(
    checks: Checks, source: str | Path, name: str, out_dir: Path, *, reference: Path | None = None, reference_key: str | None = None
) -> tuple[ValidationReport, pd.DataFrame]:
    """Validate one source with a modality's ``checks`` (``ImageChecks``, ``DocumentChecks``);
    writes ``out_dir/<name>.json``, ``<name>_table.csv`` and ``data_docs/<name>/``.

    ``reference``: the drift reference file, read and, on a pass, updated, under
    ``reference_key`` (the source as the config names it; default ``source``). Returns the
    report and the table, with ``fault``, ``detail`` and ``accepted``.

        report, table = run_checks(ImageChecks(cfg.validate, image_size=32, labeled=True), "data/labeled", "labeled", out_dir)
    """
    unit, cfg, key = checks.unit, checks.cfg, reference_key or str(source)
    try:
        ref, ref_error = load_reference(reference, name, key, checks.check_reference), None
    except DataValidationError as err:  # without its reference the drift check cannot run: fail, do not skip it
        ref, ref_error = None, str(err)
    table, skipped = checks.describe(source, name, key, ref)
    good, bad = table[table["fault"].isna()], table[table["fault"].notna()]

    out_dir.mkdir(parents=True, exist_ok=True)
    docs = out_dir / "data_docs" / name
    with staged_dir(docs) as docs_dir:  # the Data Docs of this run, or (on an error) the previous ones
        checkpoints = Checkpoints(name, checks, ref, docs_dir)
        first = checkpoints.run(table, f"all_{unit.name}")

        def recheck(good_rows: pd.DataFrame):
            second = checkpoints.run(good_rows, f"good_{unit.name}")
            return second.success, failures(second, table, unit.key)

        verdict = decide(table, first.success, recheck, cfg, str(source), unit.rows)

    success, decision = verdict.success, verdict.decision
    structure = checks.structure_problem(good) if success else None
    if ref_error:
        success, decision = False, f"{ref_error}; nothing is trained"
    elif structure:
        success, decision = False, f"{source}: {structure}; nothing is trained"
    elif success and reference is not None and ref is None:
        decision += "; no drift reference yet: this version becomes it"
    # Ingest reads exactly the accepted rows; a failed validation accepts none.
    table["accepted"] = success & table["fault"].isna()
    report = ValidationReport(
        name,
        str(source),
        len(table),
        success,
        failures(first, table, unit.key),
        policy=cfg.on_fail,
        accepted=int(table["accepted"].sum()),
        decision=decision,
        faults={f: int(n) for f, n in bad["fault"].value_counts().reindex(list(unit.faults)).dropna().items()},
        bad_files=[f"{r[unit.key]}: {r['fault']} ({r['detail']})" for r in bad.head(MAX_EXAMPLES).to_dict("records")],
        skipped=dict(sorted(skipped.items())),
        converted=checks.converted(good),
        statistics=checks.statistics(good),
        reference=ref and {k: v for k, v in ref.items() if k in (unit.name, "statistics")},
        quarantine_failures=verdict.quarantine_failures,
        data_docs=str(docs / "index.html"),
        unit=unit.name,
    )
    update = success and reference is not None
    # Before the working columns (a document's words) go: the reference may be made of them.
    entry = {unit.name: report.accepted, **checks.reference_entry(table[table["accepted"]], report.statistics)} if update else None
    table = table.drop(columns=[c for c in table.columns if c.startswith("_")])
    write_text(out_dir / f"{name}_table.csv", table.to_csv(index=False))
    write_text(out_dir / f"{name}.json", json.dumps(asdict(report), indent=2, default=str))
    if entry is not None:
        save_reference(reference, name, key, entry)
    return report, table


def quarantine_rows(table: pd.DataFrame, dataset: str, unit: Unit) -> pd.DataFrame:
    """The bad rows in reports/quarantine.csv's columns: path (the row's name), fault, detail, dataset."""
    bad = table.loc[table["fault"].notna(), [unit.key, "fault", "detail"]].rename(columns={unit.key: "path"})
    return bad.assign(dataset=dataset)
