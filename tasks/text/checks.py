"""What validation makes of a text source: documents read into a per-document table, the
per-document rules (the GX suite and each document's first fault, from the same config),
and the drift statistics of length and vocabulary.

:class:`DocumentChecks` is text's side of the one validation path (tasks/validation/source_check.py's
``run_checks``), with the same policy and report as images: the report's ``images`` field
holds the number of documents, ``bad_files`` the offending documents. A source that cannot
be read at all raises ``SourceError``.

1. read every document of the source, each named by its file and line or row
   (tasks/text/sources.py), and describe it: one row per document (:func:`document_table`);
2. give each document its first fault (``DOCUMENTS.faults``, in the order they are checked);
3. dataset-level: at least ``validate.min_images`` documents, and drift against the last passing
   version of the same source: mean length in words within ``validate.length_drift_tolerance``
   (relative), and the share of words outside that version's vocabulary at most
   ``validate.vocab_drift_tolerance`` above what that version's own held-out documents had
   (:func:`held_out_oov_share`).
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from collections import Counter
from functools import partial

import pandas as pd

from tasks.core.config import ValidateConfig
from tasks.text.sources import Document, clean_text, read_documents
from tasks.validation.source_check import Checks, Unit, mark_fault

log = logging.getLogger(__name__)
# Every fault a document can have, in the order they are checked (a document gets the first), and what it means.
DOCUMENTS = Unit(
    name="documents",
    rows="documents",
    key="location",
    faults={
        "unreadable": "a row that cannot be parsed (bad JSON, no text field, wrong CSV field count)",
        "binary": "NUL bytes, or more than validate.max_control_share control characters",
        "not_utf8": "bytes that are not UTF-8",
        "no_label": "an empty label",
        "empty": "nothing but whitespace",
        "too_short": "fewer than validate.min_chars characters",
        "too_long": "more than validate.max_chars characters",
        "duplicate": "the same bytes as an earlier document",
    },
)
GX_COLUMNS = ("location", "bytes", "chars", "words", "sha256", "utf8_ok", "control_share", "parse_error", "label_ok", "oov_share")
VOCABULARY_SIZE = 2000  # the reference keeps this many most frequent words
_WORD = re.compile(r"[a-z]+")


class DocumentChecks(Checks):
    """What ``validate`` accepts of documents; ``labeled``: each needs a label; ``text_columns`` and
    ``label_column``: where a CSV holds them (tasks/text/sources.py)."""

    unit = DOCUMENTS
    gx_columns = GX_COLUMNS
    gx_floats = ("bytes", "chars", "words")
    stat_columns = ("mean_chars", "mean_words", "oov_share")

    def __init__(self, cfg: ValidateConfig, *, labeled: bool = False, text_columns: list[str] | None = None, label_column: str = "label"):
        self.cfg, self.labeled, self.text_columns, self.label_column = cfg, labeled, text_columns, label_column

    def describe(self, source, name, key, reference):
        documents = read_documents(source, self.labeled, self.text_columns, self.label_column)
        log.info("%s: describing %d documents from %s", name, len(documents), source)
        return self.assign_faults(document_table(documents, set(reference["vocabulary"]) if reference else None)), {}

    def expectations(self, reference: dict | None) -> list:
        """The GX suite's expectations over :func:`document_table`'s columns."""
        import great_expectations.expectations as gxe

        cfg = self.cfg
        expectations = [
            gxe.ExpectTableRowCountToBeBetween(min_value=cfg.min_images),
            gxe.ExpectColumnValuesToBeNull(column="parse_error"),
            gxe.ExpectColumnValuesToBeBetween(column="control_share", max_value=cfg.max_control_share),
            gxe.ExpectColumnValuesToBeInSet(column="utf8_ok", value_set=[True]),
            gxe.ExpectColumnValuesToBeBetween(column="words", min_value=1),  # not empty
            gxe.ExpectColumnValuesToBeBetween(column="chars", min_value=cfg.min_chars, max_value=cfg.max_chars),
        ]
        if self.labeled:
            expectations.append(gxe.ExpectColumnValuesToBeInSet(column="label_ok", value_set=[True]))
        if not cfg.allow_duplicates:
            expectations.append(gxe.ExpectColumnValuesToBeUnique(column="sha256"))
        if reference is not None:
            stats = reference["statistics"]
            if cfg.length_drift_tolerance is not None:
                low, high = (stats["mean_words"] * (1 + s * cfg.length_drift_tolerance) for s in (-1, 1))
                expectations.append(gxe.ExpectColumnMeanToBeBetween(column="words", min_value=low, max_value=high))
            if cfg.vocab_drift_tolerance is not None:
                expectations.append(
                    gxe.ExpectColumnMeanToBeBetween(column="oov_share", max_value=stats["oov_share"] + cfg.vocab_drift_tolerance)
                )
        return expectations

    def assign_faults(self, table: pd.DataFrame) -> pd.DataFrame:
        """Add ``fault`` (the first broken rule) and ``detail`` to the document table."""
        cfg, table = self.cfg, table.copy()
        table["fault"], table["detail"] = pd.Series(None, index=table.index, dtype=object), pd.Series(None, index=table.index, dtype=object)
        mark = partial(mark_fault, table)

        mark("unreadable", table["parse_error"].notna(), lambda r: r["parse_error"])
        mark("binary", table["control_share"] > cfg.max_control_share,
             lambda r: f"{r['control_share']:.1%} control characters or NUL bytes: binary content, not text")  # fmt: skip
        mark("not_utf8", ~table["utf8_ok"], lambda r: f"not UTF-8: {r['utf8_error']}")
        if self.labeled:
            mark("no_label", ~table["label_ok"], lambda r: "empty label")
        mark("empty", table["words"] == 0, lambda r: "empty or whitespace only")
        mark("too_short", table["chars"] < cfg.min_chars, lambda r: f"{r['chars']} characters, fewer than min_chars={cfg.min_chars}")
        mark("too_long", table["chars"] > cfg.max_chars, lambda r: f"{r['chars']} characters, more than max_chars={cfg.max_chars}")
        if not cfg.allow_duplicates:
            first = table.drop_duplicates("sha256").set_index("sha256")["location"]
            mark("duplicate", table.duplicated("sha256", keep="first"), lambda r: f"same bytes as {first[r['sha256']]}")
        return table

    def statistics(self, good):
        if good.empty:
            return {}
        return {"mean_chars": round(float(good["chars"].mean()), 4), "mean_words": round(float(good["words"].mean()), 4),
                "oov_share": round(float(good["oov_share"].mean()), 6)}  # fmt: skip

    def check_reference(self, entry):
        super().check_reference(entry)
        if not all(isinstance(w, str) for w in entry["vocabulary"]):
            raise TypeError("vocabulary must be a list of words")

    def reference_entry(self, accepted, statistics):
        """The statistics, with the out-of-vocabulary share held-out documents have, and the vocabulary."""
        words = list(accepted["_words"])
        return {"statistics": {**statistics, "oov_share": held_out_oov_share(words)}, "vocabulary": sorted(top_words(words))}


# --- the per-document table -----------------------------------------------------------------


def _control_share(text: str, raw: bytes) -> float:
    """Share of characters that are control characters other than tab/newline/CR (any NUL: 1.0)."""
    if b"\x00" in raw:
        return 1.0
    if not text:
        return 0.0
    controls = sum(1 for ch in text if ch not in "\t\n\r" and unicodedata.category(ch) == "Cc")
    return controls / len(text)


def _utf8_error(raw: bytes) -> str | None:
    try:
        raw.decode("utf-8")
        return None
    except UnicodeDecodeError as err:
        return f"byte 0x{raw[err.start]:02x} at offset {err.start}"


def words(text: str) -> list[str]:
    """Lowercased alphabetic words: what the length and vocabulary drift statistics count."""
    return _WORD.findall(text.lower())


def document_table(documents: list[Document], vocabulary: set[str] | None = None) -> pd.DataFrame:
    """One row per document: location, bytes, chars, words, sha256, utf8_ok, control_share, ...

    ``chars`` and ``words`` are measured on the cleaned text (what the tokenizer will see);
    ``oov_share`` is the share of a document's words outside ``vocabulary`` (None: its own
    top words, see :func:`top_words`); ``_words`` (a working column, not written) the words.
    """
    rows = []
    for doc in documents:
        text = doc.text
        cleaned = clean_text(text)
        error = _utf8_error(doc.raw)
        rows.append({
            "location": doc.location,
            "bytes": len(doc.raw),
            "chars": len(cleaned),
            "words": len(cleaned.split()),
            "sha256": hashlib.sha256(doc.raw).hexdigest(),
            "utf8_ok": error is None,
            "utf8_error": error,
            "control_share": _control_share(text, doc.raw),
            "parse_error": doc.problem,
            "label": doc.label,
            "label_ok": doc.label is not None and doc.label.strip() != "",
            "_words": words(cleaned),
        })  # fmt: skip
    table = pd.DataFrame(rows, columns=[*GX_COLUMNS[:-1], "utf8_error", "label", "_words"])
    if vocabulary is None:
        vocabulary = top_words(table["_words"])
    table["oov_share"] = [sum(w not in vocabulary for w in ws) / len(ws) if ws else 0.0 for ws in table["_words"]]
    return table


def top_words(word_lists, size: int = VOCABULARY_SIZE) -> set[str]:
    counts = Counter(w for ws in word_lists for w in ws)
    return {w for w, _ in counts.most_common(size)}


def held_out_oov_share(word_lists: list[list[str]]) -> float:
    """The out-of-vocabulary share new documents of the same kind would have: the baseline of the vocabulary check.

    Measured on documents the vocabulary was not built from (vocabulary from the even
    documents, share on the odd ones): against its own vocabulary a corpus looks more
    familiar than its next version will, above all a small one, and the check would cry drift.
    """
    vocabulary = top_words(word_lists[0::2])
    shares = [sum(w not in vocabulary for w in ws) / len(ws) if ws else 0.0 for ws in word_lists[1::2]]
    return round(sum(shares) / max(len(shares), 1), 6)
