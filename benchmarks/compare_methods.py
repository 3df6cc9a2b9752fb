"""Every SSL method through the pipeline itself, on the same data and CPU budget.

For each method: `sslpipe run --set pretrain.method=<m>` in its own project root (so
runs do not share outputs), all logging into one MLflow store. Collects
reports/metrics.json and the wall time, writes results/methods.json and prints the
markdown rows of docs/methods.md.

    python benchmarks/compare_methods.py --data DIR --eval-data DIR [--epochs 4] [--methods simclr,moco] [--result NAME]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import ROOT, save_result


def main() -> None:
    from ssl_models.methods import METHODS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="unlabeled pool (folder or tar)")
    parser.add_argument("--eval-data", required=True, help="labeled train/ + test/ folders")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--work", default="/tmp/sslpipe-compare", help="scratch folder for the per-method project roots")
    parser.add_argument("--result", default="methods", help="results file name: benchmarks/results/<RESULT>.json")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    sslpipe = Path(sys.executable).parent / "sslpipe"
    rows = []
    for method in args.methods.split(","):
        root = work / method
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
        shutil.copy(ROOT / "params.yaml", root / "params.yaml")
        cmd = [str(sslpipe), "run", "-q", "--root", str(root), "--data", args.data, "--eval-data", args.eval_data,
               "--set", f"pretrain.method={method}", "--set", f"pretrain.epochs={args.epochs}",
               "--set", "register.experiment=compare-methods"] + [x for o in args.overrides for x in ("--set", o)]  # fmt: skip
        started = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        minutes = (time.perf_counter() - started) / 60
        if out.returncode != 0:
            print(f"{method}: FAILED\n{out.stderr[-2000:]}", flush=True)
            rows.append({"method": method, "failed": out.stderr[-500:]})
            continue
        metrics = json.loads((root / "reports" / "metrics.json").read_text())
        with open(root / "reports" / "pretrain" / "history.csv") as handle:
            history = list(csv.DictReader(handle))
        first_loss, last_loss = float(history[0]["loss"]), float(history[-1]["loss"])
        images_per_s = [float(epoch["images_per_s"]) for epoch in history]
        row = {"method": method, "minutes": minutes, "first_loss": first_loss, "last_loss": last_loss,
               "images_per_s": sum(images_per_s) / len(images_per_s), **{
            f"{name}_{key}": metrics[name][key] for name in ("ssl", "random_init") for key in ("linear_probe_acc", "knn_acc")}}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    save_result(
        args.result, {"epochs": args.epochs, "data": args.data, "eval_data": args.eval_data, "overrides": args.overrides, "rows": rows}
    )
    print("\n| method | linear probe | kNN | random-init probe | random-init kNN | loss first → last | minutes |")
    for r in rows:
        if "failed" in r:
            print(f"| {r['method']} | failed | | | | | |")
            continue
        print(
            f"| {r['method']} | {r['ssl_linear_probe_acc']:.3f} | {r['ssl_knn_acc']:.3f} | {r['random_init_linear_probe_acc']:.3f} | "
            f"{r['random_init_knn_acc']:.3f} | {r['first_loss']:.3f} → {r['last_loss']:.3f} | {r['minutes']:.1f} |"
        )


if __name__ == "__main__":
    main()
