"""The on-disk format of prepared images: decoded uint8 pixels in fixed-size shard files.

    <dir>/shards.json        {"format": "sslpipe-shards/1", "image_size": S, "count": N,
                              "shards": [{"file": "shard-00000.npy", "count": n0}, ...]}
    <dir>/shard-00000.npy    (n0, S, S, 3) uint8, a plain .npy file (np.load opens it)
    <dir>/shard-00001.npy    ...

Why decoded pixels and not the JPEG bytes: at 32-224 px a decoded image is 3-150 KB,
reading a batch is one ``pread`` per image straight into the batch buffer, and the
training step does no decoding at all; the measurements are in ``benchmarks/README.md``.

Memory stays independent of the number of images on both sides:
- :class:`ShardWriter` writes each image's bytes as it arrives (``write``, no memmap:
  dirty pages of a writable memmap count in the writer's RSS), shard after shard, and
  knows each shard's header up front from the total count (the validation table gives it).
- :class:`ShardReader` reads a batch with ``os.preadv`` at byte offsets into one buffer.
  A ``np.memmap`` would be simpler, but every page it touches stays mapped and counts in
  the reader's resident memory, so a long epoch would map the whole data set.

The folder's content is a pure function of the images and their order, so DVC's hash of
the folder stays the data version. ``ShardReader`` implements ``ssl_models.data.ImageSource``.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np
import torch

FORMAT = "sslpipe-shards/1"
MANIFEST = "shards.json"
SHARD_BYTES = 256 * 2**20  # ~256 MiB per shard: few files, and DVC re-uploads only shards that changed


class ShardError(ValueError):
    """A shard folder that is missing, incomplete or does not match its manifest."""


def images_per_shard(image_size: int, shard_bytes: int = SHARD_BYTES) -> int:
    return max(1, shard_bytes // (image_size * image_size * 3))


def _header(count: int, image_size: int) -> bytes:
    """The .npy header of a (count, S, S, 3) uint8 array, as np.save writes it."""
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "|u1", "fortran_order": False, "shape": (count, image_size, image_size, 3)})
    return buffer.getvalue()


class ShardWriter:
    """Write ``count`` images of ``image_size`` px into ``out_dir``, one at a time.

    >>> writer = ShardWriter(tmp_path, image_size=32, count=2)   # doctest: +SKIP
    >>> writer.add(np.zeros((32, 32, 3), np.uint8)); writer.add(...); writer.close()

    Also a context manager; ``close`` checks that exactly ``count`` images came and then
    writes the manifest (last: a folder without ``shards.json`` is unfinished).
    """

    def __init__(self, out_dir: str | Path, image_size: int, count: int, shard_bytes: int = SHARD_BYTES) -> None:
        if count < 1:
            raise ShardError(f"{out_dir}: a shard folder needs at least one image, got count={count}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.image_size, self.count = image_size, count
        self.per_shard = images_per_shard(image_size, shard_bytes)
        self.written = 0
        self.shards: list[dict] = []
        self._file = None

    def add(self, image: np.ndarray) -> None:
        """``image``: (S, S, 3) uint8."""
        expected = (self.image_size, self.image_size, 3)
        if image.shape != expected or image.dtype != np.uint8:
            raise ShardError(f"image {self.written}: expected {expected} uint8, got {image.shape} {image.dtype}")
        if self.written >= self.count:
            raise ShardError(f"{self.out_dir}: more than the announced {self.count} images")
        if self.written % self.per_shard == 0:
            self._open_next()
        self._file.write(np.ascontiguousarray(image).tobytes())
        self.written += 1

    def _open_next(self) -> None:
        if self._file is not None:
            self._file.close()
        n = min(self.per_shard, self.count - self.written)
        name = f"shard-{len(self.shards):05d}.npy"
        self._file = open(self.out_dir / name, "wb")  # noqa: SIM115 - stays open across add() calls; close() closes it
        self._file.write(_header(n, self.image_size))
        self.shards.append({"file": name, "count": n})

    def close(self) -> Path:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.written != self.count:
            raise ShardError(f"{self.out_dir}: {self.written} images written, {self.count} announced")
        manifest = {"format": FORMAT, "image_size": self.image_size, "count": self.count, "shards": self.shards}
        (self.out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))
        return self.out_dir

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        elif self._file is not None:
            self._file.close()


def write_shards(out_dir: str | Path, images, image_size: int, count: int, shard_bytes: int = SHARD_BYTES) -> Path:
    """Write an iterable of (S, S, 3) uint8 images (e.g. a generator decoding files)."""
    with ShardWriter(out_dir, image_size, count, shard_bytes) as writer:
        for image in images:
            writer.add(image)
    return Path(out_dir)


class ShardReader:
    """Random access to a shard folder: ``read(indices)`` -> (B, 3, S, S) uint8 tensor.

    The tensor is a channels-last view of a (B, S, S, 3) buffer (no copy), which is the
    memory layout the training step wants. ``pin=True`` reads into page-locked memory,
    ready for an asynchronous copy to a GPU. Thread-safe (``pread`` keeps no file position).
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        manifest_path = self.directory / MANIFEST
        if not manifest_path.exists():
            raise ShardError(f"{manifest_path}: missing; the folder is not a finished shard folder (run ingest)")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != FORMAT:
            raise ShardError(f"{manifest_path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
        self.image_size = int(manifest["image_size"])
        self.image_bytes = self.image_size**2 * 3
        self._fds, starts, self._offsets = [], [0], []
        for shard in manifest["shards"]:
            path = self.directory / shard["file"]
            header = len(_header(shard["count"], self.image_size))
            size = path.stat().st_size if path.exists() else -1
            if size != header + shard["count"] * self.image_bytes:
                raise ShardError(f"{path}: {size} bytes, expected {header + shard['count'] * self.image_bytes} for {shard['count']} images")
            self._fds.append(os.open(path, os.O_RDONLY))
            self._offsets.append(header)
            starts.append(starts[-1] + shard["count"])
        self._starts = np.array(starts)
        if starts[-1] != manifest["count"]:
            raise ShardError(f"{manifest_path}: shards hold {starts[-1]} images, manifest says {manifest['count']}")

    def __len__(self) -> int:
        return int(self._starts[-1])

    def read(self, indices, pin: bool = False) -> torch.Tensor:
        indices = np.asarray(indices, dtype=np.int64)
        s = self.image_size
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"{self.directory}: index out of range 0..{len(self) - 1}")
        batch = torch.empty((len(indices), s, s, 3), dtype=torch.uint8, pin_memory=pin)
        buffer = batch.numpy()
        shard_of = np.searchsorted(self._starts, indices, side="right") - 1
        for row, (index, shard) in enumerate(zip(indices.tolist(), shard_of.tolist(), strict=True)):
            offset = self._offsets[shard] + (index - int(self._starts[shard])) * self.image_bytes
            if os.preadv(self._fds[shard], [buffer[row]], offset) != self.image_bytes:
                raise ShardError(f"{self.directory}: short read of image {index}; the folder changed while training")
        return batch.permute(0, 3, 1, 2)  # (B, 3, S, S), channels-last strides

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown anything may be gone already
            self.close()
