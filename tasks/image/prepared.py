"""The prepared (decoded) images: written by ingest and `sslpipe finetune`, read by every
later stage. The one place that knows their format on disk.

    unlabeled/  shards (tasks/image/shards.py: uint8 pixels, streamed in and out), manifest.csv
                (path, sha256), counts.json
    labeled/    {train,test}_images.npy, {train,test}_labels.npy, classes.json, counts.json

The unlabeled pool is what grows to a million images: it is written one image at a time and
read a batch at a time, so memory does not grow with it. The labeled evaluation set is held
in memory (it is the small, labeled part).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from tasks.image.imaging import hash_file, to_rgb
from tasks.image.shards import ShardReader, ShardWriter
from tasks.image.sources import MIN_PER_CLASS, SourceError, list_images, open_source


def load_rgb(path: Path, size: int) -> np.ndarray:
    """Decode to RGB, centre-crop to a square, resize to ``size``: (size, size, 3) uint8.

    Grayscale, alpha, palette, CMYK and 16-bit images are converted (:func:`tasks.image.imaging.to_rgb`);
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


def accepted_rows(table_csv: Path) -> pd.DataFrame:
    """The rows validation accepted. Fails closed: no table, or one without the ``accepted``
    column, is an error, never "accept everything"."""
    if not Path(table_csv).exists():
        raise SourceError(f"{table_csv}: no validation table; run `sslpipe validate` first")
    table = pd.read_csv(table_csv, keep_default_na=False, na_values=[""])  # a file may be called "NA.jpg"
    if "accepted" not in table:
        raise SourceError(f"{table_csv}: has no 'accepted' column (not written by this version's validation); run `sslpipe validate` again")
    return table[table["accepted"].astype(str).str.lower() == "true"]


def _missing_folder(root: Path, relpath: str) -> Path | None:
    """The outermost folder of ``relpath`` (or ``root`` itself) that no longer exists, if any."""
    if not root.exists():
        return root
    folder = root
    for part in Path(relpath).parent.parts:
        folder = folder / part
        if not folder.exists():
            return folder
    return None


def _gone(root: Path, relpath: str) -> SourceError:
    folder = _missing_folder(root, relpath)
    if folder is not None:
        return SourceError(f"{folder}: the folder is gone since validation (it held {relpath}); restore it or run `sslpipe validate` again")
    return SourceError(f"{relpath}: the file is gone since validation; restore it or run `sslpipe validate` again")


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.0f} KB" if n >= 2**10 else f"{n} bytes"


def check_unchanged(root: Path, accepted: pd.DataFrame, limit: int = 3) -> None:
    """Refuse files that changed since validation, by name, before anything is decoded.

    Size and mtime are compared with the validation table; a file where either differs is
    hashed, and only a different content is a change (a copy that kept the bytes is fine).
    A vanished file names the outermost folder that vanished with it."""
    changed = []
    for row in accepted[["path", "bytes", "mtime_ns", "sha256"]].itertuples(index=False):
        try:
            info = (root / row.path).stat()
        except FileNotFoundError:
            raise _gone(root, row.path) from None
        if info.st_size == int(row.bytes) and info.st_mtime_ns == int(row.mtime_ns):
            continue
        if hash_file(root / row.path)[0] != row.sha256:
            changed.append(f"{row.path} ({_size(int(row.bytes))} -> {_size(info.st_size)})")
    if changed:
        more = f" and {len(changed) - limit} more" if len(changed) > limit else ""
        raise SourceError(
            f"{len(changed)} file(s) changed since validation: {', '.join(changed[:limit])}{more}; "
            "run `sslpipe validate` again to check them"
        )


def _decode_validated(root: Path, relpath: str, size: int) -> np.ndarray:
    try:
        return load_rgb(root / relpath, size)
    except FileNotFoundError:
        raise _gone(root, relpath) from None
    except Exception as err:  # noqa: BLE001 - validation decoded it, so the file changed since, in whatever way
        problem = f"{type(err).__name__}: {err}"
        raise SourceError(
            f"{relpath}: cannot be decoded now ({problem}); it changed since validation, run `sslpipe validate` again"
        ) from None


def write_unlabeled(source: str | Path, table_csv: Path, out_dir: Path, image_size: int, downloads: Path | None = None) -> int:
    """Decode the files the validation table accepted into ``out_dir``; returns the image count."""
    accepted = accepted_rows(table_csv)
    if accepted.empty:
        raise SourceError(f"{table_csv}: validation accepted no images; see `sslpipe validate` for why")
    out_dir.mkdir(parents=True, exist_ok=True)
    with open_source(source, downloads) as root, ShardWriter(out_dir, image_size, len(accepted)) as writer:
        check_unchanged(root, accepted)
        for path in accepted["path"]:  # one decoded image in memory at a time
            writer.add(_decode_validated(root, path, image_size))
    accepted[["path", "sha256"]].to_csv(out_dir / "manifest.csv", index=False)
    (out_dir / "counts.json").write_text(json.dumps({"unlabeled": len(accepted)}))
    return len(accepted)


def _class_folders(root: Path, keep: set[str]) -> dict[str, list[Path]]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return {folder.name: [p for p in list_images(folder) if p.as_posix() in keep] for folder in folders}


def write_labeled(
    source: str | Path, table_csv: Path, out_dir: Path, image_size: int, test_fraction: float = 0.2, downloads: Path | None = None
) -> dict[str, int]:
    """A labeled folder (``train/<class>/``, ``test/<class>/``, or just ``<class>/``) -> arrays in ``out_dir``.

    Only the files the validation table accepted are used. Without a train/test split, every
    class is split deterministically (by sorted file name) with ``test_fraction`` going to test.
    """
    accepted = accepted_rows(table_csv)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open_source(source, downloads) as root:
        check_unchanged(root, accepted)
        keep = {(root / p).as_posix() for p in accepted["path"]}
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
        short = [f"{split}/{name}" for split, by_class in splits.items() for name in classes if not by_class.get(name)]
        if short:  # validation refuses these (tasks/image/checks.py); a table from before that rule may not
            raise SourceError(
                f"{source}: no accepted images for class(es) {', '.join(short)} in that split; every class needs at least "
                f"{MIN_PER_CLASS} accepted images (at least one for train and one for test)"
            )
        counts = {}
        for split, by_class in splits.items():
            files = [(path, classes.index(name)) for name, paths in by_class.items() for path in paths]
            if not files:
                raise SourceError(f"{source}: the {split} split has no images")
            images = [_decode_validated(root, path.relative_to(root).as_posix(), image_size) for path, _ in files]
            np.save(out_dir / f"{split}_images.npy", np.stack(images))
            np.save(out_dir / f"{split}_labels.npy", np.array([label for _, label in files], dtype=np.int64))
            counts[split] = len(files)
    (out_dir / "classes.json").write_text(json.dumps(classes))
    (out_dir / "counts.json").write_text(json.dumps(counts))
    return counts


def load_images(images_npy: Path) -> torch.Tensor:
    """(N, H, W, 3) uint8 on disk -> (N, 3, H, W) uint8 tensor."""
    return torch.from_numpy(np.load(images_npy)).permute(0, 3, 1, 2).contiguous()


def open_unlabeled(unlabeled_dir: Path | str) -> ShardReader:
    """The unlabeled pool as an ``ImageSource``: batches read from disk on demand."""
    return ShardReader(unlabeled_dir)


def preview_images(unlabeled_dir: Path | str, count: int) -> torch.Tensor:
    """The first ``count`` images as float (n, 3, H, W) in [0, 1], without reading the rest."""
    reader = ShardReader(unlabeled_dir)
    try:
        return reader.read(range(min(count, len(reader)))).float().contiguous() / 255
    finally:
        reader.close()


def load_labeled(labeled_dir: Path | str) -> dict[str, torch.Tensor]:
    labeled_dir = Path(labeled_dir)
    data = {f"{split}_images": load_images(labeled_dir / f"{split}_images.npy") for split in ("train", "test")}
    data |= {f"{split}_labels": torch.from_numpy(np.load(labeled_dir / f"{split}_labels.npy")) for split in ("train", "test")}
    return data


def load_classes(labeled_dir: Path | str) -> list[str]:
    return json.loads((Path(labeled_dir) / "classes.json").read_text())


def load_counts(folder: Path | str) -> dict[str, int]:
    return json.loads((Path(folder) / "counts.json").read_text())
