"""One validation path for every modality: the same stop/quarantine decision, the same quarantine
rows and the same drift reference for a table of images and a table of documents."""

import json

import pandas as pd
import pytest

from tasks.core.config import ValidateConfig
from tasks.image.checks import IMAGES, ImageChecks
from tasks.text.checks import DOCUMENTS, DocumentChecks
from tasks.validation.drift_reference import load_reference, save_reference
from tasks.validation.policy import decide
from tasks.validation.report import DataValidationError, Failure
from tasks.validation.source_check import mark_fault, quarantine_rows

UNITS = (IMAGES, DOCUMENTS)


def _table(unit, bad: int, total: int = 20) -> pd.DataFrame:
    faults = [next(iter(unit.faults))] * bad + [None] * (total - bad)
    return pd.DataFrame({unit.key: [f"item{i}" for i in range(total)], "fault": faults, "detail": [f and "why" for f in faults]})


SCENARIOS = [  # (on_fail, max_bad_fraction, bad rows of 20, first checkpoint passed, good rows pass again) -> success, words
    ("stop", 0.05, 0, True, True, True, "all 20 {rows} from src passed"),
    ("stop", 0.05, 1, False, True, False, "src: 1 of 20 {rows} bad (5.0%); validate.on_fail=stop, so nothing is trained"),
    (
        "quarantine",
        0.05,
        0,
        False,
        True,
        False,
        "src: the dataset as a whole failed (see the failed expectations); validate.on_fail=quarantine",
    ),
    (
        "quarantine",
        0.05,
        2,
        False,
        True,
        False,
        "src: 2 of 20 {rows} bad (10.0%), above validate.max_bad_fraction=5.0%; nothing is trained",
    ),
    (
        "quarantine",
        0.1,
        2,
        False,
        True,
        True,
        "src: 2 of 20 {rows} bad (10.0%), quarantined (reports/quarantine.csv); training on the other 18",
    ),
    ("quarantine", 0.1, 2, False, False, False, "src: 2 of 20 {rows} bad (10.0%) quarantined, but the remaining 18 still fail"),
]


@pytest.mark.parametrize(("on_fail", "fraction", "bad", "passed", "good_pass", "success", "words"), SCENARIOS)
def test_the_same_policy_decides_the_same_for_images_and_documents(on_fail, fraction, bad, passed, good_pass, success, words):
    cfg = ValidateConfig(on_fail=on_fail, max_bad_fraction=fraction)
    rechecked = []

    def recheck(good):
        rechecked.append(len(good))
        return good_pass, [Failure("expect_table_row_count_to_be_between", None, 1, observed="observed 18")]

    verdicts = {unit.name: decide(_table(unit, bad), passed, recheck, cfg, "src", unit.rows) for unit in UNITS}
    for unit in UNITS:
        verdict = verdicts[unit.name]
        assert verdict.success is success
        assert verdict.decision.startswith(words.format(rows=unit.rows)), verdict.decision
    # One wording apart, the decisions are the same; only a quarantine runs the good rows again.
    image, text = verdicts["images"], verdicts["documents"]
    assert image.decision.replace(IMAGES.rows, DOCUMENTS.rows) == text.decision
    assert image.quarantine_failures == text.quarantine_failures
    assert rechecked == ([18, 18] if "quarantined" in words else [])


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_the_first_broken_rule_is_the_fault_and_the_bad_rows_go_to_quarantine(unit):
    table = _table(unit, 0, total=4).assign(fault=None, detail=None, size=[1, 50, 500, 5000])
    mark_fault(table, "too_small", table["size"] < 100, lambda r: f"{r['size']} is small")
    mark_fault(table, "too_large", table["size"] > 10, lambda r: f"{r['size']} is large")  # item1 is too small already
    assert table["fault"].tolist() == ["too_small", "too_small", "too_large", "too_large"]
    assert table["detail"].tolist() == ["1 is small", "50 is small", "500 is large", "5000 is large"]
    rows = quarantine_rows(table, "unlabeled", unit)
    assert rows.columns.tolist() == ["path", "fault", "detail", "dataset"] and rows["path"].tolist() == ["item0", "item1", "item2", "item3"]
    assert quarantine_rows(table.assign(fault=None), "labeled", unit).empty


@pytest.mark.parametrize("checks", [ImageChecks(ValidateConfig()), DocumentChecks(ValidateConfig())], ids=lambda c: c.unit.name)
def test_one_drift_reference_file_per_source_for_every_modality(tmp_path, checks):
    path, stats = tmp_path / "reference_stats.json", dict.fromkeys(checks.stat_columns, 0.5)
    assert load_reference(path, "unlabeled", "src", checks.check_reference) is None  # never passed: no reference
    entry = {checks.unit.name: 20, "statistics": stats, **({"vocabulary": ["news"]} if checks.unit is DOCUMENTS else {})}
    save_reference(path, "unlabeled", "src", entry)
    save_reference(path, "unlabeled", "other", {**entry, checks.unit.name: 3})
    assert load_reference(path, "unlabeled", "src", checks.check_reference) == entry
    assert load_reference(path, "labeled", "src", checks.check_reference) is None

    damaged = json.loads(path.read_text())
    damaged["unlabeled"]["src"]["statistics"][checks.stat_columns[0]] = "x"
    path.write_text(json.dumps(damaged))
    with pytest.raises(DataValidationError, match="not a valid drift reference"):
        load_reference(path, "unlabeled", "src", checks.check_reference)
    path.write_text("{not json")
    with pytest.raises(DataValidationError, match="fix or delete it"):
        load_reference(path, "unlabeled", "src", checks.check_reference)
