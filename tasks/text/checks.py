"""Validate text: a Great Expectations checkpoint over a per-document table.

The text counterpart of tasks/validate.py, with the same policy and the same report
(``ValidationReport``): nothing is trained on text that did not pass.

1. read every document of the source, each named by its file and line or row
   (tasks/text/sources.py), and describe it: one row per document (:func:`document_table`);
2. give each document its first fault (:data:`TEXT_FAULTS`, rules in :class:`TextRules`);
3. run the suite as a GX Checkpoint over all documents. With ``on_fail="quarantine"`` and at
   most ``max_bad_fraction`` bad documents, run it again over the good ones only: they must
   pass, and only they are ingested;
4. write ``<name>.json`` (the report), ``<name>_table.csv`` (with ``accepted``: ingest reads
   exactly those rows), GX Data Docs in ``data_docs/<name>/``, and, on a pass, the drift
   reference (length and vocabulary statistics of this version).

Faults, in the order they are checked (a document gets the first):
    unreadable   the row could not be parsed (bad JSON, no text field, wrong CSV field count)
    binary       NUL bytes, or more than ``max_control_share`` control characters
    not_utf8     bytes that are not UTF-8
    no_label     (labeled sources) an empty label
    empty        nothing but whitespace
    too_short    fewer than ``min_chars`` characters (after cleaning)
    too_long     more than ``max_chars`` characters
    duplicate    the same bytes as an earlier document (named in the detail)
Dataset-level: at least ``min_documents``, and drift against the last passing version of
the same source: mean length in words within ``length_drift_tolerance`` (relative), and
the share of words outside that version's vocabulary at most ``vocab_drift_tolerance`` above
what that version's own held-out documents had (:func:`held_out_oov_share`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from tasks.core.config import ValidateConfig
from tasks.image.sources import SourceError
from tasks.text.sources import Document, clean_text, read_documents
from tasks.validation.gx_checkpoint import failures
from tasks.validation.report import DataValidationError, Failure, ValidationReport

log = logging.getLogger(__name__)
TEXT_FAULTS = ("unreadable", "binary", "not_utf8", "no_label", "empty", "too_short", "too_long", "duplicate")
STAT_COLUMNS = ("mean_chars", "mean_words", "oov_share")
GX_COLUMNS = ["location", "bytes", "chars", "words", "sha256", "utf8_ok", "control_share", "parse_error", "label_ok", "oov_share"]
MAX_EXAMPLES = 10
VOCABULARY_SIZE = 2000  # the reference keeps this many most frequent words
_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class TextRules:
    """What text validation accepts: the ``validate.*`` config (its defaults are the only ones)."""

    min_documents: int
    min_chars: int
    max_chars: int
    max_control_share: float
    allow_duplicates: bool
    length_drift_tolerance: float | None  # relative change of the mean length in words; None: no drift check
    vocab_drift_tolerance: float | None  # rise of the out-of-vocabulary share; None: no vocabulary check

    @classmethod
    def from_config(cls, v: ValidateConfig | None = None, drift: bool = True) -> TextRules:
        """``validate.*`` as rules (default config: None); ``drift=False`` turns the drift checks off."""
        v = v or ValidateConfig()
        return cls(
            min_documents=v.min_images, min_chars=v.min_chars, max_chars=v.max_chars, max_control_share=v.max_control_share,
            allow_duplicates=v.allow_duplicates, length_drift_tolerance=v.length_drift_tolerance if drift else None,
            vocab_drift_tolerance=v.vocab_drift_tolerance if drift else None,
        )  # fmt: skip

    def suite(self, name: str, reference: dict | None, labeled: bool):
        """The GX expectation suite over :func:`document_table`'s columns."""
        import great_expectations as gx
        import great_expectations.expectations as gxe

        expectations = [
            gxe.ExpectTableRowCountToBeBetween(min_value=self.min_documents),
            gxe.ExpectColumnValuesToBeNull(column="parse_error"),
            gxe.ExpectColumnValuesToBeBetween(column="control_share", max_value=self.max_control_share),
            gxe.ExpectColumnValuesToBeInSet(column="utf8_ok", value_set=[True]),
            gxe.ExpectColumnValuesToBeBetween(column="words", min_value=1),  # not empty
            gxe.ExpectColumnValuesToBeBetween(column="chars", min_value=self.min_chars, max_value=self.max_chars),
        ]
        if labeled:
            expectations.append(gxe.ExpectColumnValuesToBeInSet(column="label_ok", value_set=[True]))
        if not self.allow_duplicates:
            expectations.append(gxe.ExpectColumnValuesToBeUnique(column="sha256"))
        if reference is not None:
            stats = reference["statistics"]
            if self.length_drift_tolerance is not None:
                low, high = (stats["mean_words"] * (1 + s * self.length_drift_tolerance) for s in (-1, 1))
                expectations.append(gxe.ExpectColumnMeanToBeBetween(column="words", min_value=low, max_value=high))
            if self.vocab_drift_tolerance is not None:
                expectations.append(gxe.ExpectColumnMeanToBeBetween(column="oov_share", max_value=stats["oov_share"] + self.vocab_drift_tolerance))
        suite = gx.ExpectationSuite(name=f"{name}_documents")
        for expectation in expectations:
            suite.add_expectation(expectation)
        return suite

    def assign_faults(self, table: pd.DataFrame, labeled: bool) -> pd.DataFrame:
        """Add ``fault`` (the first broken rule) and ``detail`` to the document table."""
        table = table.copy()
        table["fault"], table["detail"] = pd.Series(None, index=table.index, dtype=object), pd.Series(None, index=table.index, dtype=object)

        def mark(fault: str, mask: pd.Series, detail) -> None:
            rows = mask.fillna(False).astype(bool) & table["fault"].isna()
            if rows.any():
                table.loc[rows, "fault"] = fault
                table.loc[rows, "detail"] = table[rows].apply(detail, axis=1)

        mark("unreadable", table["parse_error"].notna(), lambda r: r["parse_error"])
        mark("binary", table["control_share"] > self.max_control_share,
             lambda r: f"{r['control_share']:.1%} control characters or NUL bytes: binary content, not text")  # fmt: skip
        mark("not_utf8", ~table["utf8_ok"], lambda r: f"not UTF-8: {r['utf8_error']}")
        if labeled:
            mark("no_label", ~table["label_ok"], lambda r: "empty label")
        mark("empty", table["words"] == 0, lambda r: "empty or whitespace only")
        mark("too_short", table["chars"] < self.min_chars, lambda r: f"{r['chars']} characters, fewer than min_chars={self.min_chars}")
        mark("too_long", table["chars"] > self.max_chars, lambda r: f"{r['chars']} characters, more than max_chars={self.max_chars}")
        if not self.allow_duplicates:
            first = table.drop_duplicates("sha256").set_index("sha256")["location"]
            mark("duplicate", table.duplicated("sha256", keep="first"), lambda r: f"same bytes as {first[r['sha256']]}")
        return table


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
    top words, see :func:`top_words`).
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


def statistics(good: pd.DataFrame) -> dict[str, float]:
    """The drift statistics of the accepted documents."""
    if good.empty:
        return {}
    return {"mean_chars": round(float(good["chars"].mean()), 4), "mean_words": round(float(good["words"].mean()), 4),
            "oov_share": round(float(good["oov_share"].mean()), 6)}  # fmt: skip


# --- the drift reference --------------------------------------------------------------------


def load_text_reference(path: Path | None, name: str, source: str) -> dict | None:
    """The last passing version's entry for (name, source): statistics and vocabulary; None if none."""
    if path is None or not Path(path).exists():
        return None
    try:
        entry = json.loads(Path(path).read_text()).get(name, {}).get(source)
        if entry is not None:
            [float(entry["statistics"][c]) for c in STAT_COLUMNS]
            if not all(isinstance(w, str) for w in entry["vocabulary"]):
                raise TypeError("vocabulary must be a list of words")
        return entry
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as err:
        raise DataValidationError(f"{path}: not a valid drift reference ({type(err).__name__}: {err}); fix or delete it") from None


def _write_text(path: Path, text: str) -> None:
    """Write via a temporary file and a rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _save_reference(path: Path, name: str, source: str, documents: int, stats: dict[str, float], vocabulary: set[str]) -> None:
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault(name, {})[source] = {"documents": documents, "statistics": stats, "vocabulary": sorted(vocabulary)}
    _write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


# --- the GX checkpoint ----------------------------------------------------------------------


class TextCheckpoints:
    """One ephemeral GX context per source; every checkpoint run lands in one Data Docs site."""

    def __init__(self, name: str, make_suite: Callable[[], Any], docs_dir: Path | None):
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.name, self.docs = name, docs_dir is not None
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        if docs_dir is not None:
            backend = {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)}
            site = {"class_name": "SiteBuilder", "store_backend": backend, "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}}
            self.context.add_data_docs_site(site_name="sslpipe", site_config=site)
        self.source = self.context.data_sources.add_pandas(name)
        self.suite = self.context.suites.add(make_suite())  # GX builds suites inside a context

    def run(self, table: pd.DataFrame, label: str):
        import great_expectations as gx

        batch = self.source.add_dataframe_asset(label).add_batch_definition_whole_dataframe("all")
        definition = self.context.validation_definitions.add(gx.ValidationDefinition(name=f"{self.name}_{label}", data=batch, suite=self.suite))
        actions = [gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=["sslpipe"])] if self.docs else []
        checkpoint = self.context.checkpoints.add(
            gx.Checkpoint(
                name=f"{self.name}_{label}", validation_definitions=[definition], actions=actions,
                result_format={"result_format": "SUMMARY", "partial_unexpected_count": MAX_EXAMPLES, "unexpected_index_column_names": ["location"]},
            )
        )  # fmt: skip
        frame = table[GX_COLUMNS].astype({"bytes": "float64", "chars": "float64", "words": "float64"})
        return checkpoint.run(batch_parameters={"dataframe": frame})


def _failures(checkpoint_result, table: pd.DataFrame) -> list[Failure]:
    """Failed expectations, each with the first offending documents ("location: column=value")."""
    return failures(checkpoint_result, table, key="location")


def _decide(table: pd.DataFrame, first, checkpoints: TextCheckpoints, on_fail: str, max_bad_fraction: float, report: ValidationReport) -> bool:
    """Apply the stop/quarantine policy (as tasks/validate.py does for images); True when training may go on."""
    bad, total = int(table["fault"].notna().sum()), len(table)
    share = f"{bad} of {total} documents bad ({bad / max(total, 1):.1%})"
    if first.success:
        report.decision = f"all {total} documents from {report.source} passed"
        return True
    if on_fail == "stop" or bad == 0:
        what = share if bad else "the dataset as a whole failed (see the failed expectations)"
        report.decision = f"{report.source}: {what}; validate.on_fail={on_fail}, so nothing is trained"
        return False
    if bad / total > max_bad_fraction:
        report.decision = f"{report.source}: {share}, above validate.max_bad_fraction={max_bad_fraction:.1%}; nothing is trained"
        return False
    second = checkpoints.run(table[table["fault"].isna()], "good_documents")
    report.quarantine_failures = _failures(second, table)
    if second.success:
        report.decision = f"{report.source}: {share}, quarantined (reports/quarantine.csv); training on the other {total - bad}"
        return True
    report.decision = f"{report.source}: {share} quarantined, but the remaining {total - bad} still fail; nothing is trained"
    return False


def validate_text_source(
    source: str | Path,
    name: str,
    out_dir: Path,
    *,
    labeled: bool = False,
    rules: TextRules | None = None,
    on_fail: Literal["stop", "quarantine"] = "stop",
    max_bad_fraction: float = 0.05,
    reference: Path | None = None,
    text_columns: list[str] | None = None,
    label_column: str = "label",
) -> tuple[ValidationReport, pd.DataFrame]:
    """Validate one text source; writes ``out_dir/<name>.json``, ``<name>_table.csv``, ``data_docs/<name>/``.

    Returns the report (tasks/validation/report.py's ``ValidationReport``; its ``images`` field holds
    the number of documents, ``bad_files`` the offending documents) and the table with
    ``fault``, ``detail`` and ``accepted``. Bad data is never raised: the report says what is
    wrong. A source that cannot be read at all raises :class:`SourceError`.
    """
    rules = rules or TextRules.from_config()
    documents = read_documents(source, labeled, text_columns, label_column)
    log.info("%s: describing %d documents from %s", name, len(documents), source)
    try:
        ref, ref_error = load_text_reference(reference, name, str(source)), None
    except DataValidationError as err:  # without its reference the drift check cannot run: fail, do not skip it
        ref, ref_error = None, str(err)
    table = rules.assign_faults(document_table(documents, set(ref["vocabulary"]) if ref else None), labeled)
    good, bad = table[table["fault"].isna()], table[table["fault"].notna()]
    report = ValidationReport(
        name, str(source), len(table), False, [], policy=on_fail,
        faults={f: int(n) for f, n in bad["fault"].value_counts().reindex(TEXT_FAULTS).dropna().items()},
        bad_files=[f"{r.location}: {r.fault} ({r.detail})" for r in bad.head(MAX_EXAMPLES).itertuples()],
        statistics=statistics(good), reference=ref and {k: v for k, v in ref.items() if k != "vocabulary"}, unit="documents",
    )  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    docs_tmp = Path(tempfile.mkdtemp(prefix=f".{name}-docs-", dir=out_dir))
    try:
        checkpoints = TextCheckpoints(name, lambda: rules.suite(name, ref, labeled), docs_tmp)
        first = checkpoints.run(table, "all_documents")
        report.failures = _failures(first, table)
        report.success = _decide(table, first, checkpoints, on_fail, max_bad_fraction, report) and ref_error is None
        if ref_error:
            report.decision = f"{ref_error}; nothing is trained"
        docs = out_dir / "data_docs" / name
        if docs.exists():
            shutil.rmtree(docs)
        docs.parent.mkdir(exist_ok=True)
        docs_tmp.rename(docs)
        report.data_docs = str(docs / "index.html")
    finally:
        shutil.rmtree(docs_tmp, ignore_errors=True)
    if report.success and reference is not None and ref is None:
        report.decision += "; no drift reference yet: this version becomes it"
    table["accepted"] = report.success & table["fault"].isna()
    report.accepted = int(table["accepted"].sum())
    if report.success and reference is not None:
        accepted_words = list(table.loc[table["accepted"], "_words"])
        stats = {**report.statistics, "oov_share": held_out_oov_share(accepted_words)}
        _save_reference(Path(reference), name, str(source), report.accepted, stats, top_words(accepted_words))
    table = table.drop(columns=["_words"])
    _write_text(out_dir / f"{name}_table.csv", table.to_csv(index=False))
    _write_text(out_dir / f"{name}.json", json.dumps(asdict(report), indent=2, default=str))
    return report, table


def quarantine_rows(table: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """The bad documents in reports/quarantine.csv's columns (path = the document's location)."""
    bad = table.loc[table["fault"].notna(), ["location", "fault", "detail"]].rename(columns={"location": "path"})
    return bad.assign(dataset=dataset)


__all__ = ["TEXT_FAULTS", "TextRules", "SourceError", "document_table", "quarantine_rows", "validate_text_source"]


def validate_text(
    unlabeled: str | Path,
    labeled: str | Path | None,
    out_dir: Path,
    reference: Path | None,
    rules: TextRules | None = None,
    on_fail: Literal["stop", "quarantine"] = "stop",
    max_bad_fraction: float = 0.05,
    text_columns: Sequence[str] | None = None,
    label_column: str = "label",
) -> tuple[list[ValidationReport], pd.DataFrame]:
    """Validate both sources; returns the reports and the quarantine rows (path, fault, detail, dataset)."""
    reports, bad = [], []
    for name, source, is_labeled in (("unlabeled", unlabeled, False), ("labeled", labeled, True)):
        if source is None:
            continue
        report, table = validate_text_source(
            source, name, out_dir, labeled=is_labeled, rules=rules, on_fail=on_fail, max_bad_fraction=max_bad_fraction,
            reference=reference, text_columns=list(text_columns) if text_columns else None, label_column=label_column,
        )  # fmt: skip
        reports.append(report)
        bad.append(quarantine_rows(table, name))
    return reports, pd.concat(bad, ignore_index=True)
