"""The pictures of the pool's curation: near-duplicate pairs side by side, outliers, the shortlist.

An item is drawn as what its modality's part previews (tasks/<modality>/embed.py ``previews``):
an image ((H, W, 3) uint8) or a document (its first words). One function per picture, both modalities.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tasks.core.plots import _pyplot, _save


def _draw(ax, item, caption: str) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if isinstance(item, str):
        ax.text(0.02, 0.98, "\n".join(textwrap.wrap(item, 28)[:7]), fontsize=6, va="top", ha="left", family="monospace", wrap=True)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    else:
        ax.imshow(np.asarray(item), interpolation="nearest")
    ax.set_title(caption, fontsize=7)


def _empty(path: Path, title: str, what: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 1.5))
    ax.axis("off")
    ax.text(0.5, 0.5, what, ha="center", va="center")
    fig.suptitle(title)
    return _save(plt, fig, path)


def pairs_picture(previews: Sequence[tuple[object, object]], captions: Sequence[str], path: Path, title: str) -> Path:
    """One row per pair: item a, item b, the similarity in the caption (two pairs per row)."""
    if not previews:
        return _empty(path, title, "no pair above the threshold")
    plt = _pyplot()
    per_row = 2
    rows = (len(previews) + per_row - 1) // per_row
    fig, axes = plt.subplots(rows, 2 * per_row, figsize=(1.6 * 2 * per_row, 1.7 * rows + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for n, ((a, b), caption) in enumerate(zip(previews, captions, strict=True)):
        left, right = axes[n // per_row][2 * (n % per_row)], axes[n // per_row][2 * (n % per_row) + 1]
        left.axis("on")
        right.axis("on")
        _draw(left, a, caption)
        _draw(right, b, "")
    fig.suptitle(title)
    return _save(plt, fig, path)


def grid_picture(previews: Sequence[object], captions: Sequence[str], path: Path, title: str, columns: int = 8) -> Path:
    """Items in a grid, each with its caption (outliers with their density, the shortlist with its rank)."""
    if not previews:
        return _empty(path, title, "nothing to show")
    plt = _pyplot()
    columns = min(columns, len(previews))
    rows = (len(previews) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(1.5 * columns, 1.6 * rows + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for n, (item, caption) in enumerate(zip(previews, captions, strict=True)):
        ax = axes[n // columns][n % columns]
        ax.axis("on")
        _draw(ax, item, caption)
    fig.suptitle(title)
    return _save(plt, fig, path)


def efficiency_picture(
    rows: Sequence[dict], path: Path, title: str = "Which examples to label: linear probe on the picked ones only"
) -> Path:
    """Test accuracy against the label budget, one line per strategy, the spread over seeds as a band."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for strategy in dict.fromkeys(row["strategy"] for row in rows):
        mine = [row for row in rows if row["strategy"] == strategy]
        xs = [row["budget"] for row in mine]
        ys = np.array([row["accuracy"] for row in mine])
        spread = np.array([row["std"] for row in mine])
        ax.plot(xs, ys, marker="o", label=strategy)
        ax.fill_between(xs, ys - spread, ys + spread, alpha=0.2)
    ax.set_xscale("log")
    budgets = sorted({row["budget"] for row in rows})
    ax.set_xticks(budgets, [str(b) for b in budgets])  # the budgets themselves, not 2x10^1
    ax.minorticks_off()
    ax.set_xlabel("labelled examples (budget)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(plt, fig, path)
