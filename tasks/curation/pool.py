"""Near-duplicates, outliers and the shortlist, from the embeddings index (tasks/curation/index.py).

Everything here reads each item's k nearest neighbours, found once through the index when the
pool was embedded: no N x N matrix, so it scales with N x k.

    reports/selection/near_duplicates.csv   path_a, path_b, similarity (most similar first)
    reports/selection/outliers.csv          path, density (lowest local density first)
    reports/selection/selected.csv          rank, path, strategy, cluster or score
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ssl_models.selection import kcenter_greedy, kmeans, random_pick
from tasks.curation.index import CurationError, EmbeddingIndex


def near_duplicate_pairs(index: EmbeddingIndex, threshold: float) -> list[tuple[int, int, float]]:
    """Pairs (a, b, similarity), a < b, whose cosine similarity is at least ``threshold``,
    most similar first (ties by path order). Each pair is listed once."""
    sims, idx = index.similarities, index.neighbours
    rows, cols = np.nonzero(sims >= threshold)
    a, b = np.minimum(rows, idx[rows, cols]), np.maximum(rows, idx[rows, cols])
    pairs: dict[tuple[int, int], float] = {}
    for left, right, sim in zip(a.tolist(), b.tolist(), sims[rows, cols].tolist(), strict=True):
        pairs[(left, right)] = max(sim, pairs.get((left, right), -1.0))
    return sorted(((left, right, sim) for (left, right), sim in pairs.items()), key=lambda p: (-p[2], p[0], p[1]))


DUPLICATE_COLUMNS = ("path_a", "path_b", "similarity")


def write_table(path: Path, rows: list[dict], columns: tuple[str, ...] | None = None) -> Path:
    """A CSV written whole (tasks/core/atomic.py); ``columns`` give the header when ``rows`` is empty."""
    from tasks.core.atomic import write_text

    frame = pd.DataFrame(rows, columns=list(columns) if columns else None)
    return write_text(path, frame.to_csv(index=False))


def duplicate_rows(index: EmbeddingIndex, pairs: list[tuple[int, int, float]]) -> list[dict]:
    return [{"path_a": index.paths[a], "path_b": index.paths[b], "similarity": round(s, 5)} for a, b, s in pairs]


def outliers(index: EmbeddingIndex, count: int) -> list[tuple[int, float]]:
    """The ``count`` items of lowest local density (mean similarity to their k neighbours), lowest first."""
    density = index.density()
    order = density.argsort(stable=True)[:count].tolist()
    return [(i, float(density[i])) for i in order]


def read_exclude(path: str | Path) -> set[str]:
    """Paths already labelled: one per line, or a CSV with a ``path`` column (a previous selected.csv)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise CurationError(f"{path}: cannot read the exclude file ({err.strerror or err})") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines and "path" in lines[0].split(","):
        return set(pd.read_csv(path, keep_default_na=False)["path"].astype(str))
    return set(lines)


def candidates(index: EmbeddingIndex, pairs: list[tuple[int, int, float]], exclude: set[str] = frozenset()) -> np.ndarray:
    """Items worth labelling: not excluded, and of each near-duplicate pair one. Pairs are taken
    most similar first; a pair whose both items are still in drops its second (b), so in a dense
    group the first item stands for the items it is a near-copy of, and no more goes than needed."""
    keep = np.ones(len(index), dtype=bool)
    for a, b, _ in pairs:
        if keep[a] and keep[b]:
            keep[b] = False
    if exclude:
        keep &= np.array([p not in exclude for p in index.paths])
    return np.nonzero(keep)[0]


def shortlist(
    index: EmbeddingIndex, budget: int, strategy: str, threshold: float, exclude: set[str] = frozenset(), seed: int = 0
) -> list[dict]:
    """``budget`` items to label next by ``strategy``, skipping near-duplicates and ``exclude``.

    Rows: rank, path, strategy, and what chose each item: typiclust its cluster and density,
    kcenter its distance to the items picked before it, random nothing more.
    """
    pairs = near_duplicate_pairs(index, threshold)
    pool = candidates(index, pairs, exclude)
    if budget > len(pool):
        skipped = len(index) - len(pool)
        raise CurationError(
            f"budget {budget} is larger than the pool: {len(pool)} candidates "
            f"({len(index)} items, {skipped} near-duplicates or excluded); ask for at most {len(pool)}"
        )
    if budget < 1:
        raise CurationError(f"budget {budget}: ask for at least one item")
    features = torch.from_numpy(np.asarray(index.embeddings()[pool]))
    density = index.density()[pool]
    rows: list[dict] = []
    if strategy == "typiclust":
        labels = kmeans(features, budget, seed=seed)
        sizes = torch.bincount(labels, minlength=budget)
        for cluster in sizes.argsort(descending=True, stable=True).tolist():
            members = (labels == cluster).nonzero().flatten()
            if len(members):
                best = int(members[density[members].argmax()])
                rows.append({"item": best, "cluster": cluster, "cluster_size": int(sizes[cluster]), "score": float(density[best])})
    elif strategy == "kcenter":
        picked = kcenter_greedy(features, budget, seed=seed).tolist()
        unit = features
        for rank, item in enumerate(picked):
            gap = 0.0 if rank == 0 else float((2 - 2 * (unit[picked[:rank]] @ unit[item])).clamp_min(0).min().sqrt())
            rows.append({"item": item, "cluster": "", "cluster_size": "", "score": round(gap, 5)})
    elif strategy == "random":
        rows = [{"item": int(i), "cluster": "", "cluster_size": "", "score": ""} for i in random_pick(features, budget, seed)]
    else:
        raise CurationError(f"unknown strategy {strategy!r}; valid: typiclust, kcenter, random")
    return [
        {"rank": rank, "path": index.paths[int(pool[row["item"]])], "strategy": strategy, **{k: v for k, v in row.items() if k != "item"}}
        for rank, row in enumerate(rows, start=1)
    ] + _fill(index, pool, rows, budget, strategy, density)


def _fill(index: EmbeddingIndex, pool: np.ndarray, rows: list[dict], budget: int, strategy: str, density: torch.Tensor) -> list[dict]:
    """Typiclust's empty clusters (identical points) leave a gap: the most typical items not yet picked."""
    missing = budget - len(rows)
    if missing <= 0:
        return []
    taken = {row["item"] for row in rows}
    order = [i for i in density.argsort(descending=True).tolist() if i not in taken][:missing]
    return [
        {
            "rank": len(rows) + n,
            "path": index.paths[int(pool[i])],
            "strategy": strategy,
            "cluster": "",
            "cluster_size": "",
            "score": float(density[i]),
        }
        for n, i in enumerate(order, start=1)
    ]
