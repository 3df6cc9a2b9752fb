"""The validate stage's shell: both sources through the one validation path with the modality's
checks, then what the stage writes and logs, the same for every modality.

Nothing is trained on data that did not pass. Writes, per source, the report (``<name>.json``),
the table with its ``accepted`` column (ingest reads exactly those rows) and GX Data Docs
(tasks/validation/source_check.py), and a self-contained HTML page, all under
``reports/validation/``; the drift reference on a pass; every bad row in
``reports/quarantine.csv``; and logs the reports, pages and quarantine list into the run (not
the Data Docs: they need a network for their styles; the page is the offline report). Bad data is a result
(``Validated.success`` is False), not an exception: the flow ends Failed with the report, the
CLI prints it and exits 2. A source that cannot be read at all raises ``SourceError`` (one line).

The modality's part (``ctx.part``, tasks/<modality>/validate.py) is a :class:`ValidatePart`:

    checks(ctx, labeled) -> Checks     how to read a source into a per-item table, the per-item rules
                                       and GX expectations, the drift statistics, and its ``unit``
                                       (tasks/validation/source_check.py; ImageChecks, DocumentChecks)
"""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from typing import Protocol, runtime_checkable

import pandas as pd

from tasks.core.atomic import write_text
from tasks.core.context import StageContext
from tasks.core.results import Validated
from tasks.validation.html import render
from tasks.validation.report import report_params
from tasks.validation.source_check import Checks, quarantine_rows, run_checks

log = logging.getLogger(__name__)


@runtime_checkable
class ValidatePart(Protocol):
    """A modality's part of the validate stage: what to check a source with."""

    def checks(self, ctx: StageContext, labeled: bool) -> Checks:
        """The modality's checks for one source (``labeled``: the evaluation set) under ``ctx.cfg``:
        how to read it into a per-item table, the per-item rules, the GX suite and the drift statistics."""
        ...


def validate(ctx: StageContext) -> Validated:
    part, layout, tracker = ctx.part, ctx.layout, ctx.tracker
    if not isinstance(part, ValidatePart):
        raise TypeError(f"{part}: not a part of the validate stage (needs checks(ctx, labeled))")
    sources = {"unlabeled": ctx.cfg.data.unlabeled, "labeled": ctx.cfg.data.labeled}
    checks = {name: part.checks(ctx, labeled=name == "labeled") for name in sources}
    unit = checks["unlabeled"].unit
    checked = [
        run_checks(checks[name], layout.source(source), name, layout.validation, reference=layout.reference_stats, reference_key=source)
        for name, source in sources.items()
    ]

    write_text(layout.quarantine, pd.concat([quarantine_rows(t, r.name, unit) for r, t in checked], ignore_index=True).to_csv(index=False))
    reports = []
    for report, table in checked:
        # Readable offline: one self-contained page. GX's Data Docs load their styles, scripts and
        # icons from CDNs (unstyled without a network), so they stay on disk only, not in MLflow.
        page = layout.validation / f"{report.name}.html"
        write_text(page, render(asdict(report), table, unit=unit, run_name=tracker.run_name, data_docs=report.data_docs))
        tracker.log_artifact(layout.validation / f"{report.name}.json", "validation")
        tracker.log_artifact(page, "validation")
        tracker.log_params(report_params(asdict(report)))  # facts of the data: params, not one-point metric charts
        reports.append(replace(report, page=str(page)))
    tracker.log_artifact(layout.quarantine, "validation")

    for report in reports:
        (log.info if report.success else log.error)("%s", report.summary())
    markdown = f"## Data validation ({unit.name})\n\n" + "\n\n".join(r.markdown() for r in reports)
    tables = {r.name: str(layout.validation / f"{r.name}_table.csv") for r in reports}
    return Validated(all(r.success for r in reports), tuple(r.summary() for r in reports), tables, markdown)
