"""The self-contained validation report, rendered from a real GX validation of a folder
with bad files: everything a reader needs is on the page, and nothing comes from a network."""

import re
from dataclasses import asdict
import shutil
from html.parser import HTMLParser

import pandas as pd
import pytest

from tasks.core.config import load_config
from tasks.validate import check_source
from tasks.validation.html import render


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
    first = sorted(folder.iterdir())[0]
    shutil.copy(first, folder / "copy_of_first.jpg")  # duplicate
    (folder / "notes.jpg").write_text("not an image at all")  # not_an_image
    (folder / "empty.png").write_bytes(b"")  # empty
    return folder


def test_failed_report_names_each_fault_and_file_and_loads_nothing(tmp_path, dump):
    cfg = load_config(None, ["validate.min_images=8"]).validate
    report, table = check_source(dump, "unlabeled", cfg, tmp_path / "out", image_size=32)
    assert not report.success
    html = render(asdict(report), pd.read_csv(tmp_path / "out" / "unlabeled_table.csv"), run_name="simclr-1a2b3c4d")

    parser = _Tags()
    parser.feed(html)
    assert parser.urls == [] and "script" not in parser.tags and "link" not in parser.tags
    assert not re.search(r"https?://", html)  # no CDN, no web font
    assert "FAILED" in html and "simclr-1a2b3c4d" in html
    for fault, name in (("duplicate", "copy_of_first.jpg"), ("not_an_image", "notes.jpg"), ("empty", "empty.png")):
        assert fault in html and name in html
    assert "images checked" in html and f"<b>{report.images}</b>" in html


def test_passing_report_without_a_table(tmp_path, tiny_data):
    cfg = load_config(None, ["validate.min_images=8"]).validate
    report, _ = check_source(tiny_data["unlabeled"], "unlabeled", cfg, tmp_path / "out", image_size=32)
    html = render(asdict(report))
    assert report.success and "passed" in html and "Offending files" not in html
