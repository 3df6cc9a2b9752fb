"""The image part of embed (the shell: tasks/embed.py, whose docstring lists what this module supplies).

The pool is read from the prepared shards a batch at a time (tasks/image/shards.py), as
pretraining reads it; a query image from outside the pool is decoded the way ingest decodes
(centre crop, resize to the encoder's size: tasks/image/prepared.py ``load_rgb``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ssl_models.encoder import Encoder, load_encoder
from ssl_models.evaluation import extract_features
from tasks.curation.index import CurationError
from tasks.image.prepared import load_labeled, load_rgb
from tasks.image.shards import ShardReader

__all__ = ["batches", "items", "labeled_features", "load_encoder", "previews", "query"]


def items(prepared_dir: str | Path) -> pd.DataFrame:
    """path (relative to the source) and sha256 of each pooled image, in shard order."""
    manifest = Path(prepared_dir) / "manifest.csv"
    return pd.read_csv(manifest, keep_default_na=False, na_values=[""], dtype=str)[["path", "sha256"]]


@torch.no_grad()
def batches(encoder: Encoder, prepared_dir: str | Path, batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
    """The encoder's features of the pool, ``batch_size`` images at a time: only one batch is held."""
    reader = ShardReader(prepared_dir)
    encoder = encoder.to(device).eval()
    try:
        for start in range(0, len(reader), batch_size):
            batch = reader.read(np.arange(start, min(start + batch_size, len(reader))), pin=device.type == "cuda")
            yield encoder(batch.to(device, non_blocking=True).float().div_(255)).float().cpu()
    finally:
        reader.close()


def labeled_features(encoder: Encoder, labeled_dir: str | Path, device: torch.device):
    arrays = load_labeled(labeled_dir)
    train_x = extract_features(encoder, arrays["train_images"], device=device)
    test_x = extract_features(encoder, arrays["test_images"], device=device)
    return train_x, arrays["train_labels"], test_x, arrays["test_labels"]


def previews(prepared_dir: str | Path, indices: list[int]) -> list[np.ndarray]:
    """(H, W, 3) uint8 pixels of the pooled images at ``indices`` (what the encoder saw)."""
    if not indices:
        return []
    reader = ShardReader(prepared_dir)
    try:
        return list(reader.read(indices).permute(0, 2, 3, 1).numpy())
    finally:
        reader.close()


def query(encoder: Encoder, encoder_dir: str | Path, path: str | Path, image_size: int) -> torch.Tensor:
    """The features (1, D) of one image file, decoded as ingest decodes; an unreadable file is a CurationError."""
    try:
        pixels = load_rgb(Path(path), image_size)
    except Exception as err:  # noqa: BLE001 - PIL raises many kinds (OSError, ValueError, DecompressionBombError)
        raise CurationError(f"{path}: cannot be read as an image ({type(err).__name__}: {err})") from None
    with torch.no_grad():
        batch = torch.from_numpy(pixels).permute(2, 0, 1)[None].float().div_(255)
        return encoder.eval()(batch).float()
