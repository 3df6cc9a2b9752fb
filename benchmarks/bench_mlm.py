"""MLM on AG News, stage by stage: time per stage, then probe/kNN for mlm vs random init vs TF-IDF.

Runs the text path's functions as the pipeline stages call them (validate -> ingest ->
pretrain -> evaluate), on a disjoint unlabeled / labeled cut (benchmarks/ag_news_slices.py).

    python -m benchmarks.bench_mlm --unlabeled U.csv.gz --labeled L.csv.gz --epochs 10 --dim 128 --depth 2
    python -m benchmarks.bench_mlm ... --out benchmarks/results/mlm.json --name default

Each run appends one record (settings, seconds per stage, metrics, machine) to ``--out``
(a JSON list).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch


def run(args: argparse.Namespace) -> dict:
    import tasks.text.evaluate as text_part
    from ssl_models.methods.mlm import MLM
    from ssl_models.text import TextEncoder
    from ssl_models.training import TrainSettings, pretrain
    from tasks.core.config import EvaluateConfig
    from tasks.evaluate import score_encoders
    from tasks.evaluation.scoring import label_efficiency
    from tasks.text.tokens import continuation_ids, ingest_text_labeled, ingest_text_unlabeled, load_token_shards, load_tokenizer

    torch.set_num_threads(args.threads)
    seconds: dict[str, float] = {}
    cpu_seconds: dict[str, float] = {}  # this process's CPU time: on a shared machine the honest cost
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started, cpu_started = time.perf_counter(), time.process_time()
        reports = {}
        if not args.skip_validation:
            from tasks.text.checks import validate_text_source

            for name, source, labeled in (("unlabeled", args.unlabeled, False), ("labeled", args.labeled, True)):
                report, _ = validate_text_source(source, name, root / "validation", labeled=labeled, reference=root / "reference.json")
                reports[name] = report.summary()
                assert report.success, report.summary()
        seconds["validate"], cpu_seconds["validate"] = time.perf_counter() - started, time.process_time() - cpu_started

        started, cpu_started = time.perf_counter(), time.process_time()
        table = (lambda n: root / "validation" / f"{n}_table.csv") if not args.skip_validation else (lambda n: None)
        meta = ingest_text_unlabeled(
            args.unlabeled, root / "unlabeled", table("unlabeled"), vocab_size=args.vocab_size, max_len=args.max_len
        )
        counts = ingest_text_labeled(args.labeled, root / "labeled", root / "unlabeled", table("labeled"), test_fraction=args.test_fraction)
        seconds["ingest"], cpu_seconds["ingest"] = time.perf_counter() - started, time.process_time() - cpu_started

        started, cpu_started = time.perf_counter(), time.process_time()
        torch.manual_seed(args.seed)
        ids = load_token_shards(root / "unlabeled")
        encoder = TextEncoder(meta["vocab_size"], args.max_len, args.dim, args.depth)
        pieces = continuation_ids(load_tokenizer(root / "unlabeled")) if args.whole_word else ()
        method = MLM(encoder, mask_prob=args.mask_prob, whole_word=args.whole_word, continuation_ids=pieces)
        settings = TrainSettings(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=0.01,
            warmup_epochs=1,
            optimizer="adamw",
            seed=args.seed,
        )

        def report_epoch(stats) -> None:
            print(f"epoch {stats.epoch}: loss {stats.loss:.3f}, {stats.images_per_s:.0f} docs/s", file=sys.stderr, flush=True)

        history = pretrain(method, ids, settings, "cpu", on_epoch_end=report_epoch, progress=False)
        seconds["pretrain"], cpu_seconds["pretrain"] = time.perf_counter() - started, time.process_time() - cpu_started

        started, cpu_started = time.perf_counter(), time.process_time()
        labeled = text_part.load_labeled(root / "labeled")
        metrics: dict = score_encoders(text_part, method.encoder, labeled, EvaluateConfig(), seed=args.seed)[0]
        seconds["evaluate"], cpu_seconds["evaluate"] = time.perf_counter() - started, time.process_time() - cpu_started
        if args.label_efficiency:
            started, cpu_started = time.perf_counter(), time.process_time()
            recipe = dataclasses.replace(text_part.FINETUNE, steps=args.finetune_steps)  # the pipeline's text recipe
            metrics["label_efficiency"] = label_efficiency(
                method.encoder, labeled, [0.1, 1.0], recipe, "cpu", features=text_part.features, augment=None
            )
            seconds["label_efficiency"], cpu_seconds["label_efficiency"] = time.perf_counter() - started, time.process_time() - cpu_started
    return {
        "name": args.name,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "name")},
        "documents": {"unlabeled": meta["documents"], **{f"labeled_{k}": v for k, v in counts.items()}},
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "cpu_seconds": {k: round(v, 1) for k, v in cpu_seconds.items()},
        "load_average": os.getloadavg(),
        "loss_per_epoch": [round(s.loss, 3) for s in history],
        "docs_per_s": round(sum(s.images_per_s for s in history) / len(history), 1),
        "metrics": metrics,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, {args.threads} threads",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unlabeled", required=True)
    parser.add_argument("--labeled", required=True)
    parser.add_argument("--name", default="run")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--mask-prob", type=float, default=0.15)
    parser.add_argument("--whole-word", action="store_true")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-validation", action="store_true")
    parser.add_argument("--label-efficiency", action="store_true")
    parser.add_argument("--finetune-steps", type=int, default=150)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    record = run(args)
    print(json.dumps(record, indent=2))
    if args.out:
        records = json.loads(args.out.read_text()) if args.out.exists() else []
        args.out.write_text(json.dumps([*records, record], indent=2) + "\n")


if __name__ == "__main__":
    main()
