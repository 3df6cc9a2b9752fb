"""Pretraining throughput and peak memory for each SSL method.

Runs ``ssl_models.training.pretrain`` for a few steps on real images, as the pipeline
does (uint8 data on the device, batched views), and reports images/s after a warm-up
step and peak resident memory (peak CUDA memory on a GPU).

    python benchmarks/bench_training.py [--methods simclr,moco] [--width 16] [--batch 256] [--steps 6]
        [--size 224] [--local-crops 4]

``--size``: the view size (the 32 px sample is upsampled by the crop, as at 224 px in the
pipeline), with the encoder built for it (ImageNet stem, 16 px ViT patches at 224 px);
``--local-crops``: multi-crop for methods that take local crops (3/7 of the size).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import load_sample, save_result
from ssl_models.augment import ViewPolicy, recipe_for_size
from ssl_models.encoder import Encoder
from ssl_models.methods import METHODS, build_method, default_backbone


def measure(
    name: str, images: torch.Tensor, width: int, batch: int, steps: int, device: torch.device, size: int = 32, local_crops: int = 0
) -> dict:
    torch.manual_seed(0)
    encoder = Encoder(default_backbone(name), {"width": width, "image_size": size}, size)
    crops = local_crops if getattr(METHODS[name], "local_crops", None) is not None else 0
    views = dataclasses.replace(recipe_for_size(size), local_crops=crops) if size != 32 or crops else ViewPolicy()
    method = build_method(name, encoder, views).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    data = images.to(device)
    if size != images.shape[-1]:
        data = F.interpolate(data.float(), size=size, mode="bilinear", align_corners=False).round().clamp(0, 255).to(torch.uint8)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step(i: int) -> None:
        x = data[(i * batch) % len(data) :][:batch].float().div_(255).contiguous(memory_format=torch.channels_last)
        out = method.training_step(x)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        if hasattr(method, "after_step"):  # momentum encoders only
            method.after_step(i / steps)

    step(0)  # warm-up: allocations, queue fill
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(1, steps + 1):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"method": name, "images_per_s": steps * batch / elapsed, "peak_mb": peak, "size": size, "local_crops": crops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--local-crops", type=int, default=0)
    parser.add_argument("--tag", default="", help="suffix of the result file name")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one method, print JSON
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.one:
        images = load_sample(max(args.batch * 2, 512))
        print(json.dumps(measure(args.one, images, args.width, args.batch, args.steps, device, args.size, args.local_crops)))
        return
    rows = []
    for name in args.methods.split(","):
        # A fresh process per method, so peak memory is that method's alone.
        cmd = [sys.executable, __file__, "--one", name, "--width", str(args.width), "--batch", str(args.batch), "--steps", str(args.steps)]
        cmd += ["--size", str(args.size), "--local-crops", str(args.local_crops)]
        row = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
        print(f"{row['method']:<16} {row['images_per_s']:>8.0f} img/s   peak {row['peak_mb']:>7.0f} MB", flush=True)
        rows.append(row)
    name = f"training-{device.type}" + (f"-{args.size}px" if args.size != 32 else "")
    name += f"-local{args.local_crops}" if args.local_crops else ""
    if args.methods != ",".join(METHODS):  # a subset: its own file, the full table is kept
        name += "-" + args.methods.replace(",", "-")
    name += args.tag
    save_result(name, {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "width": args.width,
        "batch": args.batch, "steps": args.steps, "size": args.size, "local_crops": args.local_crops, "rows": rows,
    })  # fmt: skip
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
