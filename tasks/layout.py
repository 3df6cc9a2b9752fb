"""Where each stage reads and writes, relative to the project root.

Fixed paths keep ``dvc.yaml``, the flow and the CLI in agreement.
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

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared"

    @property
    def unlabeled(self) -> Path:  # images.npy + manifest.csv, DVC-tracked
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
    def validation(self) -> Path:
        return self.reports / "validation"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def encoder(self) -> Path:  # weights.pt + config.json
        return self.models / "encoder"

    @property
    def checkpoint(self) -> Path:
        return self.models / "checkpoint.pt"

    @property
    def run_file(self) -> Path:  # the MLflow run that pretraining opened
        return self.reports / "mlflow_run.json"
