"""Text sources: documents from a .txt, .jsonl or .csv file (optionally .gz), or a folder of .txt files.

    notes.txt             one document per line                       location "notes.txt:line 7"
    dump.jsonl            one JSON object per line, text in "text"   location "dump.jsonl:line 7"
    news.csv(.gz)         text from ``text_columns`` (default: every  location "news.csv.gz:row 7"
                          column but ``label_column``), joined by a newline
    articles/             every .txt file is one document             location "articles/a/b.txt"

Labeled text is the same with a label: the ``label_column`` of a CSV, a ``label`` field
of a JSON line, or for a folder one sub-folder per class (``<class>/*.txt``, or
``train/<class>/`` + ``test/<class>/``).

Documents keep their raw bytes: validation judges the bytes (UTF-8, binary content,
duplicates) and names the document by ``location``; only accepted documents are decoded
and cleaned (:func:`clean_text`) for the tokenizer. A row that cannot be parsed (bad JSON,
no text field, a CSV row with the wrong number of fields) is still a document, with
``problem`` set, so that it is reported like any other fault and never silently dropped.

The modality follows the source: :func:`is_text_source` says whether a ``--data`` path
is text (by its extension, or a folder holding .txt files and no images).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ssl_models.text import clean_text  # noqa: F401 - cleaning lives with the model: serving cleans as training did
from tasks.image.sources import IMAGE_EXTENSIONS, SourceError

TEXT_SUFFIXES = (".txt", ".jsonl", ".csv")
TEXT_FIELD = "text"  # the JSON field holding a document's text
LABEL_FIELD = "label"  # the JSON field holding its label


@dataclass(frozen=True)
class Document:
    """One document as stored: its raw bytes, where it came from, and its label (labeled sources)."""

    location: str  # "news.csv.gz:row 12", "notes.txt:line 3", "articles/a.txt": every message names it
    raw: bytes  # exactly the stored bytes (a CSV row's text columns joined by "\n")
    label: str | None = None
    split: str | None = None  # "train" / "test" when the source says so (train/ and test/ folders)
    problem: str | None = None  # the row could not be parsed into a document; the reason

    @property
    def text(self) -> str:
        """The decoded text; undecodable bytes become U+FFFD (validation has refused those already)."""
        return self.raw.decode("utf-8", errors="replace")


def _base_suffix(path: Path) -> str:
    """ ".csv" for news.csv and news.csv.gz."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _holds_text_files(folder: Path) -> bool:
    """A folder is text when it holds .txt files and no image files (hidden entries ignored)."""
    has_text = False
    for path in folder.rglob("*"):
        if any(part.startswith(".") for part in path.relative_to(folder).parts) or not path.is_file():
            continue
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            return False
        has_text = has_text or path.suffix.lower() == ".txt"
    return has_text


def is_text_source(source: str | Path) -> bool:
    """True when ``source`` is text: a .txt/.jsonl/.csv file (optionally .gz) or a folder of .txt files."""
    if str(source).startswith("torchvision:"):
        return False
    path = Path(source)
    if path.is_dir():
        return _holds_text_files(path)
    return _base_suffix(path) in TEXT_SUFFIXES


# --- cleaning ---------------------------------------------------------------------------

# --- reading ----------------------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
        return gzip.decompress(data) if path.suffix.lower() == ".gz" else data
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise SourceError(f"{path}: cannot be read: {type(err).__name__}: {err}") from None


def _lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line without its newline); a final newline does not make a line."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for number, line in enumerate(lines, start=1):
        yield number, line.removesuffix(b"\r")


def _read_txt(path: Path, name: str) -> Iterator[Document]:
    for number, line in _lines(_read_bytes(path)):
        yield Document(f"{name}:line {number}", line)


def _read_jsonl(path: Path, name: str, labeled: bool) -> Iterator[Document]:
    for number, line in _lines(_read_bytes(path)):
        location = f"{name}:line {number}"
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            if not line.strip():  # a blank line is an empty document, not a parse error
                yield Document(location, line)
            else:
                yield Document(location, line, problem=f"not a JSON object: {err}")
            continue
        if not isinstance(record, dict) or not isinstance(record.get(TEXT_FIELD), str):
            yield Document(location, line, problem=f'no string field "{TEXT_FIELD}"')
            continue
        label = record.get(LABEL_FIELD)
        if labeled and label is None:
            yield Document(location, line, problem=f'no field "{LABEL_FIELD}"')
            continue
        yield Document(location, record[TEXT_FIELD].encode("utf-8", "surrogatepass"), None if label is None else str(label))


def _read_csv(path: Path, name: str, labeled: bool, text_columns: Sequence[str] | None, label_column: str) -> Iterator[Document]:
    # surrogateescape keeps undecodable bytes as they were, so each document's own bytes can be
    # judged (and named) by validation instead of the whole file failing to decode.
    data = _read_bytes(path).decode("utf-8", errors="surrogateescape")
    reader = csv.reader(io.StringIO(data, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise SourceError(f"{path}: empty CSV file (a header row is needed)") from None
    except csv.Error as err:
        raise SourceError(f"{path}: cannot read the CSV header: {err}") from None
    missing = [c for c in [*(text_columns or []), *([label_column] if labeled else [])] if c not in header]
    if missing:
        raise SourceError(f"{path}: no column {', '.join(map(repr, missing))}; the header has {header}")
    columns = list(text_columns) if text_columns else [c for c in header if c != label_column]
    if not columns:
        raise SourceError(f"{path}: no text column (the header is {header})")
    text_at = [header.index(c) for c in columns]
    label_at = header.index(label_column) if labeled else None
    row = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise SourceError(f"{path}: row {row + 1}: cannot be parsed as CSV: {err}") from None
        row += 1  # rows are numbered as a spreadsheet shows them: the header is row 1
        location = f"{name}:row {row}"
        raw = "\n".join(fields[i] for i in text_at if i < len(fields)).encode("utf-8", "surrogateescape")
        if len(fields) != len(header):
            yield Document(location, raw, problem=f"{len(fields)} fields, the header has {len(header)}")
        else:
            yield Document(location, raw, fields[label_at] if label_at is not None else None)


def _read_folder(folder: Path, labeled: bool) -> Iterator[Document]:
    def txt_files(root: Path) -> list[Path]:
        return sorted(
            p for p in root.rglob("*.txt")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        )  # fmt: skip

    if not labeled:
        for path in txt_files(folder):
            yield Document(path.relative_to(folder).as_posix(), path.read_bytes())
        return
    split_roots = {"train": folder / "train", "test": folder / "test"}
    has_split = all(p.is_dir() for p in split_roots.values())
    for split, root in split_roots.items() if has_split else [(None, folder)]:
        for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for path in txt_files(class_dir):
                yield Document(path.relative_to(folder).as_posix(), path.read_bytes(), class_dir.name, split)


def read_documents(
    source: str | Path,
    labeled: bool = False,
    text_columns: Sequence[str] | None = None,
    label_column: str = "label",
) -> list[Document]:
    """Every document of ``source`` in a fixed order (file order; folders sorted by path).

    ``labeled``: take the label too (a CSV's ``label_column``, a JSON line's "label", or the
    class folder). An unlabeled CSV drops ``label_column`` from the text if it has one, so
    pretraining never sees labels. Raises :class:`SourceError` for a source that cannot be
    read at all (missing, not text, no header, a named column missing).
    """
    path = Path(source)
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder")
    if path.is_dir():
        if not _holds_text_files(path):
            raise SourceError(f"{path}: a text folder must hold .txt files (and no images)")
        return list(_read_folder(path, labeled))
    kind, name = _base_suffix(path), path.name
    if kind == ".txt":
        if labeled:
            raise SourceError(f"{path}: a .txt file has no labels; use a .csv/.jsonl with a label, or one folder per class")
        return list(_read_txt(path, name))
    if kind == ".jsonl":
        return list(_read_jsonl(path, name, labeled))
    if kind == ".csv":
        return list(_read_csv(path, name, labeled, text_columns, label_column))
    raise SourceError(f"{path}: not a text source (expected .txt, .jsonl, .csv, optionally .gz, or a folder of .txt files)")
