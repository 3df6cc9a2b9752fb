"""Image sources: a folder, a tar archive of one, or a torchvision dataset.

Every source is turned into a local folder first, so later code only ever walks a
directory tree.
"""

from __future__ import annotations

import contextlib
import hashlib
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
TORCHVISION_PREFIX = "torchvision:"


class SourceError(ValueError):
    """The source does not exist or cannot be read; the message names it."""


def is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def list_images(root: Path) -> list[Path]:
    """Image files under ``root`` (recursive, sorted), hidden files and folders skipped."""
    return sorted(
        path
        for path in root.rglob("*")
        if path.suffix.lower() in IMAGE_EXTENSIONS and not is_hidden(path.relative_to(root)) and path.is_file()
    )


def _single_top_folder(root: Path) -> Path:
    """A tar of ``photos/`` unpacks to ``tmp/photos``: descend into such a lone folder."""
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else root


@contextlib.contextmanager
def open_source(source: str | Path, downloads: Path | None = None) -> Iterator[Path]:
    """Yield a local folder holding the source's images."""
    text = str(source)
    if text.startswith(TORCHVISION_PREFIX):
        yield export_torchvision(text[len(TORCHVISION_PREFIX):], downloads or Path("data/downloads"))
        return
    path = Path(source)
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder")
    if path.is_dir():
        yield path
        return
    if not tarfile.is_tarfile(path):
        raise SourceError(f"{path}: not a folder and not a tar archive")
    with tempfile.TemporaryDirectory(prefix="sslpipe-") as tmp:
        try:
            with tarfile.open(path) as archive:
                # The "data" filter refuses absolute paths, links out of the tree and devices.
                archive.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError) as err:
            raise SourceError(f"{path}: cannot unpack the archive: {err}") from None
        yield _single_top_folder(Path(tmp))


def export_torchvision(spec: str, downloads: Path, download: bool = True) -> Path:
    """Write a torchvision dataset out as an image folder and return it.

    ``spec`` is ``NAME`` or ``NAME/SPLIT`` (e.g. ``CIFAR10``, ``CIFAR10/test``,
    ``STL10/unlabeled``). The download happens once; the export is reused.
    Labeled datasets are exported as ``<class>/`` folders.
    """
    import torchvision.datasets as tvd

    name, _, split = spec.partition("/")
    target = downloads / "exports" / f"{name}-{split or 'train'}"
    if (target / ".complete").exists():
        return target
    if not hasattr(tvd, name):
        raise SourceError(f"torchvision:{spec}: torchvision has no dataset {name!r}")
    cls = getattr(tvd, name)
    raw = downloads / name
    try:
        if name in {"STL10", "SVHN"}:
            dataset = cls(str(raw), split=split or "train", download=download)
        else:
            dataset = cls(str(raw), train=(split or "train") == "train", download=download)
    except (RuntimeError, OSError) as err:
        raise SourceError(f"torchvision:{spec}: {err}") from None
    return export_dataset(dataset, target)


def export_dataset(dataset, target: Path) -> Path:
    """Write any torchvision-style dataset of (PIL image, label) as PNG files.

    Labeled datasets become ``<class>/`` folders; unlabeled ones (label -1 or None,
    as STL10's unlabeled split) go to ``unlabeled/``.
    """
    classes = getattr(dataset, "classes", None)
    target.mkdir(parents=True, exist_ok=True)
    for index in range(len(dataset)):
        image, label = dataset[index]
        labeled = classes and label is not None and label >= 0
        folder = target / (classes[label] if labeled else "unlabeled")
        folder.mkdir(exist_ok=True)
        image.convert("RGB").save(folder / f"{index:06d}.png")
    (target / ".complete").touch()
    return target


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
