"""Peak memory of the real stages at 224 px, at 1x and 4x the images.

    python benchmarks/bench_pipeline_memory.py [--copies 4] [--size 224]

Builds an unlabeled folder from Imagenette's 3,000 train JPEGs (``../shared/data/
imagenette-dev.tar.gz``; the 4x folder holds each file 4 times under other names, with
``validate.allow_duplicates`` on), then in a fresh project root per size runs the stage
commands ``sslpipe validate`` and ``sslpipe ingest`` as a user would, and one epoch of
pretraining's data path (``PrefetchLoader`` over the shards ingest wrote). Each runs in its
own process: its peak RSS (``wait4``: the process and the workers it waited for, the
largest one) is what it cost. The goal (issue 10): peak memory grows by less than 30% of
the decoded size of the extra images (3 x 224 x 224 bytes each).
Results: benchmarks/results/pipeline-memory-224.json (machine in it).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import ROOT, save_result

IMAGENETTE = ROOT.parent / "shared" / "data" / "imagenette-dev.tar.gz"


def unlabeled_folder(work: Path, copies: int) -> Path:
    """Imagenette's train JPEGs, ``copies`` times each, flat (labels dropped)."""
    extracted = work / "imagenette-dev"
    if not extracted.exists():
        with tarfile.open(IMAGENETTE) as tar:
            tar.extractall(work, filter="data")
    folder = work / f"unlabeled-x{copies}"
    folder.mkdir()
    for path in sorted((extracted / "train").rglob("*.JPEG")):
        for copy in range(copies):
            os.link(path, folder / f"{path.parent.name}_{copy}_{path.name}")
    return folder


def measured(command: list[str], env: dict) -> dict:
    """Run ``command``; its wall time and peak RSS (MB) from the kernel's accounting."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{' '.join(command)} failed:\n{output[-3000:]}")
    return {"seconds": round(time.perf_counter() - start, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024)}


def stages(folder: Path, size: int, root: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db"}
    common = [
        "--root",
        str(root),
        "-q",
        "--data",
        str(folder),
        "--set",
        f"data.image_size={size}",
        "--set",
        "validate.allow_duplicates=true",
    ]
    cli = [sys.executable, "-m", "flows.cli"]
    result = {"validate": measured([*cli, "validate", *common], env), "ingest": measured([*cli, "ingest", *common], env)}
    read = [
        sys.executable,
        str(ROOT / "benchmarks" / "bench_streaming.py"),
        "--batch",
        "64",
        "--one",
        "read",
        str(root / "data" / "prepared" / "unlabeled"),
    ]
    result["pretrain_data_epoch"] = measured(read, env)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=4, help="the larger run holds this many times the images")
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sslpipe-mem-") as tmp:
        work = Path(tmp)
        runs = {}
        for copies in (1, args.copies):
            folder = unlabeled_folder(work, copies)
            images = sum(1 for _ in folder.iterdir())
            root = work / f"root-x{copies}"
            root.mkdir()
            shutil.copytree(ROOT / "data" / "sample", root / "data" / "sample")  # the default labeled set
            runs[f"x{copies}"] = {"images": images, **stages(folder, args.size, root)}
            print(copies, runs[f"x{copies}"], flush=True)
    small, large = runs["x1"], runs[f"x{args.copies}"]
    extra_decoded_mb = (large["images"] - small["images"]) * 3 * args.size**2 / 2**20
    growth = {
        stage: {
            "growth_mb": large[stage]["peak_rss_mb"] - small[stage]["peak_rss_mb"],
            "share_of_extra_decoded": round((large[stage]["peak_rss_mb"] - small[stage]["peak_rss_mb"]) / extra_decoded_mb, 3),
        }
        for stage in ("validate", "ingest", "pretrain_data_epoch")
    }
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "load_average": os.getloadavg()},
        "image_size": args.size,
        "extra_decoded_mb": round(extra_decoded_mb),
        "runs": runs,
        "growth": growth,
    }
    print(growth)
    print(save_result(f"pipeline-memory-{args.size}", result))


if __name__ == "__main__":
    main()
