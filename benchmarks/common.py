"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"


def load_sample(count: int) -> torch.Tensor:
    """The first ``count`` images of the bundled unlabeled sample: (N, 3, 32, 32) uint8."""
    arrays = []
    with tarfile.open(ROOT / "data" / "sample" / "unlabeled.tar.gz") as tar:
        for member in tar:
            if member.isfile():
                arrays.append(np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")))
                if len(arrays) == count:
                    break
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def save_result(name: str, result: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2))
    return path


def load_labeled(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The bundled labeled ``train`` or ``test`` split: images (N, 3, 32, 32) uint8, labels (N,)."""
    arrays, names = [], []
    with tarfile.open(ROOT / "data" / "sample" / "labeled.tar.gz") as tar:
        for member in tar:
            if member.isfile() and member.name.startswith(f"labeled/{split}/"):
                arrays.append(np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")))
                names.append(member.name.split("/")[-2])
    classes = sorted(set(names))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor([classes.index(name) for name in names])
