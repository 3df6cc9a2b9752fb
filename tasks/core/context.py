"""What every stage function gets besides its inputs: where, with which config, logging where."""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Literal

from tasks.core.config import PipelineConfig
from tasks.core.layout import Layout
from tasks.registry.tracking import Tracker


@dataclass(frozen=True)
class StageContext:
    layout: Layout
    cfg: PipelineConfig  # resolved: no "auto" left
    tracker: Tracker  # the MLflow run this stage logs into
    progress: bool = True  # progress bars on long work
    modality: Literal["image", "text"] = "image"  # decided once, from the config's data source
    part: ModuleType | None = None  # this stage's part for the modality (tasks/<modality>/<stage>.py)
    key: str = ""  # digest of this stage's code, params and inputs (tasks/stages.py): names its resume checkpoint
