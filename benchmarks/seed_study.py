"""Many short pretraining runs at once: how a method's kNN / probe varies with seeds and knobs.

Each line of the JSONL config file is one run:

    {"tag": "simsiam_s1", "method": "simsiam", "seed": 1, "epochs": 10,
     "method_params": {"predictor_lr_scale": 10}, "eval_at": [2, 5]}
    {"tag": "random_s1", "method": "random", "seed": 1}        # a random-init encoder

Any other key is a ``TrainSettings`` field (batch size 64 and no warm-up unless given).
Runs go to worker processes (on a GPU many small runs share it well; on a CPU use one),
train on the bundled unlabeled sample, and are scored on the bundled labeled sample (kNN
k 20 and a linear probe, as the learn test). One JSON line per run, with the per-epoch
loss, embedding std, effective rank and the kNN at ``eval_at`` epochs, is appended to
``results/<name>.jsonl``.

    python benchmarks/seed_study.py configs.jsonl --workers 12 --name simsiam_seeds
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import RESULTS, load_labeled, load_sample
from ssl_models.augment import ViewPolicy
from ssl_models.encoder import Encoder
from ssl_models.evaluation import extract_features, knn_accuracy, linear_probe
from ssl_models.methods import build_method, default_backbone
from ssl_models.training import EpochStats, TrainSettings, pretrain


def run_all(configs: list[dict], out_path: Path, width: int, device: str) -> None:
    torch.set_num_threads(1)  # many workers share the cores
    pool = load_sample(5000)
    (train_x, train_y), (test_x, test_y) = load_labeled("train"), load_labeled("test")

    def scores(encoder, probe: bool = True) -> tuple[float, float | None]:
        f_train, f_test = extract_features(encoder, train_x, device=device), extract_features(encoder, test_x, device=device)
        knn = knn_accuracy(f_train, train_y, f_test, test_y, k=20)
        return knn, linear_probe(f_train, train_y, f_test, test_y, weight_decays=(1e-2, 1e-1, 1.0)).accuracy if probe else None

    for config in configs:
        config = dict(config)
        tag, name, seed = config.pop("tag"), config.pop("method"), config.pop("seed", 0)
        method_params, eval_at = config.pop("method_params", {}), set(config.pop("eval_at", []))
        torch.manual_seed(seed)
        backbone = "resnet18_cifar" if name == "random" else default_backbone(name)
        encoder = Encoder(backbone, {"width": width, "image_size": 32}, 32)
        record: dict = {"tag": tag, "method": name, "seed": seed, "width": width, "device": device}
        if name != "random":
            method = build_method(name, encoder, ViewPolicy(), **method_params)
            settings = TrainSettings(**{"batch_size": 64, "warmup_epochs": 0, **getattr(method, "recommended", {}), **config, "seed": seed})
            curve: list[dict] = []

            def on_epoch_end(stats: EpochStats, method=method, curve=curve, eval_at=eval_at) -> None:
                point = {"epoch": stats.epoch, "loss": round(stats.loss, 4)}
                point |= {"std": round(stats.embedding_std, 4), "rank": round(stats.effective_rank, 1)}
                if stats.epoch in eval_at:
                    point["knn"] = round(scores(method.encoder, probe=False)[0], 3)
                    method.train()
                curve.append(point)

            started = time.perf_counter()
            pretrain(method, pool, settings, device=device, on_epoch_end=on_epoch_end, progress=False)
            seconds = round(time.perf_counter() - started)
            record |= {"params": method_params, "settings": settings.__dict__, "seconds": seconds, "curve": curve}
        record["knn"], record["probe"] = scores(encoder)
        print(json.dumps({k: record[k] for k in ("tag", "knn", "probe")}), flush=True)
        with out_path.open("a") as out:  # one short line per append: safe across workers
            out.write(json.dumps(record) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", type=Path, help="JSONL, one run per line")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--width", type=int, default=8, help="ResNet width (the learn test's 8)")
    parser.add_argument("--name", default="seed_study", help="results/<name>.jsonl")
    args = parser.parse_args()
    configs = [json.loads(line) for line in args.configs.read_text().splitlines() if line.strip()]
    configs.sort(key=lambda c: -c.get("epochs", 0))  # longest first, dealt round-robin
    RESULTS.mkdir(exist_ok=True)
    out_path = RESULTS / f"{args.name}.jsonl"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shares = [configs[i :: args.workers] for i in range(args.workers)]
    with multiprocessing.get_context("spawn").Pool(args.workers) as workers:
        workers.starmap(run_all, [(share, out_path, args.width, device) for share in shares if share])


if __name__ == "__main__":
    main()
