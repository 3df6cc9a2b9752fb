"""Validate stage: both sources through the GX checkpoint (tasks/validation/source_check.py).

Nothing is trained on data that did not pass. Writes, per source, the report (JSON, and a
self-contained HTML page), the table with its ``accepted`` column and GX Data Docs under
``reports/validation/``, every bad file
in ``reports/quarantine.csv``, and logs them all into the run. Bad data is a result
(``Validated.success`` is False), not an exception: the flow ends Failed with the report,
the CLI prints it and exits 2.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict

import pandas as pd

from tasks.core.atomic import write_text
from tasks.core.context import StageContext
from tasks.core.results import Validated
from tasks.validation.source_check import check_source, write_csv
from tasks.validation.html import render
from tasks.validation.report import report_metrics

log = logging.getLogger(__name__)


def validate(ctx: StageContext) -> Validated:
    layout, cfg = ctx.layout, ctx.cfg
    reports, bad = [], []
    for name, source in (("unlabeled", cfg.data.unlabeled), ("labeled", cfg.data.labeled)):
        report, table = check_source(
            layout.source(source), name, cfg.validate, layout.validation, layout.downloads,
            image_size=cfg.data.image_size, reference=layout.reference_stats, reference_key=source,
            cache_dir=layout.validation_cache, labeled=name == "labeled",
        )  # fmt: skip
        reports.append(report)
        bad.append(table.loc[table["fault"].notna(), ["path", "fault", "detail"]].assign(dataset=name))
        # Readable offline (GX Data Docs load their assets from CDNs): one self-contained page.
        write_text(layout.validation / f"{name}.html", render(asdict(report), table, run_name=ctx.tracker.run_name, data_docs=report.data_docs))
    write_csv(pd.concat(bad, ignore_index=True), layout.quarantine)

    tracker = ctx.tracker
    for report in reports:
        tracker.log_artifact(layout.validation / f"{report.name}.json", "validation")
        tracker.log_artifact(layout.validation / f"{report.name}.html", "validation")
        tracker.log_metrics(report_metrics(json.loads((layout.validation / f"{report.name}.json").read_text())))
        tracker.log_artifacts(layout.validation / "data_docs" / report.name, f"validation/data_docs/{report.name}")
    tracker.log_artifact(layout.quarantine, "validation")
    markdown = "## Data validation\n\n" + "\n\n".join(r.markdown() for r in reports)
    tables = {r.name: str(layout.validation / f"{r.name}_table.csv") for r in reports}
    for report in reports:
        (log.info if report.success else log.error)("%s", report.summary())
    return Validated(all(r.success for r in reports), tuple(r.summary() for r in reports), tables, markdown)
