"""The text part of validate: the document checks (tasks/text/checks.py), reading the columns
the config names; the shell (tasks/validate.py) does the rest."""

from __future__ import annotations

from tasks.core.context import StageContext
from tasks.text.checks import DocumentChecks


def checks(ctx: StageContext, labeled: bool) -> DocumentChecks:
    data = ctx.cfg.data
    return DocumentChecks(ctx.cfg.validate, labeled=labeled, text_columns=data.text_columns, label_column=data.label_column)
