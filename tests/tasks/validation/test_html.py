"""The self-contained validation report, rendered from a real GX validation of a folder
with bad files: everything a reader needs is on the page, and nothing comes from a network."""

import re
import shutil
from dataclasses import asdict
from html.parser import HTMLParser

import pandas as pd
import pytest

from tasks.core.config import load_config
from tasks.image.checks import IMAGES, ImageChecks
from tasks.text.checks import DOCUMENTS
from tasks.validation.html import render
from tasks.validation.source_check import run_checks


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.urls = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [v for k, v in attrs if k in {"src", "href"} and v]


@pytest.fixture
def dump(tmp_path, tiny_data):
    folder = tmp_path / "dump"
    folder.mkdir()
    for image in sorted(tiny_data["unlabeled"].rglob("*.jpg"))[:12]:
        shutil.copy(image, folder / image.name)
    first = min(folder.iterdir())
    shutil.copy(first, folder / "copy_of_first.jpg")  # duplicate
    (folder / "notes.jpg").write_text("not an image at all")  # not_an_image
    (folder / "empty.png").write_bytes(b"")  # empty
    return folder


def test_failed_report_names_each_fault_and_file_and_loads_nothing(tmp_path, dump):
    cfg = load_config(None, ["validate.min_images=8"]).validate
    report, _ = run_checks(ImageChecks(cfg, 32), dump, "unlabeled", tmp_path / "out")
    assert not report.success
    html = render(asdict(report), pd.read_csv(tmp_path / "out" / "unlabeled_table.csv"), unit=IMAGES, run_name="simclr-1a2b3c4d")

    parser = _Tags()
    parser.feed(html)
    assert parser.urls == [] and "script" not in parser.tags and "link" not in parser.tags
    assert not re.search(r"https?://", html)  # no CDN, no web font
    assert "FAILED" in html and "simclr-1a2b3c4d" in html
    for fault, name in (("duplicate", "copy_of_first.jpg"), ("not_an_image", "notes.jpg"), ("empty", "empty.png")):
        assert fault in html and name in html
    assert "images checked" in html and f"<b>{report.images}</b>" in html
    assert "Offending image files" in html and IMAGES.faults["not_an_image"] in html
    assert "becomes the reference" not in html and "does not become the reference" in html  # failed data never does


def test_passing_report_without_a_table(tmp_path, tiny_data):
    cfg = load_config(None, ["validate.min_images=8"]).validate
    report, _ = run_checks(ImageChecks(cfg, 32), tiny_data["unlabeled"], "unlabeled", tmp_path / "out")
    html = render(asdict(report), unit=IMAGES)
    assert report.success and "passed" in html and "Offending" not in html
    assert "this data becomes the reference" in html


def test_the_unit_names_the_rows_and_explains_the_faults():
    report = {"name": "unlabeled", "success": False, "images": 3, "faults": {"too_short": 1}, "statistics": {"mean_words": 5.0}}
    table = pd.DataFrame({"location": ["a.txt:line 2", "a.txt:line 1"], "fault": ["too_short", None], "detail": ["2 characters", None]})
    html = render(report, table, unit=DOCUMENTS)
    assert "documents checked" in html and "Offending documents" in html and "a.txt:line 2" in html
    assert DOCUMENTS.faults["too_short"] in html and "good documents" in html
    assert "images" not in html and "files" not in html
