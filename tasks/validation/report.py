"""What validation found, per source: the report users read and the metrics MLflow keeps."""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_EXAMPLES = 10  # offending rows listed in a report


class DataValidationError(Exception):
    """Validation could not judge the data (e.g. a damaged drift reference); the message says what to fix."""


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
    images: int  # rows checked, images or documents (``unit``); hidden files and other extensions are only counted in ``skipped``
    success: bool  # True: training may use the accepted files
    failures: list[Failure]  # failed expectations over all files
    policy: str = "stop"
    accepted: int = 0
    decision: str = ""
    faults: dict[str, int] = field(default_factory=dict)  # files per fault
    bad_files: list[str] = field(default_factory=list)  # the first offending rows: "path: fault (detail)"
    skipped: dict[str, int] = field(default_factory=dict)  # hidden, other_extension, folder_link, special_file
    converted: dict[str, int] = field(default_factory=dict)  # accepted files per conversion
    statistics: dict[str, float] = field(default_factory=dict)  # the drift statistics of the good rows
    reference: dict | None = None  # the drift reference this run was checked against
    quarantine_failures: list[Failure] = field(default_factory=list)  # failed expectations over the good rows only
    data_docs: str | None = None
    unit: str = "images"  # what ``images`` counts: images, or documents
    page: str | None = None  # the self-contained HTML report (readable offline), once written

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
        if self.page:  # readable offline; GX's Data Docs need a network for their styles
            lines.append(f"  report: {self.page}")
        elif self.data_docs:
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
        return "\n".join([*rows, "", *failures, "", *files])


def report_params(report: dict) -> dict[str, str]:
    """A report (as saved in ``<name>.json``) as MLflow params: counts per fault and the
    statistics (numbers to 6 significant digits). Params, not metrics: they are facts about the
    data, fixed for the run; as metrics each was a one-point chart crowding the training curves
    off the top of the run's Model metrics tab."""
    name = report["name"]
    values = {f"validation/{name}/images": report["images"], f"validation/{name}/accepted": report["accepted"]}
    values |= {f"validation/{name}/fault/{k}": v for k, v in report["faults"].items()}
    values |= {f"validation/{name}/skipped/{k}": v for k, v in report["skipped"].items()}
    values |= {f"validation/{name}/{k}": v for k, v in report["statistics"].items()}
    return {key: f"{value:.6g}" if isinstance(value, float) else str(value) for key, value in values.items()}
