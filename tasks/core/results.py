"""What each stage hands to the next: typed results, passed in memory by the flow.

A single stage command (what ``dvc repro`` runs, one process per stage) rebuilds the
results its stage takes from the earlier stages' declared outputs with ``load(layout)``.
``load`` fails closed: a missing or failed input is a :class:`MissingInput` naming the file
and the command that makes it, never a silent default.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from tasks.core.layout import Layout


class MissingInput(Exception):
    """A stage's input is missing or unusable; the message names it and what makes it."""


def _read_json(path: Path, made_by: str) -> dict:
    if not path.exists():
        raise MissingInput(f"{path}: missing; run `sslpipe {made_by}` first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise MissingInput(f"{path}: not valid JSON ({err}); run `sslpipe {made_by}` again") from None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Validated:
    """Both sources checked; ``success`` says whether training may use them."""

    success: bool
    summaries: tuple[str, ...]  # one per source, as printed
    tables: dict[str, str]  # source name -> its table (path, fault, accepted, ...)
    markdown: str = ""

    @classmethod
    def load(cls, layout: Layout) -> Validated:
        summaries, tables, success = [], {}, True
        for name in ("unlabeled", "labeled"):
            report = _read_json(layout.validation / f"{name}.json", "validate")
            table = layout.validation / f"{name}_table.csv"
            if not table.exists():
                raise MissingInput(f"{table}: missing; run `sslpipe validate` first")
            success &= bool(report.get("success"))
            summaries.append(f"{name}: {'passed' if report.get('success') else 'FAILED'}: {report.get('decision', '')}")
            tables[name] = str(table)
        return cls(success, tuple(summaries), tables)


@dataclass(frozen=True)
class Prepared:
    """The decoded images ingest wrote (DVC-tracked); ``data_version`` is DVC's hash of the unlabeled set."""

    unlabeled: str
    labeled: str
    counts: dict[str, int]
    data_version: str
    eval_data_version: str

    @classmethod
    def load(cls, layout: Layout) -> Prepared:
        from tasks.core.lineage import dvc_hash

        unlabeled = _read_json(layout.unlabeled / "counts.json", "ingest")
        labeled = _read_json(layout.labeled / "counts.json", "ingest")
        counts = unlabeled | {f"labeled_{split}": n for split, n in labeled.items()}
        return cls(str(layout.unlabeled), str(layout.labeled), counts, dvc_hash(layout.unlabeled), dvc_hash(layout.labeled))


@dataclass(frozen=True)
class Preview:
    """The view policy checked on real images, and its picture."""

    path: str

    @classmethod
    def load(cls, layout: Layout) -> Preview:
        if not layout.augment_preview.exists():
            raise MissingInput(f"{layout.augment_preview}: missing; run `sslpipe augment` first")
        return cls(str(layout.augment_preview))


@dataclass(frozen=True)
class Pretrained:
    """The trained encoder, the MLflow run that holds its training, and its weights' sha256."""

    encoder_dir: str
    run_id: str
    weights_sha256: str
    method: str
    history: tuple[dict, ...] = field(default_factory=tuple)

    @classmethod
    def load(cls, layout: Layout) -> Pretrained:
        from ssl_models.encoder import CONFIG_FILE, WEIGHTS_FILE

        config = _read_json(layout.encoder / CONFIG_FILE, "pretrain")
        weights = layout.encoder / WEIGHTS_FILE
        if not weights.exists() or not config.get("run_id"):
            raise MissingInput(f"{layout.encoder}: no trained encoder with its MLflow run; run `sslpipe pretrain` first")
        return cls(str(layout.encoder), config["run_id"], file_sha256(weights), config.get("method", ""))


@dataclass(frozen=True)
class Evaluation:
    """The scores of one encoder (identified by its weights' sha256 and run)."""

    metrics: dict
    encoder_sha256: str
    run_id: str

    @classmethod
    def load(cls, layout: Layout) -> Evaluation:
        metrics = _read_json(layout.metrics, "evaluate")
        encoder = metrics.get("encoder", {})
        if not encoder.get("sha256") or not encoder.get("run_id"):
            raise MissingInput(f"{layout.metrics}: does not say which encoder it scored; run `sslpipe evaluate` again")
        return cls(metrics, encoder["sha256"], encoder["run_id"])


@dataclass(frozen=True)
class Registered:
    model_name: str
    version: int
    alias: str
    run_id: str
    champion: bool
    decision: str

    @classmethod
    def load(cls, layout: Layout) -> Registered:
        record = _read_json(layout.registered, "register")
        return cls(record["model_name"], int(record["version"]), record["alias"], record["run_id"], record["champion"], record["decision"])

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("model_name", "version", "alias", "run_id", "champion", "decision")}


@dataclass(frozen=True)
class Embedded:
    """The pool embedded by one registered encoder (data/embeddings/), and what was found in it."""

    directory: str
    counts: dict  # items, near_duplicate_pairs, outliers, selected
    encoder: str  # "<model name> version <n>"
    data_version: str
    markdown: str = ""

    @classmethod
    def load(cls, layout: Layout) -> Embedded:
        meta = _read_json(layout.embeddings / "meta.json", "embed")
        counts = _read_json(layout.selection / "metrics.json", "embed").get("counts", {})
        encoder = f"{meta['encoder']['model_name']} version {meta['encoder']['version']}"
        return cls(str(layout.embeddings), counts, encoder, meta["data_version"])
