"""Cut AG News (../shared/data/ag-news-dev.csv.gz) into a disjoint unlabeled pool and a labeled set.

The unlabeled file has no label column (pretraining must not see labels); the labeled file
keeps ``label,title,description``. Per class, the first ``labeled_per_class`` rows (in file
order) go to the labeled set and the next ``unlabeled_per_class`` to the pool; both keep the
file's order. Gzip without a timestamp, so the same cut gives the same bytes (and DVC hash).

    python -m benchmarks.ag_news_slices SOURCE OUT_DIR --unlabeled-per-class 375 --labeled-per-class 250

The bundled sample (data/sample/news.csv.gz, news_labeled.csv.gz) is this cut with 375 / 250.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
from collections import Counter
from pathlib import Path


def _write_gz(path: Path, header: list[str], rows: list[list[str]]) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    with path.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as out:
        out.write(buffer.getvalue().encode("utf-8"))


def cut(source: Path, out_dir: Path, unlabeled_per_class: int, labeled_per_class: int, prefix: str = "news") -> tuple[Path, Path]:
    """Write ``<prefix>.csv.gz`` (title, description) and ``<prefix>_labeled.csv.gz``; returns both paths."""
    with gzip.open(source, "rt", encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = list(reader)
    label_at = header.index("label")
    seen: Counter = Counter()
    unlabeled, labeled = [], []
    for row in rows:
        label = row[label_at]
        seen[label] += 1
        if seen[label] <= labeled_per_class:
            labeled.append(row)
        elif seen[label] <= labeled_per_class + unlabeled_per_class:
            unlabeled.append([value for i, value in enumerate(row) if i != label_at])
    out_dir.mkdir(parents=True, exist_ok=True)
    pool, evaluation = out_dir / f"{prefix}.csv.gz", out_dir / f"{prefix}_labeled.csv.gz"
    _write_gz(pool, [c for c in header if c != "label"], unlabeled)
    _write_gz(evaluation, header, labeled)
    return pool, evaluation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--unlabeled-per-class", type=int, default=375)
    parser.add_argument("--labeled-per-class", type=int, default=250)
    parser.add_argument("--prefix", default="news")
    args = parser.parse_args()
    for path in cut(args.source, args.out_dir, args.unlabeled_per_class, args.labeled_per_class, args.prefix):
        print(path, path.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
