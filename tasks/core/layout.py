"""Where each stage reads and writes, relative to the project root.

Fixed paths keep ``dvc.yaml`` (generated from the declared stages), the flow and the CLI
in agreement. Relative data paths in ``params.yaml`` resolve against the root too
(:meth:`Layout.source`), whatever the current directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    root: Path

    @classmethod
    def at(cls, root: str | Path = ".") -> Layout:
        return cls(Path(root).resolve())

    def source(self, value: str) -> str:
        """A data source from the config: a relative path is relative to the root;
        ``torchvision:NAME`` and absolute paths are kept as they are."""
        if value.startswith("torchvision:") or Path(value).is_absolute():
            return value
        return str(self.root / value)

    @property
    def state(self) -> Path:  # the pipeline's own state: resume checkpoints, the root lock (dvc.lock says what is up to date)
        return self.root / ".sslpipe"

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared"

    @property
    def unlabeled(self) -> Path:  # image shards + manifest.csv, DVC-tracked
        return self.prepared / "unlabeled"

    @property
    def labeled(self) -> Path:  # train/test images and labels for evaluation
        return self.prepared / "labeled"

    @property
    def downloads(self) -> Path:  # torchvision datasets land here
        return self.root / "data" / "downloads"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def validation(self) -> Path:  # GX reports, per-image tables, Data Docs
        return self.reports / "validation"

    @property
    def quarantine(self) -> Path:  # the files kept out of training, with their fault
        return self.reports / "quarantine.csv"

    @property
    def validation_cache(self) -> Path:  # outside reports/validation, which `dvc repro` clears
        return self.reports / "cache" / "validation"

    @property
    def reference_stats(self) -> Path:  # git-tracked: the drift reference, written by each passing validation
        return self.root / "data" / "reference_stats.json"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def encoder(self) -> Path:  # weights.pt + config.json
        return self.models / "encoder"

    @property
    def augment_preview(self) -> Path:
        return self.reports / "augment_preview.png"

    @property
    def pretrain_reports(self) -> Path:  # history.csv, curves.png
        return self.reports / "pretrain"

    @property
    def metrics(self) -> Path:
        return self.reports / "metrics.json"

    @property
    def registered(self) -> Path:
        return self.reports / "registered.json"

    @property
    def embeddings(self) -> Path:  # the pool's embeddings index (tasks/curation/index.py), DVC-tracked
        return self.root / "data" / "embeddings"

    @property
    def selection(self) -> Path:  # near-duplicates, outliers, the shortlist, label efficiency of the strategies
        return self.reports / "selection"

    # `sslpipe finetune` (flows/finetune.py): its own data, model, reports and MLflow run.
    @property
    def finetune_data(self) -> Path:  # the labeled folder it was given, decoded (not under prepared/, which ingest swaps whole)
        return self.root / "data" / "finetune"

    @property
    def classifier(self) -> Path:  # weights.pt + config.json
        return self.models / "classifier"

    @property
    def finetune_reports(self) -> Path:
        return self.reports / "finetune"
