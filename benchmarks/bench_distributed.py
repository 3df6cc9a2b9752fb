"""Data-parallel scaling on the CPU: 2 gloo processes against 1, same global batch.

Each configuration trains ``--steps`` steps (after one warm-up step) of a method on
synthetic 32 px images with the global batch split over the processes, through the
same path as the pipeline (``launch`` -> ``wrap_for_training`` -> DDP, SyncBN and
gathered negatives). Configurations:

    1 process x all cores     what a plain run gets from this machine
    1 process x 1 thread      one worker's speed alone, the baseline of scaling
    2 processes x 1 thread    data-parallel with gloo

    scaling efficiency = images/s of 2 processes / (2 x images/s of 1 process x 1 thread)

On a CPU the processes share the memory bandwidth and gloo's all-reduce runs on the
same cores, so this measures the communication and synchronisation overhead of the
distributed path, not what GPUs would give. Each run is appended to
``benchmarks/results/distributed-cpu.json`` with the machine and its load average.

    python benchmarks/bench_distributed.py [--method simclr] [--width 16] [--batch 64] [--steps 5]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import RESULTS
from ssl_models.augment import ViewPolicy
from ssl_models.distributed import world, wrap_for_training
from ssl_models.encoder import Encoder
from ssl_models.launch import launch
from ssl_models.methods import build_method, default_backbone


def train_steps(rank: int, world_size: int, cfg: dict) -> float:
    """One configuration on one rank; returns the seconds of ``cfg['steps']`` steps."""
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    encoder = Encoder(default_backbone(cfg["method"]), {"width": cfg["width"], "image_size": 32}, 32)
    method = build_method(cfg["method"], encoder, ViewPolicy())
    step = wrap_for_training(method, "cpu")
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    torch.manual_seed(rank)
    local_batch = cfg["batch"] // world_size
    images = torch.randint(0, 256, (local_batch, 3, 32, 32), dtype=torch.uint8)

    def one_step(i: int) -> None:
        out = step(images.float().div(255))
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        if hasattr(method, "after_step"):  # momentum encoders only
            method.after_step(i / cfg["steps"])

    one_step(0)  # warm-up: allocations, DDP buckets, the queue
    if world()[1] > 1:
        torch.distributed.barrier()
    start = time.perf_counter()
    for i in range(1, cfg["steps"] + 1):
        one_step(i)
    if world()[1] > 1:
        torch.distributed.barrier()  # the slowest rank sets the pace
    return time.perf_counter() - start


def lscpu() -> dict:
    info = dict(line.split(":", 1) for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines() if ":" in line)
    return {
        "model_name": info.get("Model name", "?").strip(),
        "cpus": os.cpu_count(),
        "cores_per_socket": info.get("Core(s) per socket", "?").strip(),
        "threads_per_core": info.get("Thread(s) per core", "?").strip(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="simclr")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64, help="global batch, split over the processes")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    base = {"method": args.method, "width": args.width, "batch": args.batch, "steps": args.steps}
    load_before = os.getloadavg()
    rows = []
    for processes, threads in [(1, cores), (1, 1), (2, 1)]:
        seconds = max(launch(train_steps, processes, {**base, "threads": threads}))
        row = {"processes": processes, "threads_each": threads, "seconds": seconds, "images_per_s": args.steps * args.batch / seconds}
        print(f"{processes} process(es) x {threads} thread(s): {row['images_per_s']:7.1f} img/s", flush=True)
        rows.append(row)
    per_worker = rows[1]["images_per_s"]
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": lscpu(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "torch": torch.__version__,
        "backend": "gloo",
        **base,
        "rows": rows,
        "scaling_efficiency_2_vs_1_thread": rows[2]["images_per_s"] / (2 * per_worker),
        "speedup_2_processes_vs_1_process_all_cores": rows[2]["images_per_s"] / rows[0]["images_per_s"],
    }
    print(f"scaling efficiency {result['scaling_efficiency_2_vs_1_thread']:.2f}; "
          f"2 processes against 1 process on all cores: x{result['speedup_2_processes_vs_1_process_all_cores']:.2f}")  # fmt: skip
    path = RESULTS / "distributed-cpu.json"
    runs = json.loads(path.read_text())["runs"] if path.exists() else []
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps({"runs": [*runs, result]}, indent=2))
    print(f"appended to {path}")


if __name__ == "__main__":
    main()
