"""Validate stage: a Great Expectations checkpoint over the per-image table.

Nothing is trained on data that did not pass. For each source (the unlabeled pool and
the labeled set):

1. walk it without leaving it and describe every image file (cached, in parallel);
2. give each file its first fault (rules in tasks/expectations.py);
3. run the GX checkpoint over all files. With ``validate.on_fail: quarantine`` and at
   most ``validate.max_bad_fraction`` bad files, run it again over the good files only:
   they must pass, and only they are trained on;
4. write the report (``<name>.json``), the table with an ``accepted`` column (ingest decodes
   exactly those rows), GX Data Docs, and, on a pass, the drift reference.

Bad data is never raised as an exception here: the report says what is wrong, and
callers stop on failure (:func:`raise_for_failures`; the CLI prints it and exits 2).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config import PipelineConfig, ValidateConfig
from tasks.expectations import FAULTS, STAT_COLUMNS, Rules
from tasks.image_table import TableCache, build_table
from tasks.layout import Layout
from tasks.sources import open_source, scan_images

log = logging.getLogger(__name__)
MAX_EXAMPLES = 10
GX_COLUMNS = ["path", "format", "mode", "width", "height", "channels", "bit_depth", "sha256", "decode_error", "std_max", *STAT_COLUMNS]


class DataValidationError(Exception):
    """The data failed validation; the message is the report a user needs."""


@dataclass
class Failure:
    expectation: str
    column: str | None
    unexpected_count: int
    examples: list[str] = field(default_factory=list)  # "path: column=value"
    observed: str | None = None  # what a dataset-level expectation (row count, drift) saw instead

    def lines(self) -> list[str]:
        where = f" on {self.column}" if self.column else ""
        if self.observed:
            return [f"- {self.expectation}{where}: {self.observed}"]
        return [f"- {self.expectation}{where}: {self.unexpected_count} bad"]


@dataclass
class ValidationReport:
    name: str
    source: str
    images: int  # image files checked (hidden files and other extensions are only counted in ``skipped``)
    success: bool  # True: training may use the accepted files
    failures: list[Failure]  # failed expectations over all files
    policy: str = "stop"
    accepted: int = 0
    decision: str = ""
    faults: dict[str, int] = field(default_factory=dict)  # files per fault
    bad_files: list[str] = field(default_factory=list)  # the first offending files: "path: fault (detail)"
    skipped: dict[str, int] = field(default_factory=dict)  # hidden, other_extension, folder_link, special_file
    converted: dict[str, int] = field(default_factory=dict)  # accepted files per conversion
    statistics: dict[str, float] = field(default_factory=dict)  # dataset mean of per-image channel mean/std (good files)
    reference: dict | None = None  # the drift reference this run was checked against
    quarantine_failures: list[Failure] = field(default_factory=list)  # failed expectations over the good files only
    data_docs: str | None = None

    @property
    def bad(self) -> int:
        return sum(self.faults.values())

    def summary(self) -> str:
        lines = [f"{self.name}: {'passed' if self.success else 'FAILED'}: {self.decision}"]
        if self.faults:
            lines.append("  faults: " + ", ".join(f"{fault} {count}" for fault, count in self.faults.items()))
        if self.skipped:
            lines.append("  skipped: " + ", ".join(f"{what} {count}" for what, count in self.skipped.items()))
        if self.converted:
            lines.append("  converted: " + ", ".join(f"{what} {count}" for what, count in self.converted.items()))
        for title, failures in (
            ("failed expectations", self.failures),
            ("failed expectations on the good files", self.quarantine_failures),
        ):
            if failures:
                lines.append(f"  {title}:")
                lines += [f"    {line}" for f in failures for line in f.lines()]
        if self.bad_files:
            more = f" (first {len(self.bad_files)} of {self.bad})" if self.bad > len(self.bad_files) else ""
            lines.append(f"  offending files{more}:")
            lines += [f"    {line}" for line in self.bad_files]
        if self.data_docs:
            lines.append(f"  Data Docs: {self.data_docs}")
        return "\n".join(lines)

    def markdown(self) -> str:
        status = "passed" if self.success else "**failed**"
        rows = [f"### {self.name}: {status}", "", self.decision, "", "| | |", "|---|---|"]
        rows += [f"| fault: {k} | {v} |" for k, v in self.faults.items()]
        rows += [f"| skipped: {k} | {v} |" for k, v in self.skipped.items()]
        rows += [f"| converted: {k} | {v} |" for k, v in self.converted.items()]
        rows += [f"| {k} | {v:.4f} |" for k, v in self.statistics.items()]
        failures = [line for f in self.failures for line in f.lines()]
        files = [f"- `{line}`" for line in self.bad_files]
        return "\n".join(rows + ["", *failures, "", *files])


def report_metrics(report: dict) -> dict[str, float]:
    """A report (as saved in ``<name>.json``) as MLflow metrics: counts per fault and the statistics."""
    name = report["name"]
    metrics = {f"validation/{name}/images": report["images"], f"validation/{name}/accepted": report["accepted"]}
    metrics |= {f"validation/{name}/fault/{k}": v for k, v in report["faults"].items()}
    metrics |= {f"validation/{name}/skipped/{k}": v for k, v in report["skipped"].items()}
    metrics |= {f"validation/{name}/{k}": v for k, v in report["statistics"].items()}
    return metrics


class Checkpoints:
    """One ephemeral GX context per source; every checkpoint run lands in one Data Docs site."""

    def __init__(self, name: str, rules: Rules, reference: dict[str, float] | None, docs_dir: Path | None):
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.name, self.docs = name, docs_dir is not None
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)  # one line per table, not per metric
        if docs_dir is not None:
            backend = {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)}
            site = {"class_name": "SiteBuilder", "store_backend": backend, "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}}
            self.context.add_data_docs_site(site_name="sslpipe", site_config=site)
        self.source = self.context.data_sources.add_pandas(name)
        self.suite = self.context.suites.add(rules.suite(name, reference))  # GX builds suites inside a context

    def run(self, table: pd.DataFrame, label: str):
        """Run the suite as a GX Checkpoint on ``table``; returns the CheckpointResult."""
        import great_expectations as gx

        batch = self.source.add_dataframe_asset(label).add_batch_definition_whole_dataframe("all")
        definition = self.context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{self.name}_{label}", data=batch, suite=self.suite)
        )
        actions = [gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=["sslpipe"])] if self.docs else []
        checkpoint = self.context.checkpoints.add(
            gx.Checkpoint(
                name=f"{self.name}_{label}",
                validation_definitions=[definition],
                actions=actions,
                result_format={
                    "result_format": "SUMMARY",
                    "partial_unexpected_count": MAX_EXAMPLES,
                    "unexpected_index_column_names": ["path"],
                },
            )
        )
        frame = table[GX_COLUMNS].astype({c: "float64" for c in ("width", "height", "channels", "bit_depth")})
        return checkpoint.run(batch_parameters={"dataframe": frame})


def _exception(result) -> str | None:
    """The message of an exception GX caught while evaluating an expectation, if any."""
    info = result.exception_info or {}
    candidates = [info] + [v for v in info.values() if isinstance(v, dict)]
    for item in candidates:
        if item.get("raised_exception"):
            return str(item.get("exception_message"))
    return None


def _bounds(low, high) -> str:
    if high is None:
        return f"at least {low}"
    if isinstance(low, float) and isinstance(high, float):
        return f"{low:.4f}..{high:.4f}"
    return f"{low}..{high}"


def _failures(checkpoint_result, table: pd.DataFrame) -> list[Failure]:
    values = dict(zip(table["path"], table.to_dict("records"), strict=True))
    failures = []
    for suite_result in checkpoint_result.run_results.values():
        for result in suite_result.results:
            if result.success:
                continue
            config, details = result.expectation_config, result.result
            column, error = config.kwargs.get("column"), _exception(result)
            if error:
                failures.append(Failure(config.type, column, 1, observed=f"could not be evaluated: {error}"))
            elif details.get("unexpected_count") is not None:
                examples = []
                for item in details.get("partial_unexpected_index_list") or []:
                    path = item["path"]
                    examples.append(f"{path}: {column}={values.get(path, {}).get(column)}")
                failures.append(Failure(config.type, column, int(details["unexpected_count"]), examples))
            else:  # dataset-level expectations report what they observed
                observed = details.get("observed_value")
                observed = f"{observed:.4f}" if isinstance(observed, float) else observed
                bounds = _bounds(config.kwargs.get("min_value"), config.kwargs.get("max_value"))
                failures.append(Failure(config.type, column, 1, observed=f"observed {observed}, expected {bounds}"))
    return failures


def load_reference(path: Path | None, name: str, source: str) -> dict | None:
    """The statistics of the last version of ``source`` that passed, if any.

    References are kept per source: a folder the pipeline has never seen has no
    previous version, so a user's own photos are not judged against CIFAR's colours.
    """
    if path is None or not path.exists():
        return None
    try:
        entry = json.loads(path.read_text()).get(name, {}).get(source)
        for column in STAT_COLUMNS if entry is not None else []:
            float(entry["statistics"][column])  # a hand-edited file must still hold numbers
        return entry
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as err:
        raise DataValidationError(f"{path}: not a valid drift reference ({type(err).__name__}: {err}); fix or delete it") from None


def _write_text(path: Path, text: str) -> None:
    """Write via a temporary file and a rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_csv(table: pd.DataFrame, path: Path) -> None:
    _write_text(path, table.to_csv(index=False))


def _save_reference(path: Path, name: str, source: str, images: int, statistics: dict[str, float]) -> None:
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault(name, {})[source] = {"images": images, "statistics": statistics}
    _write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _decide(table: pd.DataFrame, first, checkpoints: Checkpoints, cfg: ValidateConfig, report: ValidationReport) -> bool:
    """Apply ``validate.on_fail``; fills ``report.decision``; True when training may go on."""
    bad, total = int(table["fault"].notna().sum()), len(table)
    share = f"{bad} of {total} files bad ({bad / max(total, 1):.1%})"
    if first.success:
        report.decision = f"all {total} image files from {report.source} passed"
        return True
    if cfg.on_fail == "stop" or bad == 0:
        what = share if bad else "the dataset as a whole failed (see the failed expectations)"
        report.decision = f"{report.source}: {what}; validate.on_fail={cfg.on_fail}, so nothing is trained"
        return False
    if bad / total > cfg.max_bad_fraction:
        report.decision = f"{report.source}: {share}, above validate.max_bad_fraction={cfg.max_bad_fraction:.1%}; nothing is trained"
        return False
    second = checkpoints.run(table[table["fault"].isna()], "good_files")
    report.quarantine_failures = _failures(second, table)
    if second.success:
        report.decision = f"{report.source}: {share}, quarantined (reports/quarantine.csv); training on the other {total - bad}"
        return True
    report.decision = f"{report.source}: {share} quarantined, but the remaining {total - bad} still fail; nothing is trained"
    return False


def check_source(
    source: str | Path,
    name: str,
    cfg: ValidateConfig,
    out_dir: Path,
    downloads: Path | None = None,
    *,
    image_size: int | None = None,
    reference: Path | None = None,
    cache_dir: Path | None = None,
) -> tuple[ValidationReport, pd.DataFrame]:
    """Validate one source; writes ``out_dir/<name>.json``, ``<name>_table.csv`` and ``data_docs/<name>/``.

    ``image_size``: the training size (for ``resize`` in ``validate.convert``); ``reference``: the
    drift reference file, read and, on a pass, updated; ``cache_dir``: where the table cache lives.
    """
    refused: list = []
    with open_source(source, downloads, refused) as root:
        listing = scan_images(root, refused)
        log.info("%s: describing %d image files under %s", name, len(listing.files), source)
        cache = TableCache(cache_dir / f"{name}.parquet" if cache_dir else None, str(source), cfg.max_pixels)
        facts = build_table(root, listing, cfg.max_pixels, cache, cfg.workers)
    rules = Rules(cfg, image_size)
    table = rules.assign_faults(facts)
    try:
        ref, ref_error = load_reference(reference, name, str(source)), None
    except DataValidationError as err:  # without its reference the drift check cannot run: fail, do not skip it
        ref, ref_error = None, str(err)
    good = table[table["fault"].isna()]
    bad = table[table["fault"].notna()]
    report = ValidationReport(
        name,
        str(source),
        len(table),
        False,
        [],
        policy=cfg.on_fail,
        faults={f: int(n) for f, n in bad["fault"].value_counts().reindex(FAULTS).dropna().items()},
        bad_files=[f"{r.path}: {r.fault} ({r.detail})" for r in bad.head(MAX_EXAMPLES).itertuples()],
        skipped=dict(sorted(listing.skipped.items())),
        converted=dict(Counter(step for steps in good["convert"].dropna() for step in steps.split("+"))),
        statistics={c: round(float(good[c].mean()), 6) for c in STAT_COLUMNS} if len(good) else {},
        reference=ref,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    docs_tmp = Path(tempfile.mkdtemp(prefix=f".{name}-docs-", dir=out_dir))
    try:
        checkpoints = Checkpoints(name, rules, ref and ref["statistics"], docs_tmp)
        first = checkpoints.run(table, "all_files")
        report.failures = _failures(first, table)
        report.success = _decide(table, first, checkpoints, cfg, report) and ref_error is None
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
    # Ingest decodes exactly the accepted rows; a failed validation accepts none.
    table["accepted"] = report.success & table["fault"].isna()
    report.accepted = int(table["accepted"].sum())
    write_csv(table, out_dir / f"{name}_table.csv")
    _write_text(out_dir / f"{name}.json", json.dumps(asdict(report), indent=2, default=str))
    if report.success and reference is not None:
        _save_reference(reference, name, str(source), report.accepted, report.statistics)
    return report, table


def validate_source(
    source: str | Path, name: str, cfg: ValidateConfig, out_dir: Path, downloads: Path | None = None, **options
) -> ValidationReport:
    """:func:`check_source`, returning only the report."""
    return check_source(source, name, cfg, out_dir, downloads, **options)[0]


def validate_stage(layout: Layout, cfg: PipelineConfig) -> list[ValidationReport]:
    """Validate the unlabeled pool and the labeled evaluation set; never raises on bad data.

    Also writes ``reports/quarantine.csv``: every bad file of both sources with its fault
    (under ``on_fail: quarantine``, exactly the files left out of training).
    """
    reports, bad = [], []
    for name, source in (("unlabeled", cfg.data.unlabeled), ("labeled", cfg.data.labeled)):
        report, table = check_source(
            source, name, cfg.validate, layout.validation, layout.downloads,
            image_size=cfg.data.image_size, reference=layout.reference_stats, cache_dir=layout.validation_cache,
        )  # fmt: skip
        reports.append(report)
        bad.append(table.loc[table["fault"].notna(), ["path", "fault", "detail"]].assign(dataset=name))
    write_csv(pd.concat(bad, ignore_index=True), layout.quarantine)
    return reports


def log_validation(layout: Layout) -> None:
    """Log the validation outcome into the active MLflow run (the pretraining run)."""
    import mlflow

    for path in sorted(layout.validation.glob("*.json")):
        mlflow.log_artifact(str(path), artifact_path="validation")
        mlflow.log_metrics(report_metrics(json.loads(path.read_text())))
    for docs in sorted(p for p in (layout.validation / "data_docs").glob("*") if p.is_dir()):
        mlflow.log_artifacts(str(docs), artifact_path=f"validation/data_docs/{docs.name}")
    if layout.quarantine.exists():
        mlflow.log_artifact(str(layout.quarantine), artifact_path="validation")


def raise_for_failures(reports: list[ValidationReport]) -> None:
    failed = [r for r in reports if not r.success]
    if failed:
        raise DataValidationError("\n".join(r.summary() for r in failed))


# The Prefect task is the stage function as-is. No result caching: inputs are a layout
# and a config, and DVC already decides what is stale from content hashes.
validate_task = task(validate_stage, name="validate", cache_policy=NO_CACHE)
