"""Image sources: a folder, a tar archive of one, or a torchvision dataset.

Every source is turned into a local folder first, so later code only ever walks a
directory tree.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tarfile
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

# Files with these extensions are looked at; the format itself is then read from the
# content. GIF, TIFF and HEIF are listed so that they are reported (as a format not in
# validate.allowed_formats) rather than silently skipped.
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif", ".avif"}
TORCHVISION_PREFIX = "torchvision:"
# A labeled class needs an image in train and one in test: the probe learns it and is scored on it
# (checked by validation, tasks/image/checks.py, and again by ingest, tasks/image/prepared.py).
MIN_PER_CLASS = 2


class SourceError(ValueError):
    """The source does not exist or cannot be read; the message names it."""


@dataclass
class Listing:
    """What a walk of a data root found.

    ``files`` are safe to open: regular files, or links whose target is a regular file
    inside the root. ``links_outside`` and ``broken_links`` are image-named entries that
    must never be opened; validation reports them as faults. ``skipped`` counts what was
    left out on purpose (hidden, other extensions, folder links, special files).
    """

    files: list[Path] = field(default_factory=list)
    links_outside: list[Path] = field(default_factory=list)
    broken_links: list[Path] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)  # archive members that were never unpacked
    skipped: Counter = field(default_factory=Counter)


@dataclass
class Refused:
    """An archive member left out of the unpacked folder, and why."""

    name: str  # relative to the folder open_source yields
    fault: str  # link_outside, unsafe_path or special_file
    reason: str


def _link_target(path: Path) -> Path | None:
    """The fully resolved target of a link, or None for a dangling link or a loop."""
    try:
        return Path(os.path.realpath(path, strict=True))
    except (OSError, RuntimeError):
        return None


def scan_images(root: Path, refused: list[Refused] = ()) -> Listing:
    """Walk ``root`` without ever leaving it.

    Hidden entries (a name starting with ".") are skipped and not walked. Links to folders
    are not followed: one inside the root is walked through its real path anyway (and could
    loop), one pointing outside is reported. A link to a file is read only when its target
    resolves inside the root. Special files (FIFOs, devices) are skipped: reading one can hang.
    ``refused``: members :func:`open_source` did not unpack; they are reported the same way.
    """
    real_root = Path(os.path.realpath(root))
    listing = Listing()

    def walk(folder: Path) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            listing.skipped["unreadable_folder"] += 1
            return
        for entry in entries:
            path = Path(entry.path)
            if entry.name.startswith("."):
                listing.skipped["hidden"] += 1
            elif entry.is_symlink():
                _add_link(path)
            elif entry.is_dir(follow_symlinks=False):
                walk(path)
            elif path.suffix.lower() not in IMAGE_EXTENSIONS:
                listing.skipped["other_extension"] += 1
            elif entry.is_file(follow_symlinks=False):
                listing.files.append(path)
            else:
                listing.skipped["special_file"] += 1

    def _add_link(path: Path) -> None:
        target = _link_target(path)
        is_dir = target is not None and target.is_dir()
        if not is_dir and path.suffix.lower() not in IMAGE_EXTENSIONS:
            listing.skipped["other_extension"] += 1
        elif target is None:
            listing.broken_links.append(path)
        elif not target.is_relative_to(real_root):
            listing.links_outside.append(path)
        elif is_dir:
            listing.skipped["folder_link"] += 1
        elif target.is_file():  # follows the (inside) link; False for FIFOs and devices
            listing.files.append(path)
        else:
            listing.skipped["special_file"] += 1

    walk(root)
    listing.files.sort()
    for member in refused:
        path = Path(member.name)
        if any(part.startswith(".") and part != ".." for part in path.parts):
            listing.skipped["hidden"] += 1
        elif member.fault == "special_file":
            listing.skipped["special_file"] += 1
        elif path.suffix.lower() not in IMAGE_EXTENSIONS and member.fault != "link_outside":
            listing.skipped["other_extension"] += 1
        else:
            listing.refused.append(member)
    return listing


def list_images(root: Path) -> list[Path]:
    """Image files under ``root`` that are safe to open (recursive, sorted; see :func:`scan_images`)."""
    return scan_images(root).files


def _single_top_folder(root: Path) -> Path:
    """A tar of ``photos/`` unpacks to ``tmp/photos``: descend into such a lone folder."""
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else root


def _safe_members(refused: list[Refused]):
    """A tar extraction filter: Python's "data" filter, but an unsafe member is left out and
    noted instead of failing the whole archive (one bad link must not hide 10,000 good images)."""

    def keep(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
        if member.name.startswith(("/", os.sep)):  # the "data" filter would strip the "/" and unpack it
            refused.append(Refused(member.name, "unsafe_path", "archive member not unpacked: an absolute path"))
            return None
        try:
            return tarfile.data_filter(member, dest)
        except tarfile.FilterError as err:
            if isinstance(err, tarfile.SpecialFileError):
                fault = "special_file"
            elif isinstance(err, tarfile.LinkOutsideDestinationError | tarfile.AbsoluteLinkError):
                fault = "link_outside"
            else:  # an absolute path or ../ in the member name
                fault = "unsafe_path"
            refused.append(Refused(member.name, fault, f"archive member not unpacked: {err}"))
            return None

    return keep


@contextlib.contextmanager
def open_source(source: str | Path, downloads: Path | None = None, refused: list[Refused] | None = None) -> Iterator[Path]:
    """Yield a local folder holding the source's images.

    ``refused`` collects the archive members that were not unpacked (links or paths leading
    out of the archive, devices), named relative to the yielded folder.
    """
    text = str(source)
    if text.startswith(TORCHVISION_PREFIX):
        yield export_torchvision(text[len(TORCHVISION_PREFIX) :], downloads or Path("data/downloads"))
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
        left_out: list[Refused] = []
        try:
            with tarfile.open(path) as archive:
                archive.extractall(tmp, filter=_safe_members(left_out))
        except (tarfile.TarError, OSError, EOFError) as err:  # EOFError: a cut .tar.gz
            raise SourceError(f"{path}: cannot unpack the archive: {type(err).__name__}: {err}") from None
        root = _single_top_folder(Path(tmp))
        prefix = root.relative_to(tmp).as_posix()
        for member in left_out:
            name = PurePosixPath(member.name).as_posix()  # "./a/b.jpg" -> "a/b.jpg"
            name = name.removeprefix(f"{prefix}/") if prefix != "." else name
            if refused is not None:
                refused.append(Refused(name, member.fault, member.reason))
        yield root


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
