"""SimCLR, ours against lightly 1.6's, same backbone, batch, epochs and kNN probe; GPU or CPU.

    python -m venv /tmp/lv && /tmp/lv/bin/pip install lightly==1.6.* torch==2.14.1 torchvision==0.29.1
    python benchmarks/simclr_vs_lightly.py --device cuda --epochs 3 --lightly-python /tmp/lv/bin/python
    python benchmarks/simclr_vs_lightly.py --device cpu --width 16 --batch 256 --epochs 2 --images 2560 \
        --lightly-python /tmp/lv/bin/python

Data: cifar10-train (50k, 32 px; ``--images`` takes an evenly spaced subset); probe: weighted
kNN of the frozen backbone on cifar10-dev (train 10k as the memory bank, test 2k).
Backbone: ours (ResNet-18, CIFAR stem, ``--width``; 64 is torchvision's resnet18) in both,
lightly's run imports it from this repo (PYTHONPATH) and trains it without our input
normalisation, since lightly's transform normalises.

Ours: shards on disk (tasks.image.shards) -> PrefetchLoader (pinned, non_blocking) -> views on the
device -> bf16 autocast on CUDA (fp32 on CPUs), TF32 and channels_last on CUDA, optionally --compile.
lightly's model gets the same layout as ours (channels_last on CUDA only: ssl_models/memory_format.py).
lightly: its SimCLRTransform in DataLoader workers, NTXentLoss(0.2), SimCLRProjectionHead,
SGD lr 0.3 x batch/256 with cosine, wd 5e-4 (ours: the same with 1 warm-up epoch, no wd on
norms and biases). GPU target (issue 10): ~17,000 img/s on an H100 (200 epochs < 10 min).
Results: benchmarks/results/simclr-vs-lightly-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import save_result

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
WORK = Path("/tmp/sslpipe-simclr-bench")
REPO = Path(__file__).resolve().parents[1]


def extract(name: str) -> Path:
    target = WORK / name
    if not target.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        with tarfile.open(DATA / f"{name}.tar.gz") as tar:
            tar.extractall(WORK, filter="data")
    return target


def training_files(count: int) -> list[Path]:
    """``count`` evenly spaced files of cifar10-train (every class alike), or all of them."""
    files = sorted(extract("cifar10-train").rglob("*.jpg"))
    return files[:: max(1, len(files) // count)][:count] if count else files


def labeled_tensors(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image

    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files = [(f, i) for i, c in enumerate(classes) for f in sorted((root / c).glob("*.jpg"))]
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f, _ in files])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.tensor([i for _, i in files])


def knn(encoder: torch.nn.Module, device: torch.device) -> float:
    from ssl_models.evaluation import extract_features, knn_accuracy

    dev = extract("cifar10-dev")
    train_x, train_y = labeled_tensors(dev / "train")
    test_x, test_y = labeled_tensors(dev / "test")
    return knn_accuracy(
        extract_features(encoder, train_x, device=device), train_y, extract_features(encoder, test_x, device=device), test_y
    )


def ours(args: argparse.Namespace) -> dict:
    from PIL import Image

    from ssl_models.augment import ViewPolicy
    from ssl_models.encoder import Encoder
    from ssl_models.methods import build_method
    from ssl_models.training import TrainSettings, pretrain
    from tasks.image.shards import ShardReader, write_shards

    device = torch.device(args.device)
    files = training_files(args.images)
    shards = WORK / f"shards-{len(files)}"
    if not (shards / "shards.json").exists():
        write_shards(shards, (np.asarray(Image.open(f).convert("RGB")) for f in files), 32, len(files))
    torch.manual_seed(0)
    encoder = Encoder("resnet18_cifar", {"width": args.width, "image_size": 32}, 32)
    method = build_method("simclr", encoder, ViewPolicy())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    settings = TrainSettings(epochs=args.epochs, batch_size=args.batch, compile=args.compile)
    started = time.perf_counter()
    history = pretrain(method, ShardReader(shards), settings, device, progress=False)
    return {
        "impl": "sslpipe", "compile": args.compile, "seconds": time.perf_counter() - started,
        "images_per_s_last_epoch": history[-1].images_per_s, "seconds_per_epoch_last": len(files) / history[-1].images_per_s,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        "knn": knn(method.encoder, device),
    }  # fmt: skip


LIGHTLY = r"""
import json, os, sys, time, torch, torchvision
from torch import nn
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.transforms import SimCLRTransform
from ssl_models.backbones import build_backbone
device, width, epochs, batch, out, *files = sys.argv[1:]
width, epochs, batch, cuda = int(width), int(epochs), int(batch), device.startswith("cuda")
net = build_backbone("resnet18_cifar", width=width, image_size=32)  # the same backbone as ours
head = SimCLRProjectionHead(8 * width, 8 * width, 128)
layout = torch.channels_last if cuda else torch.contiguous_format  # as ours: ssl_models/memory_format.py
model = nn.Sequential(net, head).to(device).to(memory_format=layout)
transform = SimCLRTransform(input_size=32, gaussian_blur=0.0, cj_strength=0.5)
data = [(f, 0) for f in files]
load_image = torchvision.datasets.folder.default_loader
class Files(torch.utils.data.Dataset):
    def __len__(self): return len(data)
    def __getitem__(self, i): return transform(load_image(data[i][0])), 0
workers = min(8, os.cpu_count())
loader = torch.utils.data.DataLoader(
    Files(), batch_size=batch, shuffle=True, drop_last=True, num_workers=workers, pin_memory=cuda, persistent_workers=True
)
opt = torch.optim.SGD(model.parameters(), lr=0.3 * batch / 256, momentum=0.9, weight_decay=5e-4)
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * len(loader))
loss_fn = NTXentLoss(temperature=0.2)
if cuda: torch.cuda.reset_peak_memory_stats()
start = time.perf_counter(); rates = []
for epoch in range(epochs):
    t = time.perf_counter()
    for (x0, x1), _ in loader:
        x = torch.cat([x0, x1]).to(device, non_blocking=True).contiguous(memory_format=layout)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            z = model(x)
        loss = loss_fn(*z.float().chunk(2))
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step(); sched.step()
    if cuda: torch.cuda.synchronize()
    rates.append(len(loader) * batch / (time.perf_counter() - t))
torch.save(net.state_dict(), out)
print(json.dumps({"impl": "lightly", "seconds": time.perf_counter() - start, "images_per_s_last_epoch": rates[-1],
                  "seconds_per_epoch_last": len(files) / rates[-1],
                  "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None}))
"""


def lightly(args: argparse.Namespace) -> dict:
    from ssl_models.encoder import Encoder

    weights = WORK / "lightly_backbone.pt"
    files = [str(f) for f in training_files(args.images)]
    command = [args.lightly_python, "-c", LIGHTLY, args.device, str(args.width), str(args.epochs), str(args.batch), str(weights), *files]
    out = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if out.returncode:
        return {"impl": "lightly", "error": out.stderr[-1500:]}
    row = json.loads(out.stdout.strip().splitlines()[-1])
    # lightly's transform normalises with ImageNet statistics, the ones our Encoder applies:
    # wrapped in an Encoder, its backbone is probed exactly as ours.
    encoder = Encoder("resnet18_cifar", {"width": args.width, "image_size": 32}, 32)
    encoder.backbone.load_state_dict(torch.load(weights, weights_only=True))
    return row | {"knn": knn(encoder, torch.device(args.device))}


def machine(device: str) -> dict:
    if device.startswith("cuda"):
        return {"machine": torch.cuda.get_device_name()}
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "?"
    )
    return {"machine": f"cpu: {model}", "cores": os.cpu_count(), "load_average_at_end": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--width", type=int, default=64, help="ResNet-18 base width (64: the paper's)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--images", type=int, default=0, help="evenly spaced subset of cifar10-train; 0: all 50k")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--lightly-python")
    args = parser.parse_args()
    rows = [ours(args)]
    print(json.dumps(rows[-1]), flush=True)
    if args.lightly_python:
        rows.append(lightly(args))
        print(json.dumps(rows[-1]), flush=True)
    kind = "gpu" if args.device.startswith("cuda") else "cpu"
    print(save_result(f"simclr-vs-lightly-{kind}", {**machine(args.device), "torch": torch.__version__, **vars(args), "rows": rows}))


if __name__ == "__main__":
    main()
