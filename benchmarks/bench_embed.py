"""The embed stage's cost against the pool size: throughput, peak memory, neighbour search.

    python benchmarks/bench_embed.py [--sizes 5000 20000 50000] [--width 16] [--device cpu]

For each size, the first N images of CIFAR-10's training split (``../shared/data/cifar10-train.tar.gz``)
are decoded once into prepared shards (tasks/image/shards.py, as ingest writes them); then, in a
fresh process per size, the embed stage's own path runs: the image part's ``batches`` (shards
read a batch at a time, a ResNet-18 CIFAR encoder at ``--width``, random init: the cost does not
depend on the weights) into ``write_index`` (faiss index + each item's 10 nearest neighbours),
then near-duplicates, outliers and a TypiClust shortlist of 100 from the index. Reported per
size: images/s embedding, seconds for the index and the all-items neighbour search, seconds for
the shortlist, one query's search time, and the child's peak RSS (``wait4``).
Results: benchmarks/results/embed-<device>.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import ROOT, save_result

CIFAR_TRAIN = ROOT.parent / "shared" / "data" / "cifar10-train.tar.gz"


def write_pool(folder: Path, count: int) -> None:
    """The first ``count`` CIFAR-10 train images as prepared shards + manifest (one image in memory at a time)."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    from tasks.image.shards import ShardWriter

    paths = []
    with tarfile.open(CIFAR_TRAIN) as tar, ShardWriter(folder, 32, count) as writer:
        for member in tar:
            if member.isfile() and member.name.endswith(".jpg"):
                writer.add(np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")))
                paths.append(member.name)
                if len(paths) == count:
                    break
    pd.DataFrame({"path": paths, "sha256": [""] * count}).to_csv(folder / "manifest.csv", index=False)


def one(folder: Path, width: int, device: str) -> dict:
    """The embed path on one prepared pool (run in its own process)."""
    import torch

    from ssl_models.encoder import Encoder
    from tasks.curation.index import EmbeddingIndex, write_index
    from tasks.curation.pool import near_duplicate_pairs, outliers, shortlist
    from tasks.image import embed as part

    torch.manual_seed(0)
    encoder = Encoder("resnet18_cifar", {"width": width})
    items = part.items(folder)
    out = folder.parent / f"index-{len(items)}"
    out.mkdir()
    timings: dict[str, float] = {}
    start = time.perf_counter()
    stream = part.batches(encoder, folder, 512, torch.device(device))
    embedded = []

    def timed():
        for batch in stream:
            embedded.append(len(batch))
            yield batch
        timings["embed_s"] = time.perf_counter() - start

    write_index(out, timed(), items, {"encoder": {}, "data_version": ""}, k=10)
    timings["index_and_neighbours_s"] = time.perf_counter() - start - timings["embed_s"]
    index = EmbeddingIndex.open(out)
    start = time.perf_counter()
    pairs = near_duplicate_pairs(index, 0.95)
    outliers(index, 50)
    timings["duplicates_outliers_s"] = time.perf_counter() - start
    start = time.perf_counter()
    shortlist(index, 100, "typiclust", 0.95)
    timings["typiclust_100_s"] = time.perf_counter() - start
    query = torch.from_numpy(index.embeddings()[:1].copy())
    start = time.perf_counter()
    index.search(query, 10)
    timings["one_query_ms"] = 1000 * (time.perf_counter() - start)  # includes reading the index file
    return {
        "images": len(items),
        "images_per_s": round(len(items) / timings["embed_s"], 1),
        **{key: round(value, 2) for key, value in timings.items()},
        "index": index.meta["index"],
        "dim": index.meta["dim"],
        "near_duplicate_pairs_at_0.95": len(pairs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000, 50000])
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # child: a prepared pool folder
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.width, args.device)))
        return
    rows = []
    load_at_start = os.getloadavg()[0]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as work:
        for size in args.sizes:
            folder = Path(work) / f"pool-{size}"
            write_pool(folder, size)
            command = [sys.executable, __file__, "--one", str(folder), "--width", str(args.width), "--device", args.device]
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
        "load_average_at_start": round(load_at_start, 2),  # other jobs on the machine skew the CPU timings
        "encoder": f"resnet18_cifar width {args.width}, random init",
        "device": args.device,
        "rows": rows,
    }
    print(save_result(f"embed-{args.device}", result))


if __name__ == "__main__":
    main()
