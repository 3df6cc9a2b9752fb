"""Ingest stage: validated image files -> decoded uint8 arrays, once.

Training then reads one ``.npy`` instead of thousands of JPEGs. Outputs are written to
a temporary folder and renamed into place, so a failure never leaves half a dataset.

    data/prepared/unlabeled/  images.npy (N, H, W, 3) uint8, manifest.csv (path, sha256)
    data/prepared/labeled/    {train,test}_images.npy, {train,test}_labels.npy, classes.json
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config import PipelineConfig
from tasks.imaging import to_rgb
from tasks.layout import Layout
from tasks.sources import SourceError, list_images, open_source


def load_rgb(path: Path, size: int) -> np.ndarray:
    """Decode to RGB, centre-crop to a square, resize to ``size``: (size, size, 3) uint8.

    Grayscale, alpha, palette, CMYK and 16-bit images are converted (:func:`tasks.imaging.to_rgb`);
    validation has already refused anything else.
    """
    with Image.open(path) as image:
        image = to_rgb(image)
        side = min(image.size)
        if image.width != image.height:
            left, top = (image.width - side) // 2, (image.height - side) // 2
            image = image.crop((left, top, left + side, top + side))
        if side != size:
            image = image.resize((size, size), Image.Resampling.BICUBIC)
        return np.asarray(image, dtype=np.uint8)


def _publish(tmp: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` with the finished ``tmp`` folder in one rename."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)


def _staging(out_dir: Path) -> Path:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))


def ingest_unlabeled(source: str | Path, table_csv: Path, out_dir: Path, image_size: int, downloads: Path | None = None) -> int:
    """Decode the files the validation table accepted; returns the image count."""
    accepted = _accepted(table_csv)
    if accepted is None:
        raise SourceError(f"{table_csv}: no validation table; run `sslpipe validate` first")
    if accepted.empty:
        raise SourceError(f"{table_csv}: validation accepted no images; see `sslpipe validate` for why")
    tmp = _staging(out_dir)
    try:
        with open_source(source, downloads) as root:
            images = np.stack([_load_validated(root, p, image_size) for p in accepted["path"]])
        np.save(tmp / "images.npy", images)
        accepted[["path", "sha256"]].to_csv(tmp / "manifest.csv", index=False)
        _publish(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return len(images)


def _load_validated(root: Path, relpath: str, size: int) -> np.ndarray:
    try:
        return load_rgb(root / relpath, size)
    except Exception as err:  # validation decoded it, so the file changed since
        problem = f"{type(err).__name__}: {err}"
        raise SourceError(f"{relpath}: cannot be decoded now ({problem}); it changed since validation, run `sslpipe validate` again") from None


def _accepted(table_csv: Path) -> pd.DataFrame | None:
    """The rows validation accepted (a table without that column: all of them); None without a table."""
    if not table_csv.exists():
        return None
    table = pd.read_csv(table_csv, keep_default_na=False, na_values=[""])  # a file may be called "NA.jpg"
    return table[table["accepted"].astype(str).str.lower() == "true"] if "accepted" in table else table


def _class_folders(root: Path, keep: set[str] | None = None) -> dict[str, list[Path]]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return {folder.name: [p for p in list_images(folder) if keep is None or p.as_posix() in keep] for folder in folders}


def ingest_labeled(
    source: str | Path,
    out_dir: Path,
    image_size: int,
    test_fraction: float = 0.2,
    downloads: Path | None = None,
    table_csv: Path | None = None,
) -> dict[str, int]:
    """A labeled folder (``train/<class>/``, ``test/<class>/``, or just ``<class>/``) -> arrays.

    Without a train/test split, every class is split deterministically (by sorted
    file name) with ``test_fraction`` going to test. With ``table_csv`` (the validation
    table), only the files validation accepted are used: quarantined ones are left out.
    """
    tmp = _staging(out_dir)
    try:
        with open_source(source, downloads) as root:
            accepted = _accepted(table_csv) if table_csv is not None else None
            keep = None if accepted is None else {(root / p).as_posix() for p in accepted["path"]}
            if (root / "train").is_dir() and (root / "test").is_dir():
                splits = {"train": _class_folders(root / "train", keep), "test": _class_folders(root / "test", keep)}
            else:
                splits = {"train": {}, "test": {}}
                for name, files in _class_folders(root, keep).items():
                    n_test = max(1, round(test_fraction * len(files)))
                    splits["train"][name], splits["test"][name] = files[n_test:], files[:n_test]
            classes = sorted(set(splits["train"]) | set(splits["test"]))
            if len(classes) < 2:
                raise SourceError(f"{source}: a labeled set needs at least two class folders, found {classes}")
            counts = {}
            for split, by_class in splits.items():
                files = [(path, classes.index(name)) for name, paths in by_class.items() for path in paths]
                if not files:
                    raise SourceError(f"{source}: the {split} split has no images")
                np.save(tmp / f"{split}_images.npy", np.stack([load_rgb(path, image_size) for path, _ in files]))
                np.save(tmp / f"{split}_labels.npy", np.array([label for _, label in files], dtype=np.int64))
                counts[split] = len(files)
        (tmp / "classes.json").write_text(json.dumps(classes))
        _publish(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return counts


def ingest_stage(layout: Layout, cfg: PipelineConfig) -> dict[str, int]:
    """Decode both validated sources into ``data/prepared``; returns image counts."""
    size = cfg.data.image_size
    for name in ("unlabeled", "labeled"):
        report = layout.validation / f"{name}.json"
        if report.exists() and not json.loads(report.read_text())["success"]:
            raise SourceError(f"{report}: the {name} data failed validation; nothing is ingested (see `sslpipe validate`)")
    counts = {"unlabeled": ingest_unlabeled(cfg.data.unlabeled, layout.validation / "unlabeled_table.csv", layout.unlabeled, size, layout.downloads)}
    table = layout.validation / "labeled_table.csv"
    labeled = ingest_labeled(cfg.data.labeled, layout.labeled, size, cfg.data.test_fraction, layout.downloads, table if table.exists() else None)
    return counts | {f"labeled_{split}": n for split, n in labeled.items()}


# The Prefect task is the stage function as-is. No result caching: inputs are a layout
# and a config, and DVC already decides what is stale from content hashes.
ingest_task = task(ingest_stage, name="ingest", cache_policy=NO_CACHE)
