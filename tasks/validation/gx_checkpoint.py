"""The Great Expectations side of validation: a modality's expectations (its ``Checks``, see
tasks/validation/source_check.py) run as a GX suite in a Checkpoint over its per-item table,
with Data Docs, and its failures read back."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from tasks.validation.report import MAX_EXAMPLES, Failure

if TYPE_CHECKING:
    from tasks.validation.source_check import Checks


class Checkpoints:
    """One ephemeral GX context per source; every checkpoint run lands in one Data Docs site."""

    def __init__(self, name: str, checks: Checks, reference: dict | None, docs_dir: Path | None):
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.name, self.checks, self.docs = name, checks, docs_dir is not None
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)  # one line per table, not per metric
        if docs_dir is not None:
            backend = {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)}
            site = {"class_name": "SiteBuilder", "store_backend": backend, "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}}
            self.context.add_data_docs_site(site_name="sslpipe", site_config=site)
        self.source = self.context.data_sources.add_pandas(name)
        suite = gx.ExpectationSuite(name=f"{name}_{checks.unit.name}")  # built inside a context, as GX needs
        for expectation in checks.expectations(reference):
            suite.add_expectation(expectation)
        self.suite = self.context.suites.add(suite)

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
                    "unexpected_index_column_names": [self.checks.unit.key],
                },
            )
        )
        frame = table[list(self.checks.gx_columns)].astype(dict.fromkeys(self.checks.gx_floats, "float64"))
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


def failures(checkpoint_result, table: pd.DataFrame, key: str) -> list[Failure]:
    """Failed expectations, each with the first offending rows ("<key>: column=value");
    ``key`` is the column naming a row (the unit's ``key``)."""
    values = dict(zip(table[key], table.to_dict("records"), strict=True))
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
                    name = item[key]
                    examples.append(f"{name}: {column}={values.get(name, {}).get(column)}")
                failures.append(Failure(config.type, column, int(details["unexpected_count"]), examples))
            else:  # dataset-level expectations report what they observed
                observed = details.get("observed_value")
                observed = f"{observed:.4f}" if isinstance(observed, float) else observed
                bounds = _bounds(config.kwargs.get("min_value"), config.kwargs.get("max_value"))
                failures.append(Failure(config.type, column, 1, observed=f"observed {observed}, expected {bounds}"))
    return failures
