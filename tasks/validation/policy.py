"""The stop/quarantine policy: what ``validate.on_fail`` makes of a checkpoint's result, for any table.

stop         any bad row, or a failed dataset-level expectation: nothing is trained
quarantine   at most ``validate.max_bad_fraction`` bad rows are left out (reports/quarantine.csv),
             and the good rows alone must pass the suite again; else nothing is trained
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from tasks.core.config import ValidateConfig
from tasks.validation.report import Failure


@dataclass(frozen=True)
class Verdict:
    success: bool
    decision: str
    quarantine_failures: list[Failure] = field(default_factory=list)  # failed expectations over the good rows only


def decide(
    table: pd.DataFrame,
    passed: bool,
    recheck: Callable[[pd.DataFrame], tuple[bool, list[Failure]]],
    cfg: ValidateConfig,
    source: str,
    rows: str = "rows",
) -> Verdict:
    """Apply ``validate.on_fail`` to the first checkpoint's result (``passed``) over ``table``.

    ``recheck(good)`` runs the suite again over the good rows only: (passed, failures).
    ``rows`` is what a row is ("image files", "documents"), as the decision names them.
    """
    bad, total = int(table["fault"].notna().sum()), len(table)
    share = f"{bad} of {total} {rows} bad ({bad / max(total, 1):.1%})"
    if passed:
        return Verdict(True, f"all {total} {rows} from {source} passed")
    if cfg.on_fail == "stop" or bad == 0:
        what = share if bad else "the dataset as a whole failed (see the failed expectations)"
        return Verdict(False, f"{source}: {what}; validate.on_fail={cfg.on_fail}, so nothing is trained")
    if bad / total > cfg.max_bad_fraction:
        return Verdict(False, f"{source}: {share}, above validate.max_bad_fraction={cfg.max_bad_fraction:.1%}; nothing is trained")
    good_passed, remaining = recheck(table[table["fault"].isna()])
    if good_passed:
        return Verdict(True, f"{source}: {share}, quarantined (reports/quarantine.csv); training on the other {total - bad}", remaining)
    return Verdict(False, f"{source}: {share} quarantined, but the remaining {total - bad} still fail; nothing is trained", remaining)
