"""Validate stage: a Great Expectations checkpoint over the per-image table.

Nothing is trained on data that did not pass. The stage returns a report per source
(failed expectations, counts, the first offending files with their faults); callers
stop on failure (:func:`raise_for_failures`), the CLI prints it and exits non-zero.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config import PipelineConfig, ValidateConfig
from tasks.image_table import build_table
from tasks.layout import Layout
from tasks.sources import list_images, open_source

log = logging.getLogger(__name__)
MAX_EXAMPLES = 10


class DataValidationError(Exception):
    """The data failed validation; the message is the report a user needs."""


@dataclass
class Failure:
    expectation: str
    column: str | None
    unexpected_count: int
    examples: list[str] = field(default_factory=list)  # "path: value"


@dataclass
class ValidationReport:
    name: str
    source: str
    images: int
    success: bool
    failures: list[Failure]

    def summary(self) -> str:
        if self.success:
            return f"{self.name}: {self.images} images from {self.source} passed validation"
        lines = [f"{self.name}: validation of {self.source} failed ({self.images} images checked)"]
        for f in self.failures:
            where = f" on {f.column}" if f.column else ""
            lines.append(f"  - {f.expectation}{where}: {f.unexpected_count} bad")
            lines += [f"      {example}" for example in f.examples]
        return "\n".join(lines)


def build_suite(cfg: ValidateConfig, name: str):
    """The expectation suite, as code: reviewable in a diff, versioned with the repo."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    suite = gx.ExpectationSuite(name=f"{name}_images")
    for expectation in [
        gxe.ExpectTableRowCountToBeBetween(min_value=cfg.min_images),
        gxe.ExpectColumnValuesToBeNull(column="decode_error"),
        gxe.ExpectColumnValuesToBeInSet(column="format", value_set=cfg.allowed_formats),
        gxe.ExpectColumnValuesToBeInSet(column="channels", value_set=[1, 3, 4]),
        gxe.ExpectColumnValuesToBeBetween(column="width", min_value=cfg.min_side, max_value=cfg.max_side),
        gxe.ExpectColumnValuesToBeBetween(column="height", min_value=cfg.min_side, max_value=cfg.max_side),
    ]:
        suite.add_expectation(expectation)
    if not cfg.allow_duplicates:
        suite.add_expectation(gxe.ExpectColumnValuesToBeUnique(column="sha256"))
    return suite


def run_checkpoint(table: pd.DataFrame, cfg: ValidateConfig, name: str):
    """Run the suite as a GX Checkpoint on ``table``; returns the CheckpointResult."""
    import great_expectations as gx

    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # one line per image table, not per metric
    batch = context.data_sources.add_pandas(name).add_dataframe_asset("image_table").add_batch_definition_whole_dataframe("all")
    suite = context.suites.add(build_suite(cfg, name))
    definition = context.validation_definitions.add(gx.ValidationDefinition(name=f"{name}_validation", data=batch, suite=suite))
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=f"{name}_checkpoint",
            validation_definitions=[definition],
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["path"]},
        )
    )
    return checkpoint.run(batch_parameters={"dataframe": table})


def _failures(checkpoint_result, table: pd.DataFrame) -> list[Failure]:
    failures = []
    for suite_result in checkpoint_result.run_results.values():
        for result in suite_result.results:
            if result.success:
                continue
            config, details = result.expectation_config, result.result
            column = config.kwargs.get("column")
            examples = []
            for item in (details.get("unexpected_index_list") or [])[:MAX_EXAMPLES]:
                path = item.get("path") if isinstance(item, dict) else table.iloc[item]["path"]
                value = table.loc[table["path"] == path, column].iloc[0] if column else ""
                examples.append(f"{path}: {column}={value}")
            count = details.get("unexpected_count")
            if count is None:  # table-level expectations report an observed value instead
                count, examples = 1, [f"observed {details.get('observed_value')}"]
            failures.append(Failure(config.type, column, int(count), examples))
    return failures


def validate_source(source: str | Path, name: str, cfg: ValidateConfig, out_dir: Path, downloads: Path | None = None) -> ValidationReport:
    """Build the table for ``source``, run the checkpoint, write ``out_dir/<name>.json|csv``."""
    with open_source(source, downloads) as root:
        files = list_images(root)
        log.info("%s: describing %d images under %s", name, len(files), source)
        table = build_table(root, files)
    result = run_checkpoint(table, cfg, name)
    report = ValidationReport(name, str(source), len(table), bool(result.success), _failures(result, table))
    # Ingest decodes exactly the accepted rows; a failed validation accepts none.
    table["accepted"] = report.success
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / f"{name}_table.csv", index=False)
    (out_dir / f"{name}.json").write_text(json.dumps(asdict(report), indent=2))
    return report


def validate_stage(layout: Layout, cfg: PipelineConfig) -> list[ValidationReport]:
    """Validate the unlabeled pool and the labeled evaluation set; never raises on bad data."""
    return [
        validate_source(source, name, cfg.validate, layout.validation, layout.downloads)
        for name, source in (("unlabeled", cfg.data.unlabeled), ("labeled", cfg.data.labeled))
    ]


def raise_for_failures(reports: list[ValidationReport]) -> None:
    failed = [r for r in reports if not r.success]
    if failed:
        raise DataValidationError("\n".join(r.summary() for r in failed))


# The Prefect task is the stage function as-is. No result caching: inputs are a layout
# and a config, and DVC already decides what is stale from content hashes.
validate_task = task(validate_stage, name="validate", cache_policy=NO_CACHE)
