"""GPU benchmark, prepared for a session that is lent a GPU (NOT yet run: no GPU so far).

SimCLR, ResNet-18 (width 64, CIFAR stem), batch 512, on cifar10-train (50k, 32 px):
images/s, seconds per epoch, peak GPU memory, and kNN accuracy (cifar10-dev test) after a
short run; then, in the same call, the same for lightly 1.6 when ``--lightly-python`` names
a Python that has it (its own venv, never a project dependency):

    python -m venv /tmp/lv && /tmp/lv/bin/pip install lightly==1.6.* torch==2.14.1 torchvision==0.29.1
    python benchmarks/gpu_simclr.py --epochs 3 --lightly-python /tmp/lv/bin/python

Ours: shards on disk (tasks.shards) -> PrefetchLoader (pinned, non_blocking) -> views on the
GPU -> bf16 autocast, TF32, channels_last, optionally --compile. lightly: its
SimCLRTransform in DataLoader workers, NTXentLoss, the same backbone and optimiser (SGD
lr 0.3 x batch/256 with cosine + 1 warm-up epoch, wd 5e-4 / none on norms and biases ours).
Target (issue 10): ~17,000 img/s on an H100 (200 epochs < 10 minutes).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import save_result  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
WORK = Path("/tmp/sslpipe-gpu")


def extract(name: str) -> Path:
    target = WORK / name
    if not target.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        with tarfile.open(DATA / f"{name}.tar.gz") as tar:
            tar.extractall(WORK, filter="data")
    return target


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
    return knn_accuracy(extract_features(encoder, train_x, device=device), train_y, extract_features(encoder, test_x, device=device), test_y)


def ours(epochs: int, batch: int, compile_: bool) -> dict:
    from PIL import Image

    from ssl_models.augment import ViewPolicy
    from ssl_models.encoder import Encoder
    from ssl_models.methods import build_method
    from ssl_models.training import TrainSettings, pretrain
    from tasks.shards import ShardReader, write_shards

    device = torch.device("cuda")
    shards = WORK / "shards-50k"
    if not (shards / "shards.json").exists():
        files = sorted(extract("cifar10-train").rglob("*.jpg"))
        write_shards(shards, (np.asarray(Image.open(f).convert("RGB")) for f in files), 32, len(files))
    torch.manual_seed(0)
    encoder = Encoder("resnet18_cifar", {"width": 64, "image_size": 32}, 32)
    method = build_method("simclr", encoder, ViewPolicy())
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    history = pretrain(method, ShardReader(shards), TrainSettings(epochs=epochs, batch_size=batch, compile=compile_), device, progress=False)
    total = time.perf_counter() - started
    return {
        "impl": "sslpipe", "compile": compile_, "epochs": epochs, "seconds": total,
        "images_per_s_last_epoch": history[-1].images_per_s, "seconds_per_epoch_last": 50_000 / history[-1].images_per_s,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20, "knn": knn(method.encoder, device),
    }  # fmt: skip


LIGHTLY = r'''
import json, sys, time, torch, torchvision
from torch import nn
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.transforms import SimCLRTransform
epochs, batch, root = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
net = torchvision.models.resnet18(weights=None)
net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False); net.maxpool = nn.Identity(); net.fc = nn.Identity()
head = SimCLRProjectionHead(512, 512, 128)
model = nn.Sequential(net, head).cuda().to(memory_format=torch.channels_last)
data = torchvision.datasets.ImageFolder(root, transform=SimCLRTransform(input_size=32, gaussian_blur=0.0, cj_strength=0.5))
loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, drop_last=True, num_workers=8, pin_memory=True, persistent_workers=True)
opt = torch.optim.SGD(model.parameters(), lr=0.3 * batch / 256, momentum=0.9, weight_decay=5e-4)
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * len(loader))
loss_fn = NTXentLoss(temperature=0.2)
torch.cuda.reset_peak_memory_stats(); start = time.perf_counter(); rates = []
for epoch in range(epochs):
    t = time.perf_counter()
    for (x0, x1), _ in loader:
        x = torch.cat([x0, x1]).cuda(non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            z = model(x)
        loss = loss_fn(*z.float().chunk(2))
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step(); sched.step()
    torch.cuda.synchronize(); rates.append(len(loader) * batch / (time.perf_counter() - t))
torch.save(net.state_dict(), "/tmp/sslpipe-gpu/lightly_backbone.pt")
print(json.dumps({"impl": "lightly", "epochs": epochs, "seconds": time.perf_counter() - start, "images_per_s_last_epoch": rates[-1],
                  "seconds_per_epoch_last": 50000 / rates[-1], "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20}))
'''


def lightly(python: str, epochs: int, batch: int) -> dict:
    out = subprocess.run([python, "-c", LIGHTLY, str(epochs), str(batch), str(extract("cifar10-train"))], capture_output=True, text=True)
    if out.returncode:
        return {"impl": "lightly", "error": out.stderr[-1500:]}
    row = json.loads(out.stdout.strip().splitlines()[-1])
    import torchvision
    from torch import nn

    net = torchvision.models.resnet18(weights=None)
    net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    net.maxpool, net.fc = nn.Identity(), nn.Identity()
    net.load_state_dict(torch.load(WORK / "lightly_backbone.pt", weights_only=True))

    class Normalised(nn.Module):  # lightly's transform normalises with ImageNet statistics
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

        def forward(self, x):
            return self.net((x - self.mean) / self.std)

    return row | {"knn": knn(Normalised(), torch.device("cuda"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--lightly-python")
    args = parser.parse_args()
    rows = [ours(args.epochs, args.batch, args.compile)]
    print(json.dumps(rows[-1]), flush=True)
    if args.lightly_python:
        rows.append(lightly(args.lightly_python, args.epochs, args.batch))
        print(json.dumps(rows[-1]), flush=True)
    save_result("gpu-simclr", {"device": torch.cuda.get_device_name(), "torch": torch.__version__, **vars(args), "rows": rows})


if __name__ == "__main__":
    main()
