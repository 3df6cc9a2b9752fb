"""Batched SimCLR views on the device vs torchvision's per-image transforms.

Both produce two views of the same 256 CIFAR images with the same recipe (crop,
flip, colour jitter, grayscale). The per-image path is what a DataLoader worker does.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import load_sample, save_result
from ssl_models.augment import ViewPolicy


def timed(fn, repeats: int = 5) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    import torchvision.transforms.v2 as T

    torch.set_num_threads(2)
    images = load_sample(256)  # (N, 3, 32, 32) uint8
    batch = images.float() / 255
    policy = ViewPolicy()
    batched = timed(lambda: (policy(batch), policy(batch)))

    per_image = T.Compose(
        [
            T.RandomResizedCrop(32, scale=(0.2, 1.0), antialias=True),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            T.RandomGrayscale(0.2),
            T.ToDtype(torch.float32, scale=True),
        ]
    )
    looped = timed(lambda: [(per_image(img), per_image(img)) for img in images])
    result = {
        "images": len(images),
        "batched_ms": batched * 1000,
        "per_image_ms": looped * 1000,
        "speedup": looped / batched,
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=2))
    save_result("augment", result)


if __name__ == "__main__":
    main()
