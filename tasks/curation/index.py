"""The embeddings of the unlabeled pool, on disk: a faiss index plus the plain arrays beside it.

    data/embeddings/  (DVC-tracked; written whole or not at all)
        embeddings.npy   (N, D) float32, centred on the pool mean and l2-normalised, in pool order
        mean.npy         (D,) the pool mean (a query is centred with it too)
        index.faiss      faiss inner-product index over them (exact up to FLAT_LIMIT items, IVF beyond)
        items.csv        path (as in the source), sha256: row i is item i
        neighbours.npy   (N, k) int64: each item's k nearest other items, most similar first
        similarities.npy (N, k) float32: their cosine similarities
        meta.json        encoder (model name, version, weights sha256, run id), data version,
                         count, dim, k, index type

Why faiss index files and not LanceDB: the pipeline's outputs are files that DVC hashes and
versions, and a faiss index is one such file that any process opens with ``faiss.read_index``:
no table format, no server, no extra runtime beyond one wheel. The search it offers (exact
inner product, or an inverted-file index for large pools) is what near-duplicates, densities
and ``sslpipe similar`` need; metadata filters, LanceDB's strength, are not needed here (the
paths are a CSV).

Why IVF and not HNSW beyond FLAT_LIMIT (benchmarks/bench_neighbours.py, 1M items, 2 CPU cores):
HNSW (32 links, efSearch 64) took 221 s and found 80% of the true 10 nearest and 89% of the
planted near-copies; IVF (4 sqrt(N) cells, IVF_PROBES probed) searches exhaustively within
the cells it visits, and a near-copy lands in its original's cell, so it misses almost none.

Memory while embedding: one batch of images (read from the shards) and the index. The index
holds the vectors (D x 4 bytes per item: 512 B at D=128, 0.5 GB per million), as any in-memory
index must; the neighbour pass reads the embeddings back a batch at a time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

# faiss logs at INFO each CPU build it tries and fails to load (AVX512, AVX2) before the one that works
logging.getLogger("faiss.loader").setLevel(logging.WARNING)

EMBEDDINGS_FILE, INDEX_FILE, ITEMS_FILE, META_FILE = "embeddings.npy", "index.faiss", "items.csv", "meta.json"
NEIGHBOURS_FILE, SIMILARITIES_FILE, MEAN_FILE = "neighbours.npy", "similarities.npy", "mean.npy"
FLAT_LIMIT = 200_000  # exact search up to here (all-pairs kNN is N^2 D: 200k x 200k x 128 is 79 s on 2 cores); IVF beyond
IVF_PROBES = 16  # cells visited per query, of 4 sqrt(N)
IVF_TRAIN_PER_CELL = 64  # k-means training rows per cell (faiss asks for at least 39)


class CurationError(Exception):
    """Bad input for the embed stage, `sslpipe select` or `sslpipe similar`: one line, exit 2."""


def _build_index(embeddings: np.ndarray, chunk: int):
    """An inner-product index over ``embeddings`` (N, D), memory-mapped, added ``chunk`` rows at a
    time: exact up to FLAT_LIMIT items; beyond, IVF whose cells are k-means centres trained on a
    seeded sample of the rows."""
    import faiss

    count, dim = embeddings.shape
    if count <= FLAT_LIMIT:
        index = faiss.IndexFlatIP(dim)
    else:
        cells = int(4 * count**0.5)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, cells, faiss.METRIC_INNER_PRODUCT)
        sample = np.sort(np.random.default_rng(0).choice(count, min(count, IVF_TRAIN_PER_CELL * cells), replace=False))
        index.train(np.ascontiguousarray(embeddings[sample]))
        index.nprobe = IVF_PROBES
    for start in range(0, count, chunk):
        index.add(np.ascontiguousarray(embeddings[start : start + chunk]))
    return index


def _npy_header(count: int, dim: int) -> bytes:
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": (count, dim)})
    return buffer.getvalue()


def write_index(out_dir: Path, batches: Iterable[torch.Tensor], items: pd.DataFrame, meta: dict, k: int, search_batch: int = 4096) -> dict:
    """The encoder's features, as they come, into ``out_dir``: centred on the pool's mean and
    l2-normalised, indexed, each item's ``k`` nearest others, ``items`` (path, sha256) and
    ``meta``; returns the meta as written.

    Why centred: an SSL backbone's features (after a ReLU and pooling) share a large common
    component, so every raw cosine similarity is high (0.99 and more for a briefly trained
    encoder) and a threshold on them says little. Less the pool's mean, similarity measures
    what tells items apart. Two passes: the raw features go to disk first (a batch in memory
    at a time) while their sum accumulates; the second pass reads them back a chunk at a time.
    """
    count = len(items)
    raw_path = out_dir / "raw.npy"
    written, dim, total = 0, 0, None
    with open(raw_path, "wb") as handle:
        for batch in batches:
            vectors = batch.float().numpy().astype(np.float32, copy=False)
            if total is None:
                dim = vectors.shape[1]
                total = np.zeros(dim, dtype=np.float64)
                handle.write(_npy_header(count, dim))
            total += vectors.sum(0, dtype=np.float64)
            handle.write(np.ascontiguousarray(vectors).tobytes())
            written += len(vectors)
    if written != count:
        raise CurationError(f"{written} embeddings for {count} items: the prepared data changed while embedding; run `sslpipe ingest`")
    mean = (total / count).astype(np.float32)
    np.save(out_dir / MEAN_FILE, mean)
    raw = np.load(raw_path, mmap_mode="r")
    with open(out_dir / EMBEDDINGS_FILE, "wb") as handle:
        handle.write(_npy_header(count, dim))
        for start in range(0, count, search_batch):
            handle.write(_centred(np.asarray(raw[start : start + search_batch]), mean).tobytes())
    del raw
    raw_path.unlink()
    import faiss

    embeddings = np.load(out_dir / EMBEDDINGS_FILE, mmap_mode="r")
    index = _build_index(embeddings, search_batch)
    faiss.write_index(index, str(out_dir / INDEX_FILE))
    k = min(k, count - 1)
    neighbours = np.zeros((count, k), dtype=np.int64)
    similarities = np.zeros((count, k), dtype=np.float32)
    for start in range(0, count, search_batch):
        rows = np.arange(start, min(start + search_batch, count))
        sims, idx = index.search(np.ascontiguousarray(embeddings[rows]), k + 1)
        neighbours[rows], similarities[rows] = _drop_self(rows, sims, idx, k)
    np.save(out_dir / NEIGHBOURS_FILE, neighbours)
    np.save(out_dir / SIMILARITIES_FILE, similarities)
    items[["path", "sha256"]].to_csv(out_dir / ITEMS_FILE, index=False)
    meta = {**meta, "count": count, "dim": dim, "k": k, "index": type(index).__name__, "metric": "cosine, centred on the pool mean"}
    if hasattr(index, "nprobe"):
        meta["index_cells"], meta["index_probes"] = index.nlist, index.nprobe
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return meta


def _centred(vectors: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """(B, D) features less the pool mean, l2-normalised, float32 C-contiguous (what faiss takes)."""
    centred = vectors.astype(np.float32) - mean
    centred /= np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(centred, dtype=np.float32)


def _drop_self(rows: np.ndarray, sims: np.ndarray, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best hits of each row that are not the row itself (an exact copy may rank above it)."""
    keep = idx != rows[:, None]
    keep &= idx >= 0  # IVF pads with -1 when its probed cells hold fewer
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept hits first, in rank order
    taken_idx, taken_sims = np.take_along_axis(idx, order, 1), np.take_along_axis(sims, order, 1)
    return taken_idx, taken_sims


@dataclass
class EmbeddingIndex:
    """data/embeddings/ opened for reading: meta, item paths, neighbours; the index on demand."""

    directory: Path
    meta: dict
    paths: list[str]
    neighbours: np.ndarray
    similarities: np.ndarray

    @classmethod
    def open(cls, directory: Path) -> EmbeddingIndex:
        directory = Path(directory)
        meta_path = directory / META_FILE
        if not meta_path.exists():
            raise CurationError(f"{directory}: no embeddings index; run `sslpipe embed` (after a registered encoder: `sslpipe run`) first")
        meta = json.loads(meta_path.read_text())
        paths = pd.read_csv(directory / ITEMS_FILE, keep_default_na=False, na_values=[""])["path"].astype(str).tolist()
        return cls(directory, meta, paths, np.load(directory / NEIGHBOURS_FILE), np.load(directory / SIMILARITIES_FILE))

    def __len__(self) -> int:
        return len(self.paths)

    def embeddings(self) -> np.ndarray:
        """(N, D) float32, memory-mapped: pages are read as they are used."""
        return np.load(self.directory / EMBEDDINGS_FILE, mmap_mode="r")

    def search(self, queries: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` items most similar to each query (Q, D): (similarities, indices), (Q, k) each."""
        import faiss

        index = faiss.read_index(str(self.directory / INDEX_FILE), faiss.IO_FLAG_MMAP)  # pages read as searched
        vectors = _centred(queries.float().numpy(), np.load(self.directory / MEAN_FILE))
        return index.search(vectors, min(k, len(self)))

    def density(self) -> torch.Tensor:
        """Local density per item: mean cosine similarity to its k nearest others (N,)."""
        return torch.from_numpy(self.similarities.mean(1) if self.similarities.shape[1] else np.ones(len(self), np.float32))
