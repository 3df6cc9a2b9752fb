"""What ``pretrain.compile`` buys: the same SimCLR step eager and compiled, alternated in one process.

    python benchmarks/bench_compile.py [--width 16] [--batch 128] [--steps 10] [--size 32]

Two copies of one method (same initial weights), one through ``compile_method`` (what
``pretrain.compile: true`` does), each with its own optimiser; after warm-up (which pays
the compilation), steps alternate between them on the same ready batch, so the load from
other processes on the machine hits both alike. Reports images/s of each, the speed-up, and
the compilation time. Results: benchmarks/results/compile-<device>.json.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import save_result


def main() -> None:
    from ssl_models.augment import recipe_for_size
    from ssl_models.encoder import Encoder
    from ssl_models.methods import build_method
    from ssl_models.training import TrainSettings, _make_optimizer, compile_method

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    torch.manual_seed(0)
    eager = build_method(
        "simclr", Encoder("resnet18_cifar", {"width": args.width, "image_size": args.size}, args.size), recipe_for_size(args.size)
    )
    eager = eager.to(device).to(memory_format=torch.channels_last)
    compiled = copy.deepcopy(eager)
    compile_method(compiled)
    methods = {"eager": eager, "compiled": compiled}
    optimizers = {name: _make_optimizer(m, TrainSettings(), 0.3) for name, m in methods.items()}
    batch = torch.rand(args.batch, 3, args.size, args.size, device=device).contiguous(memory_format=torch.channels_last)

    def step(name: str) -> float:
        start = time.perf_counter()
        loss = methods[name].training_step(batch).loss
        optimizers[name].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[name].step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    warmup = {name: sum(step(name) for _ in range(2)) for name in methods}  # the compiled one compiles here
    seconds = dict.fromkeys(methods, 0.0)
    for _ in range(args.steps):
        for name in methods:
            seconds[name] += step(name)
    rates = {name: args.steps * args.batch / s for name, s in seconds.items()}
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        "load_average_at_end": os.getloadavg(),
        "settings": vars(args),
        "eager_images_per_s": rates["eager"],
        "compiled_images_per_s": rates["compiled"],
        "speedup": rates["compiled"] / rates["eager"],
        "compile_warmup_s": warmup["compiled"] - warmup["eager"],
    }
    print(result)
    print(save_result(f"compile-{device.type}", result))


if __name__ == "__main__":
    main()
