"""Embed stage: the registered encoder put to work on the unlabeled pool.

Every accepted unlabeled item is embedded with the encoder just registered, batch by batch from
the prepared shards, into a faiss index with the items' source paths (tasks/curation/index.py),
tagged with the encoder's registered version and the data version. From each item's nearest
neighbours in that index (never an N x N matrix) come the near-duplicates (pairs at or above
``select.duplicate_threshold``), the outliers (lowest local density) and a default shortlist
of ``select.budget`` items to label by ``select.strategy`` (ssl_models/selection.py), skipping
near-duplicates. And the check that the strategy pays: on the labeled evaluation set each
strategy picks 1, 2, 5 examples per class without their labels, the linear probe learns from
those only and is scored on the test split.

    data/embeddings/                         the index (DVC-tracked; `sslpipe select`, `similar` read it)
    reports/selection/near_duplicates.csv    path_a, path_b, similarity (most similar first)
    reports/selection/outliers.csv           path, density (lowest first)
    reports/selection/selected.csv           the default shortlist
    reports/selection/label_efficiency.csv   strategy, budget, accuracy (mean over seeds), spread
    reports/selection/metrics.json           counts and the efficiency table; *.png pictures

This is the shell; ``ctx.part`` (tasks/image/embed.py, tasks/text/embed.py) supplies:

    load_encoder(directory) -> nn.Module                       the encoder pretrain wrote
    items(prepared_dir) -> DataFrame (path, sha256)            the pool's items, in shard order
    batches(encoder, prepared_dir, batch_size, device) -> Iterator[Tensor (B, D)]   features, a batch at a time
    labeled_features(encoder, labeled_dir, device) -> (train_x, train_y, test_x, test_y)
    previews(prepared_dir, indices) -> list                    what the pictures draw: (H, W, 3) uint8 images or texts
    query(encoder, encoder_dir, path, image_size) -> Tensor (1, D)   one item from outside (`sslpipe similar`)
"""

from __future__ import annotations

import logging

import torch

from ssl_models.selection import selection_efficiency
from tasks.core.atomic import staged_dir, write_json, write_rows
from tasks.core.context import StageContext
from tasks.core.results import Embedded, MissingInput, Prepared, Pretrained, Registered
from tasks.curation.index import CurationError, EmbeddingIndex, write_index
from tasks.curation.pictures import efficiency_picture, grid_picture, pairs_picture
from tasks.curation.pool import DUPLICATE_COLUMNS, candidates, duplicate_rows, near_duplicate_pairs, outliers, shortlist, write_table

log = logging.getLogger(__name__)

LOG_INDEX_BYTES = 64 * 2**20  # the whole index goes to the MLflow run up to this size; beyond, its meta.json only


def embed(ctx: StageContext, prepared: Prepared, pretrained: Pretrained, registered: Registered) -> Embedded:
    """Embed the pool into data/embeddings/, write the selection reports, log them to the encoder's run."""
    part, layout, cfg = ctx.part, ctx.layout, ctx.cfg
    select = cfg.select
    if registered.run_id != pretrained.run_id:
        raise MissingInput(
            f"{layout.registered}: names the encoder of run {registered.run_id}, not {layout.encoder}'s ({pretrained.run_id}); "
            "run `sslpipe register` first"
        )
    device = torch.device(cfg.pretrain.device)
    encoder = part.load_encoder(pretrained.encoder_dir)
    items = part.items(prepared.unlabeled)
    if items.empty:
        raise CurationError(f"{prepared.unlabeled}: the pool is empty (validation accepted no unlabeled items); nothing to embed")
    meta = {
        "encoder": {
            "model_name": registered.model_name,
            "version": registered.version,
            "weights_sha256": pretrained.weights_sha256,
            "run_id": pretrained.run_id,
            "method": pretrained.method,
        },
        "data_version": prepared.data_version,
        "modality": ctx.modality,
    }
    log.info("embed: %d items with %s version %d", len(items), registered.model_name, registered.version)
    with staged_dir(layout.embeddings) as staging:  # the index is replaced whole, or not at all
        write_index(staging, part.batches(encoder, prepared.unlabeled, select.batch_size, device), items, meta, select.neighbors)
    index = EmbeddingIndex.open(layout.embeddings)

    out = layout.selection
    pairs = near_duplicate_pairs(index, select.duplicate_threshold)
    lowest = outliers(index, select.outliers)
    files = [
        write_table(out / "near_duplicates.csv", duplicate_rows(index, pairs), DUPLICATE_COLUMNS),
        write_table(
            out / "outliers.csv", [{"rank": r, "path": index.paths[i], "density": round(d, 5)} for r, (i, d) in enumerate(lowest, 1)]
        ),
    ]
    budget = min(select.budget, len(candidates(index, pairs)))
    if budget < select.budget:
        log.info("embed: shortlist of %d, not select.budget=%d: the pool has no more candidates", budget, select.budget)
    selected = shortlist(index, budget, select.strategy, select.duplicate_threshold, seed=select.seed)
    files.append(write_table(out / "selected.csv", selected))

    train_x, train_y, test_x, test_y = part.labeled_features(encoder, prepared.labeled, device)
    classes = int(max(train_y.max(), test_y.max())) + 1
    budgets = [b for b in select.efficiency_budgets if b * classes <= len(train_x)]
    efficiency = selection_efficiency(
        train_x,
        train_y,
        test_x,
        test_y,
        budgets_per_class=budgets,
        seeds=range(select.efficiency_seeds),
        weight_decay=select.probe_weight_decay,
    )
    files.append(write_rows(out / "label_efficiency.csv", efficiency))
    counts = {
        "items": len(index),
        "near_duplicate_pairs": len(pairs),
        "items_in_near_duplicate_pairs": len({i for a, b, _ in pairs for i in (a, b)}),
        "outliers": len(lowest),
        "selected": len(selected),
    }
    best = _best_at_smallest(efficiency)
    metrics = {
        "counts": counts,
        "label_efficiency": {row["strategy"]: {} for row in efficiency},
        "best_at_smallest_budget": best,
        "strategy": select.strategy,
        "duplicate_threshold": select.duplicate_threshold,
    }
    for row in efficiency:
        metrics["label_efficiency"][row["strategy"]][str(row["budget"])] = row["accuracy"]
    files.append(write_json(out / "metrics.json", metrics))

    n = select.picture_items
    position = {path: i for i, path in enumerate(index.paths)}
    shown = pairs[:n]
    previews = part.previews(prepared.unlabeled, [i for a, b, _ in shown for i in (a, b)])
    plots = [
        pairs_picture(
            list(zip(previews[::2], previews[1::2], strict=True)),
            [f"{s:.3f}" for _, _, s in shown],
            out / "near_duplicates.png",
            f"Most similar pairs (cosine >= {select.duplicate_threshold}; {len(pairs)} in all)",
        ),
        grid_picture(
            part.previews(prepared.unlabeled, [i for i, _ in lowest[:n]]),
            [f"density {d:.3f}" for _, d in lowest[:n]],
            out / "outliers.png",
            "Outliers: lowest local density first",
        ),
        grid_picture(
            part.previews(prepared.unlabeled, [position[row["path"]] for row in selected[:n]]),
            [f"#{row['rank']}" for row in selected[:n]],
            out / "selected.png",
            f"Shortlist to label ({select.strategy}, first {min(n, len(selected))} of {len(selected)})",
        ),
        efficiency_picture(efficiency, out / "label_efficiency.png"),
    ]
    _log(ctx, index, counts, efficiency, best, files, plots)
    markdown = _markdown(meta, counts, efficiency, best, duplicate_rows(index, pairs[:5]))
    return Embedded(
        str(layout.embeddings), counts, f"{registered.model_name} version {registered.version}", prepared.data_version, markdown
    )


def _best_at_smallest(rows: list[dict]) -> str:
    """The strategy of highest mean accuracy at the smallest budget measured (ties: the first listed)."""
    if not rows:
        return ""
    smallest = min(row["budget"] for row in rows)
    return max((row for row in rows if row["budget"] == smallest), key=lambda row: row["accuracy"])["strategy"]


def _log(ctx: StageContext, index: EmbeddingIndex, counts: dict, efficiency: list[dict], best: str, files: list, plots: list) -> None:
    """Into the encoder's run: the counts, the label-efficiency check as a table
    (``selection/label_efficiency.json``, beside its picture; not metric steps at the budgets,
    which the UI charts like training curves) with its headline (the stage's strategy at the
    smallest budget; the best one there as a tag), the index and the reports."""
    tracker = ctx.tracker
    tracker.log_metrics({f"select/{key}": value for key, value in counts.items()})
    if efficiency:
        smallest = min(row["budget"] for row in efficiency)
        mine = [row for row in efficiency if row["budget"] == smallest and row["strategy"] == ctx.cfg.select.strategy]
        if mine:
            tracker.log_metrics({f"selection_efficiency/smallest_budget/{mine[0]['strategy']}": mine[0]["accuracy"]})
        tracker.log_table(efficiency, "selection/label_efficiency.json")
    encoder = index.meta["encoder"]
    tracker.set_tags(
        {
            "embeddings.encoder": f"{encoder['model_name']}/{encoder['version']}",
            "embeddings.data_version": index.meta["data_version"],
            "embeddings.index": index.meta["index"],
            **({"selection.best_at_smallest_budget": best} if best else {}),
        }
    )
    size = sum(path.stat().st_size for path in index.directory.iterdir())
    if size <= LOG_INDEX_BYTES:
        tracker.log_artifacts(index.directory, "embeddings")
    else:
        tracker.log_artifact(index.directory / "meta.json", "embeddings")
    for path in files:
        tracker.log_artifact(path, "selection")
    for plot in plots:
        tracker.log_artifact(plot, "selection")


def _markdown(meta: dict, counts: dict, efficiency: list[dict], best: str, top: list[dict]) -> str:
    encoder = meta["encoder"]
    lines = [
        f"## The pool through {encoder['model_name']} v{encoder['version']} (data {meta['data_version'][:12]})",
        "",
        "| what | count |",
        "| --- | --- |",
        *(f"| {key.replace('_', ' ')} | {value} |" for key, value in counts.items()),
        "",
        "| strategy | budget | accuracy | std |",
        "| --- | --- | --- | --- |",
        *(f"| {row['strategy']} | {row['budget']} | {row['accuracy']:.3f} | {row['std']:.3f} |" for row in efficiency),
        "",
        f"Best at the smallest budget: **{best}**.",
    ]
    if top:
        lines += ["", "Most similar pairs:", "", *(f"- `{row['path_a']}` ~ `{row['path_b']}` ({row['similarity']:.3f})" for row in top)]
    return "\n".join(lines)
