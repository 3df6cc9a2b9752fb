"""Streaming data path: throughput against the model-only limit, and peak memory against size.

    python benchmarks/bench_streaming.py [--images 5000] [--steps 8] [--width 16] [--batch 256]

In separate processes (so each peak RSS is its own):
  write   decode N CIFAR-10 JPEGs (cifar10-train, extracted once to /tmp) into shards
          with tasks.image.shards.ShardWriter: peak RSS at 1x and 4x the images
  read    one full epoch of batches through ssl_models.data.PrefetchLoader: peak RSS at 1x, 4x
  train   in one process, alternating: SimCLR steps (ResNet-18 width 16, batch 256, 32 px)
          through the real loader from shards on disk, against the model-only limit (the same
          step on a batch already in memory); compile off and on; fp32 and bf16 autocast
Results: benchmarks/results/streaming-cpu.json (machine in it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import save_result

CIFAR = Path("/work/shared/data/cifar10-train.tar.gz")
EXTRACTED = Path("/tmp/sslpipe-bench/cifar10-train")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cifar_files(count: int) -> list[Path]:
    if not EXTRACTED.exists():
        EXTRACTED.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(CIFAR) as tar:
            tar.extractall(EXTRACTED.parent, filter="data")
    files = sorted(EXTRACTED.rglob("*.jpg"))
    return files[:: max(1, len(files) // count)][:count]


def run_write(count: int, out: Path) -> dict:
    from PIL import Image

    from tasks.image.shards import write_shards

    files = cifar_files(count)
    base = peak_rss_mb()
    start = time.perf_counter()
    images = (np.asarray(Image.open(f).convert("RGB")) for f in files)
    write_shards(out, images, image_size=32, count=len(files))
    return {"images": len(files), "seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb(), "rss_before_mb": base}


def run_read(shards: Path, batch: int) -> dict:
    from ssl_models.data import EpochSampler, PrefetchLoader
    from tasks.image.shards import ShardReader

    reader = ShardReader(shards)
    sampler = EpochSampler(len(reader), batch, seed=0)
    sampler.set_epoch(1)
    base = peak_rss_mb()
    start = time.perf_counter()
    total = sum(b.shape[0] for b in PrefetchLoader(reader, sampler))
    return {"images": total, "images_per_s": total / (time.perf_counter() - start), "peak_rss_mb": peak_rss_mb(), "rss_before_mb": base}


def run_train(shards: Path, width: int, batch: int, steps: int, compile_: bool, precision: str) -> dict:
    from ssl_models.augment import ViewPolicy
    from ssl_models.data import EpochSampler, PrefetchLoader
    from ssl_models.encoder import Encoder
    from ssl_models.methods import build_method
    from ssl_models.training import TrainSettings, _make_optimizer, autocast_dtype, compile_method
    from tasks.image.shards import ShardReader

    torch.manual_seed(0)
    method = build_method("simclr", Encoder("resnet18_cifar", {"width": width}), ViewPolicy()).to(memory_format=torch.channels_last)
    optimizer = _make_optimizer(method, TrainSettings(), 0.3)
    if compile_:
        compile_method(method)
    amp = autocast_dtype(precision, torch.device("cpu"))
    reader = ShardReader(shards)
    sampler = EpochSampler(len(reader), batch, seed=0)
    ready = reader.read(np.arange(batch))

    def step(batch_u8: torch.Tensor) -> None:  # exactly the loop's step
        x = batch_u8.float().div_(255).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
            out = method.training_step(x)
        optimizer.zero_grad(set_to_none=True)
        out.loss.float().backward()
        optimizer.step()

    for _ in range(2):  # warm-up (and compilation)
        step(ready)
    times = {"streaming": 0.0, "model_only": 0.0}
    sampler.set_epoch(1)
    loader = iter(PrefetchLoader(reader, sampler))
    for _ in range(steps):  # alternate, so load from the other engineers on the machine hits both alike
        start = time.perf_counter()
        step(next(loader))
        times["streaming"] += time.perf_counter() - start
        start = time.perf_counter()
        step(ready)
        times["model_only"] += time.perf_counter() - start
    rates = {k: steps * batch / v for k, v in times.items()}
    return {"compile": compile_, "precision": precision, **{f"{k}_images_per_s": v for k, v in rates.items()},
            "streaming_fraction": rates["streaming"] / rates["model_only"]}  # fmt: skip


def child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--one", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        kind, *rest = args.one
        if kind == "write":
            print(json.dumps(run_write(int(rest[0]), Path(rest[1]))))
        elif kind == "read":
            print(json.dumps(run_read(Path(rest[0]), args.batch)))
        else:
            print(json.dumps(run_train(Path(rest[0]), args.width, args.batch, args.steps, rest[1] == "1", rest[2])))
        return
    root = Path("/tmp/sslpipe-bench")
    result = {"machine": platform.processor() or platform.machine(), "cpus": torch.get_num_threads(), "torch": torch.__version__}
    with contextlib.suppress(StopIteration):
        result["cpu_model"] = next(
            line.split(":", 1)[1].strip()
            for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
            if "Model name" in line
        )
    result["load_average_at_start"] = list(__import__("os").getloadavg())
    for scale in (1, 4):
        n = args.images * scale
        shards = root / f"shards-{n}"
        result[f"write_{scale}x"] = child(["--one", "write", str(n), str(shards)])
        result[f"read_{scale}x"] = child(["--batch", str(args.batch), "--one", "read", str(shards)])
        print(scale, result[f"write_{scale}x"], result[f"read_{scale}x"], flush=True)
    common = ["--steps", str(args.steps), "--width", str(args.width), "--batch", str(args.batch)]
    result["train"] = []
    for compile_, precision in [(False, "fp32"), (False, "bf16")] + ([] if args.skip_compile else [(True, "fp32")]):
        row = child([*common, "--one", "train", str(root / f"shards-{args.images}"), "1" if compile_ else "0", precision])
        print(row, flush=True)
        result["train"].append(row)
    result["settings"] = vars(args) | {"one": None}
    print(save_result("streaming-cpu", result))


if __name__ == "__main__":
    main()
