"""The per-image table: one row of facts per file, the thing Great Expectations checks.

Columns: path, bytes, format (from the content, not the extension), mode, width,
height, channels, sha256, decode_error, and per-channel mean and std.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

COLUMNS = [
    "path", "bytes", "format", "mode", "width", "height", "channels", "sha256", "decode_error",
    "mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b",
]  # fmt: skip


def describe_image(path: Path, root: Path) -> dict:
    """Facts about one file. Never raises for a bad image: the fault goes in ``decode_error``."""
    data = path.read_bytes()
    row: dict = dict.fromkeys(COLUMNS)
    row.update(path=path.relative_to(root).as_posix(), bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    try:
        with Image.open(path) as image:
            row.update(format=image.format, mode=image.mode, width=image.width, height=image.height)
            row["channels"] = len(image.getbands())
            image.load()  # decodes every pixel: catches truncated files that open() accepts
            pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
        means, stds = pixels.mean(axis=(0, 1)), pixels.std(axis=(0, 1))
        row.update(mean_r=means[0], mean_g=means[1], mean_b=means[2], std_r=stds[0], std_g=stds[1], std_b=stds[2])
    except Exception as err:  # PIL raises many types for bad files; all are faults of the file
        # Name the fault, not the temporary folder a tar was unpacked into.
        row["decode_error"] = f"{type(err).__name__}: {err}".replace(f"{root}/", "")
    return row


def build_table(root: Path, files: list[Path]) -> pd.DataFrame:
    return pd.DataFrame([describe_image(path, root) for path in files], columns=COLUMNS)
