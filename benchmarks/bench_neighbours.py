"""The embed stage's index and curation path at up to a million items: time, peak memory, recall.

    python benchmarks/bench_neighbours.py [--sizes 200000 1000000] [--dim 128]

Embedding itself is measured on real images by bench_embed.py (flat memory, about 1,150 img/s
on 2 CPU cores); a million CIFAR images would take 15 minutes of it and say nothing new. This
benchmark feeds ``write_index`` (tasks/curation/index.py, the stage's own function) a stream of
synthetic features instead, 8,192 at a time, and then runs what the stage and the CLI run on the
index: near-duplicate pairs, outliers, a TypiClust and a k-center shortlist of 100, one
``sslpipe similar`` query. Each size runs in a fresh process; its peak RSS comes from ``wait4``.

The features: 1,000 Gaussian clusters in ``--dim`` dimensions (two items of one cluster have a
cosine similarity of about 0.5), and in every batch 1% planted near-copies (an item plus noise,
cosine about 0.99 to it). Reported besides the times:
- ``recall_at_10``: the share of each item's true 10 nearest others (exact search, 1,000 random
  items) that the index's neighbour table holds. 1.0 for the exact index; HNSW's is measured.
- ``planted_pairs_found``: the share of planted (original, copy) pairs in the near-duplicate
  list at the default threshold (0.95).
Random Gaussian clusters are harder for HNSW than real embeddings (whose intrinsic dimension is
far lower), so its recall here is a floor. Results: benchmarks/results/neighbours-cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import ROOT, save_result

BATCH, CLUSTERS, COPY_SHARE, COPY_NOISE, THRESHOLD = 8192, 1000, 0.01, 0.15, 0.95


def synthetic_batches(count: int, dim: int, seed: int = 0):
    """(B, dim) float32 tensors: clustered items, the last 1% of each batch near-copies of its first 1%."""
    import numpy as np
    import torch

    centres = np.random.default_rng(seed).standard_normal((CLUSTERS, dim)).astype(np.float32)
    for start in range(0, count, BATCH):
        rng = np.random.default_rng([seed, start])
        size = min(BATCH, count - start)
        items = centres[rng.integers(CLUSTERS, size=size)] + rng.standard_normal((size, dim), dtype=np.float32)
        copies = int(size * COPY_SHARE)
        if copies:
            items[size - copies :] = items[:copies] + COPY_NOISE * rng.standard_normal((copies, dim), dtype=np.float32)
        yield torch.from_numpy(items)


def planted_pairs(count: int) -> set[tuple[int, int]]:
    pairs = set()
    for start in range(0, count, BATCH):
        size = min(BATCH, count - start)
        copies = int(size * COPY_SHARE)
        pairs |= {(start + i, start + size - copies + i) for i in range(copies)}
    return pairs


def one(folder: Path, count: int, dim: int) -> dict:
    """The index and curation path on ``count`` synthetic items (run in its own process)."""
    import numpy as np
    import pandas as pd
    import torch

    from tasks.curation.index import EmbeddingIndex, write_index
    from tasks.curation.pool import near_duplicate_pairs, outliers, shortlist

    items = pd.DataFrame({"path": [f"item-{i:07d}.jpg" for i in range(count)], "sha256": ""})
    timings: dict[str, float] = {}
    start = time.perf_counter()
    write_index(folder, synthetic_batches(count, dim), items, {"encoder": {}, "data_version": ""}, k=10)
    timings["index_and_neighbours_s"] = time.perf_counter() - start
    index = EmbeddingIndex.open(folder)

    start = time.perf_counter()
    pairs = near_duplicate_pairs(index, THRESHOLD)
    outliers(index, 50)
    timings["duplicates_outliers_s"] = time.perf_counter() - start
    for strategy in ("typiclust", "kcenter"):
        start = time.perf_counter()
        shortlist(index, 100, strategy, THRESHOLD)
        timings[f"{strategy}_100_s"] = time.perf_counter() - start
    embeddings = index.embeddings()
    start = time.perf_counter()
    index.search(torch.from_numpy(np.array(embeddings[:1])), 10)
    timings["one_query_ms"] = 1000 * (time.perf_counter() - start)  # includes reading the index file

    # Recall against exact search (the vectors as indexed: centred and normalised) on 1,000 items.
    probe = np.random.default_rng(1).choice(count, 1000, replace=False)
    queries = np.array(embeddings[probe])
    best_sims, best_idx = np.full((len(probe), 11), -np.inf, np.float32), np.zeros((len(probe), 11), np.int64)
    for s in range(0, count, 16384):  # a running top 11 over chunks: memory stays 16k x 1,000
        sims = queries @ np.asarray(embeddings[s : s + 16384]).T
        inside = (probe >= s) & (probe < s + sims.shape[1])
        sims[inside.nonzero()[0], probe[inside] - s] = -np.inf  # an item is not its own neighbour
        all_sims = np.concatenate([best_sims, sims], 1)
        all_idx = np.concatenate([best_idx, np.broadcast_to(np.arange(s, s + sims.shape[1]), sims.shape)], 1)
        top = np.argpartition(-all_sims, 10, axis=1)[:, :11]
        best_sims, best_idx = np.take_along_axis(all_sims, top, 1), np.take_along_axis(all_idx, top, 1)
    order = np.argsort(-best_sims, axis=1)[:, :10]
    true = np.take_along_axis(best_idx, order, 1)
    recall = np.mean([len(set(true[i]) & set(index.neighbours[p])) / 10 for i, p in enumerate(probe)])
    found = {(a, b) for a, b, _ in pairs}
    planted = planted_pairs(count)
    return {
        "items": count,
        "dim": dim,
        "index": index.meta["index"],
        **{key: round(value, 2) for key, value in timings.items()},
        "recall_at_10": round(float(recall), 4),
        "planted_pairs": len(planted),
        "planted_pairs_found": round(len(planted & found) / len(planted), 4),
        "pairs_at_threshold": len(pairs),
        "index_file_mb": round((folder / "index.faiss").stat().st_size / 2**20),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # child: an empty output folder
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.count, args.dim)))
        return
    rows = []
    load_at_start = os.getloadavg()[0]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as work:
        for size in args.sizes:
            folder = Path(work) / f"index-{size}"
            folder.mkdir()
            command = [sys.executable, __file__, "--one", str(folder), "--count", str(size), "--dim", str(args.dim)]
            process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
            output = process.stdout.read()
            _, status, usage = os.wait4(process.pid, 0)
            if os.waitstatus_to_exitcode(status):
                raise RuntimeError(f"size {size} failed")
            row = json.loads(output.strip().splitlines()[-1]) | {"peak_rss_mb": round(usage.ru_maxrss / 1024)}
            print(row, flush=True)
            rows.append(row)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores ({platform.processor() or platform.system()})",
        "load_average_at_start": round(load_at_start, 2),
        "features": f"synthetic: {CLUSTERS} Gaussian clusters, {COPY_SHARE:.0%} planted near-copies (noise {COPY_NOISE})",
        "rows": rows,
    }
    print(save_result("neighbours-cpu", result))


if __name__ == "__main__":
    main()
