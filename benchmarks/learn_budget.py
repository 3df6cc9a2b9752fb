"""One learn-test run at a time, with knobs: does a method beat random init at a CI budget?

Same data, encoder and scoring as tests/ssl_models/test_methods_learn.py (its helpers are
imported, not copied): width-8 ResNet, the bundled 5,000 unlabeled images, kNN k 20 and
the 3-weight-decay probe on the bundled labeled sample, random init drawn with seed 1.
Each run appends one JSON line (kNN and probe at the end, and kNN after the epochs in
``--eval-at``, loss, embedding std and rank per epoch, seconds) to
``results/<name>.jsonl``.

    python benchmarks/learn_budget.py byol --epochs 4 --seeds 0 1
    python benchmarks/learn_budget.py byol --epochs 4 --method-params '{"tau_base": 0.9}'
    python benchmarks/learn_budget.py byol --epochs 4 --settings '{"lr": 0.6}'
    python benchmarks/learn_budget.py byol_reference --epochs 4   # benchmarks/byol_reference.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import RESULTS
from ssl_models.augment import ViewPolicy
from ssl_models.methods import build_method
from ssl_models.training import EpochStats, TrainSettings, pretrain
from tests.conftest import SAMPLE
from tests.ssl_models.test_methods_learn import BATCH_SIZE, POOL, _load, _new_encoder, _scores


def load_data() -> tuple[torch.Tensor, ...]:
    """What the learn test's ``data`` fixture holds: pool, train_x, train_y, test_x, test_y."""
    pool, _ = _load(SAMPLE / "unlabeled.tar.gz", limit=POOL)
    return (pool, *_load(SAMPLE / "labeled.tar.gz", "labeled/train/"), *_load(SAMPLE / "labeled.tar.gz", "labeled/test/"))


def random_init(data: tuple[torch.Tensor, ...], name: str) -> tuple[float, float]:
    """The learn test's baseline: (kNN, probe) of a random-init encoder drawn with seed 1."""
    torch.manual_seed(1)
    return _scores(_new_encoder(name), *data[1:])


def build(name: str, method_params: dict) -> torch.nn.Module:
    if name == "byol_reference":
        from benchmarks.byol_reference import ReferenceBYOL

        return ReferenceBYOL(_new_encoder("byol"), **method_params)
    return build_method(name, _new_encoder(name), ViewPolicy(), **method_params)


def run(data, name: str, seed: int, epochs: int, method_params: dict, settings: dict, eval_at: set[int]) -> dict:
    pool = data[0]
    torch.manual_seed(seed)
    method = build(name, method_params)
    options = {"batch_size": BATCH_SIZE, "warmup_epochs": 0, **getattr(method, "recommended", {}), **settings}
    train_settings = TrainSettings(epochs=epochs, seed=seed, **options)
    curve: list[dict] = []

    def on_epoch_end(stats: EpochStats) -> None:
        point = {"epoch": stats.epoch, "loss": round(stats.loss, 4)}
        point |= {"std": round(stats.embedding_std, 4), "rank": round(stats.effective_rank, 1)}
        if stats.epoch in eval_at:
            point["knn"], point["probe"] = (round(s, 3) for s in _scores(method.encoder, *data[1:]))
            method.train()
        curve.append(point)
        print(json.dumps(point), flush=True)

    started = time.perf_counter()
    pretrain(method, pool, train_settings, on_epoch_end=on_epoch_end, progress=False)
    seconds = round(time.perf_counter() - started, 1)
    knn, probe = _scores(method.encoder, *data[1:])
    return {"method": name, "seed": seed, "epochs": epochs, "params": method_params, "settings": options,
            "knn": round(knn, 3), "probe": round(probe, 3), "train_seconds": seconds, "curve": curve}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method", help="a method name, or byol_reference")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--method-params", type=json.loads, default={}, help="JSON: the method's keyword arguments")
    parser.add_argument("--settings", type=json.loads, default={}, help="JSON: TrainSettings fields (over `recommended`)")
    parser.add_argument("--eval-at", type=int, nargs="*", default=[], help="epochs after which kNN and probe are also scored")
    parser.add_argument("--tag", default="", help="a label for the run in the results")
    parser.add_argument("--name", default="learn_budget", help="results/<name>.jsonl")
    args = parser.parse_args()
    data = load_data()
    knn0, probe0 = random_init(data, "byol" if args.method == "byol_reference" else args.method)
    print(f"random init: kNN {knn0:.3f} / probe {probe0:.3f}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    for seed in args.seeds:
        record = run(data, args.method, seed, args.epochs, args.method_params, args.settings, set(args.eval_at))
        record |= {"tag": args.tag, "random_knn": round(knn0, 3), "random_probe": round(probe0, 3)}
        passed = record["knn"] > knn0 or record["probe"] > probe0
        print(f"{args.tag or args.method} seed {seed}: kNN {record['knn']:.3f} / probe {record['probe']:.3f} "
              f"({'pass' if passed else 'FAIL'}), {record['train_seconds']} s", flush=True)  # fmt: skip
        with (RESULTS / f"{args.name}.jsonl").open("a") as out:
            out.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
