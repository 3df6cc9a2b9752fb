"""``sslpipe select`` and ``sslpipe similar``: the embed stage's index (data/embeddings/) put to use.

Both read the index the embed stage wrote and change nothing but ``reports/selection/selected.csv``
and its picture (select), each written whole. Bad input (no index or no registered encoder, a
budget larger than the pool, an unreadable query) is a CurationError: one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_commands(commands) -> None:
    """The two commands' parsers (flows/cli.py adds its common --root/--params/--set)."""
    select = commands.add_parser(
        "select",
        help="shortlist the unlabeled items to label next (reports/selection/selected.csv)",
        description="Pick BUDGET items of the embedded pool to label next, skipping near-duplicates (select.duplicate_threshold) "
        "and the paths in --exclude: typiclust (typical items of k-means clusters, Hacohen et al. 2022), kcenter (k-center "
        "greedy, Sener & Savarese 2018) or random. Needs the embed stage's index (`sslpipe run` or `sslpipe embed`).",
    )
    select.add_argument("--budget", type=int, help="how many items (default: select.budget)")
    select.add_argument("--strategy", choices=("typiclust", "kcenter", "random"), help="default: select.strategy")
    select.add_argument("--exclude", metavar="FILE", help="paths already labelled: one per line, or a CSV with a path column")
    similar = commands.add_parser(
        "similar",
        help="the K pooled items most similar to an image (or a document)",
        description="Embed PATH with the encoder the index was built with and list the K most similar pooled items, "
        "most similar first (PATH itself left out when it is in the pool).",
    )
    similar.add_argument("path", metavar="PATH", help="an image file (a text file for a text pool)")
    similar.add_argument("-k", type=int, default=10, help="how many (default: 10)")
    similar.add_argument("--json", action="store_true", help="a JSON list of {path, similarity} instead of lines")
    return select, similar


def _index(root: Path):
    from tasks.core.layout import Layout
    from tasks.curation.index import CurationError, EmbeddingIndex

    layout = Layout.at(root)
    if not layout.registered.exists():
        raise CurationError(f"{layout.root}: no registered encoder (no {layout.registered}); run `sslpipe run` first")
    return layout, EmbeddingIndex.open(layout.embeddings)


def _part(index):
    from tasks.stages import STAGES

    return STAGES["embed"].part(index.meta.get("modality", "image"))


def select_command(args: argparse.Namespace, cfg) -> int:
    from tasks.curation.pictures import grid_picture
    from tasks.curation.pool import read_exclude, shortlist, write_table

    layout, index = _index(Path(args.root))
    budget = cfg.select.budget if args.budget is None else args.budget
    strategy = args.strategy or cfg.select.strategy
    exclude = read_exclude(args.exclude) if args.exclude else set()
    rows = shortlist(index, budget, strategy, cfg.select.duplicate_threshold, exclude, cfg.select.seed)
    shown = rows[: cfg.select.picture_items]
    position = {path: i for i, path in enumerate(index.paths)}
    previews = _part(index).previews(layout.unlabeled, [position[row["path"]] for row in shown])
    picture = grid_picture(
        previews, [f"#{row['rank']}" for row in shown], layout.selection / "selected.png", f"Shortlist to label ({strategy}, {len(rows)})"
    )
    out = write_table(layout.selection / "selected.csv", rows)
    excluded = sum(path in exclude for path in index.paths)
    print(f"{out}: {len(rows)} items by {strategy} ({excluded} excluded paths skipped); picture {picture}")
    return 0


def similar_command(args: argparse.Namespace, cfg) -> int:
    from tasks.core.results import file_sha256
    from tasks.curation.index import CurationError

    layout, index = _index(Path(args.root))
    query = Path(args.path)
    if not query.is_file():
        raise CurationError(f"{query}: no such file")
    if args.k < 1:
        raise CurationError(f"-k {args.k}: ask for at least one item")
    from ssl_models.encoder import WEIGHTS_FILE

    weights = layout.encoder / WEIGHTS_FILE
    encoder_meta = index.meta["encoder"]
    if not weights.exists() or file_sha256(weights) != encoder_meta["weights_sha256"]:
        raise CurationError(
            f"{layout.encoder}: not the encoder the index was built with ({encoder_meta['model_name']} version "
            f"{encoder_meta['version']}); run `sslpipe embed` (or `sslpipe run`) again"
        )
    part = _part(index)
    features = part.query(part.load_encoder(layout.encoder), layout.encoder, query, cfg.data.image_size)
    sims, idx = index.search(features, args.k + 1)
    itself = _pool_path(query, layout.source(cfg.data.unlabeled))
    hits = [(index.paths[i], float(s)) for s, i in zip(sims[0].tolist(), idx[0].tolist(), strict=True) if i >= 0]
    hits = [(path, s) for path, s in hits if path != itself][: args.k]
    if args.json:
        print(json.dumps([{"path": path, "similarity": round(s, 5)} for path, s in hits]))
    else:
        for path, s in hits:
            print(f"{s:.4f}  {path}")
    return 0


def _pool_path(query: Path, source: str) -> str | None:
    """The query's path as the pool names it, when it is a file of the (folder) source."""
    try:
        return query.resolve().relative_to(Path(source).resolve()).as_posix()
    except (ValueError, OSError):
        return None
