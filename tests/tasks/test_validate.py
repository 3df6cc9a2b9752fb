"""The validate stage's shell over each modality's part: the same files, logs and result for
images and for documents, and a source that cannot be read stops it before anything is written."""

import shutil

import pandas as pd
import pytest

import tasks.image.validate
import tasks.text.validate
from tasks.core.config import load_config
from tasks.core.context import StageContext
from tasks.core.layout import Layout
from tasks.image.checks import IMAGES, ImageChecks
from tasks.image.sources import SourceError
from tasks.text.checks import DOCUMENTS, DocumentChecks
from tasks.text.sources import read_documents
from tasks.validate import ValidatePart, validate
from tasks.validation.source_check import Checks
from tests.conftest import SAMPLE

PARTS = {"image": tasks.image.validate, "text": tasks.text.validate}
QUARANTINE = ["validate.on_fail=quarantine", "validate.max_bad_fraction=0.5", "validate.min_images=8"]


class Recorder:
    """A tracker that keeps what it is given."""

    run_name = "simclr-1a2b3c4d"

    def __init__(self):
        self.artifacts, self.params = [], {}

    def log_artifact(self, path, folder):
        assert path.exists(), path
        self.artifacts.append(f"{folder}/{path.name}")

    def log_artifacts(self, path, folder):
        assert (path / "index.html").exists(), path
        self.artifacts.append(folder)

    def log_params(self, params):
        assert all(isinstance(value, str) for value in params.values()), params
        assert not set(params) & set(self.params), "a param logged twice"
        self.params |= params


def _sources(modality, tmp_path, tiny_data, tiny_text):
    """Both sources, and the one bad row put into the unlabeled one (its name, its fault)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    if modality == "image":
        unlabeled = tmp_path / "pool"
        shutil.copytree(tiny_data["unlabeled"], unlabeled)
        (unlabeled / "page.jpg").write_text("<html>not an image</html>")
        return unlabeled, tiny_data["labeled"], ("page.jpg", "not_an_image")
    lines = [" ".join(d.text.split()) for d in read_documents(SAMPLE / "news.csv.gz")[:40]]
    unlabeled = tmp_path / "pool.txt"
    unlabeled.write_text("\n".join([*lines[:5], "ok", *lines[5:]]) + "\n")
    return unlabeled, tiny_text["labeled"], ("pool.txt:line 6", "too_short")


def _context(modality, root, unlabeled, labeled, overrides=()):
    method = ["pretrain.method=mlm"] if modality == "text" else []
    cfg = load_config(None, [f"data.unlabeled={unlabeled}", f"data.labeled={labeled}", *method, *overrides])
    return StageContext(Layout.at(root), cfg, Recorder(), modality=modality, part=PARTS[modality])


def test_both_parts_have_the_validate_interface(tmp_path, tiny_data, tiny_text):
    for modality, part in PARTS.items():
        assert isinstance(part, ValidatePart)
        ctx = _context(modality, tmp_path, *_sources(modality, tmp_path / modality, tiny_data, tiny_text)[:2])
        labeled = part.checks(ctx, labeled=True)
        assert isinstance(labeled, Checks) and labeled.labeled and not part.checks(ctx, labeled=False).labeled
    assert (ImageChecks.unit, DocumentChecks.unit) == (IMAGES, DOCUMENTS)


@pytest.mark.parametrize("modality", PARTS)
def test_the_shell_writes_and_logs_the_same_for_every_modality(modality, tmp_path, tiny_data, tiny_text):
    unlabeled, labeled, (bad, fault) = _sources(modality, tmp_path, tiny_data, tiny_text)
    ctx = _context(modality, tmp_path / "project", unlabeled, labeled, QUARANTINE)
    layout, unit = ctx.layout, ctx.part.checks(ctx, labeled=False).unit

    result = validate(ctx)
    assert result.success, result.summaries
    assert [s.split(":")[0] for s in result.summaries] == ["unlabeled", "labeled"] and "quarantined" in result.summaries[0]
    assert result.tables == {name: str(layout.validation / f"{name}_table.csv") for name in ("unlabeled", "labeled")}
    assert result.markdown.startswith(f"## Data validation ({unit.name})") and "### unlabeled: passed" in result.markdown

    quarantine = pd.read_csv(layout.quarantine)
    assert list(quarantine.columns) == ["path", "fault", "detail", "dataset"]
    assert quarantine[["path", "fault", "dataset"]].values.tolist() == [[bad, fault, "unlabeled"]]
    table = pd.read_csv(layout.validation / "unlabeled_table.csv")
    assert not table.loc[table[unit.key] == bad, "accepted"].any() and table["accepted"].sum() == len(table) - 1

    page = (layout.validation / "unlabeled.html").read_text()
    assert f"{unit.name} checked" in page and f"Offending {unit.rows}" in page and bad in page and unit.faults[fault] in page
    assert ctx.tracker.run_name in page
    assert sorted(ctx.tracker.artifacts) == sorted(
        [f"validation/{n}.{ext}" for n in ("unlabeled", "labeled") for ext in ("json", "html")] + ["validation/quarantine.csv"]
    )  # not GX's Data Docs (their styles come from CDNs): the self-contained page is the report
    assert f"report: {layout.validation / 'unlabeled.html'}" in result.summaries[0]
    assert ctx.tracker.params[f"validation/unlabeled/fault/{fault}"] == "1"
    assert ctx.tracker.params["validation/unlabeled/accepted"] == str(len(table) - 1)

    # A rerun replaces the Data Docs whole and leaves no staging names behind.
    assert validate(_context(modality, tmp_path / "project", unlabeled, labeled, QUARANTINE)).success
    assert list(layout.validation.rglob(".staging-*")) == [] and (layout.validation / "data_docs" / "unlabeled" / "index.html").exists()


@pytest.mark.parametrize("modality", PARTS)
def test_a_source_that_cannot_be_read_is_one_line_and_writes_nothing(modality, tmp_path, tiny_data, tiny_text):
    unlabeled, labeled, _ = _sources(modality, tmp_path, tiny_data, tiny_text)
    missing = tmp_path / ("missing" if modality == "image" else "missing.txt")
    ctx = _context(modality, tmp_path / "project", unlabeled, labeled)
    ctx = StageContext(ctx.layout, ctx.cfg.model_copy(update={"data": ctx.cfg.data.model_copy(update={"unlabeled": str(missing)})}),
                       ctx.tracker, modality=modality, part=ctx.part)  # fmt: skip
    with pytest.raises(SourceError) as err:
        validate(ctx)
    assert str(missing) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "project" / "reports").exists() and ctx.tracker.artifacts == []
