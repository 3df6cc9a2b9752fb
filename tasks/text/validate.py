"""The text part of validate: both sources of documents through the GX checkpoint (tasks/text/checks.py)."""

from __future__ import annotations

import json

from tasks.core.atomic import write_text
from tasks.core.context import StageContext
from tasks.core.results import Validated
from tasks.text.checks import TextRules, validate_text
from tasks.validation.html import render
from tasks.validation.report import report_metrics
from tasks.validation.source_check import write_csv


def text_rules(ctx: StageContext) -> TextRules:
    """``validate.*`` as text validation's rules."""
    return TextRules.from_config(ctx.cfg.validate)


def validate(ctx: StageContext) -> Validated:
    """Both text sources through their GX checkpoints; the same reports and quarantine list as images."""
    layout, cfg = ctx.layout, ctx.cfg
    reports, bad = validate_text(
        layout.source(cfg.data.unlabeled), layout.source(cfg.data.labeled), layout.validation, layout.reference_stats, text_rules(ctx),
        cfg.validate.on_fail, cfg.validate.max_bad_fraction, cfg.data.text_columns, cfg.data.label_column,
    )  # fmt: skip
    write_csv(bad, layout.quarantine)
    import pandas as pd

    for report in reports:
        saved = json.loads((layout.validation / f"{report.name}.json").read_text())
        table = pd.read_csv(layout.validation / f"{report.name}_table.csv").rename(columns={"location": "path"})
        write_text(layout.validation / f"{report.name}.html", render(saved, table, run_name=ctx.tracker.run_name, data_docs=report.data_docs))
        ctx.tracker.log_artifact(layout.validation / f"{report.name}.json", "validation")
        ctx.tracker.log_artifact(layout.validation / f"{report.name}.html", "validation")
        ctx.tracker.log_metrics(report_metrics(saved))
        ctx.tracker.log_artifacts(layout.validation / "data_docs" / report.name, f"validation/data_docs/{report.name}")
    ctx.tracker.log_artifact(layout.quarantine, "validation")
    markdown = "## Data validation (text)\n\n" + "\n\n".join(r.markdown() for r in reports)
    tables = {r.name: str(layout.validation / f"{r.name}_table.csv") for r in reports}
    return Validated(all(r.success for r in reports), tuple(r.summary() for r in reports), tables, markdown)

