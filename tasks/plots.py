"""Small matplotlib figures the stages write as PNGs (and log to MLflow)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)  # pyplot keeps every open figure alive otherwise
    return path


def training_curves(history: Sequence[dict], path: Path) -> Path:
    """Loss, embedding std and effective rank per epoch, side by side."""
    plt = _pyplot()
    keys = [("loss", "loss"), ("embedding_std", "std of normalised embeddings"), ("effective_rank", "effective rank")]
    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2))
    for ax, (key, title) in zip(axes, keys):
        ax.plot(epochs, [row[key] for row in history], marker="o")
        ax.set_title(title)
        ax.set_xlabel("epoch")
    return _save(plt, fig, path)


def accuracy_bars(metrics: dict[str, dict[str, float]], path: Path) -> Path:
    """Linear-probe and kNN accuracy for each encoder, grouped bars."""
    plt = _pyplot()
    names = list(metrics)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.38
    for offset, key in [(-width / 2, "linear_probe_acc"), (width / 2, "knn_acc")]:
        values = [metrics[n][key] for n in names]
        bars = ax.bar([i + offset for i in range(len(names))], values, width, label=key)
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.legend()
    return _save(plt, fig, path)


def label_efficiency_plot(rows: Sequence[dict], path: Path) -> Path:
    """Test accuracy against the share of labels: fine-tuned SSL encoder vs from scratch."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    fractions = [row["fraction"] for row in rows]
    for key, label in (("ssl_finetune", "SSL encoder, fine-tuned"), ("scratch", "same architecture, from scratch")):
        values = [row[key] for row in rows]
        ax.plot(fractions, values, marker="o", label=label)
        for x, y in zip(fractions, values):
            ax.annotate(f"{y:.3f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_xticks(fractions, [f"{f * 100:g}%\n({row['labels']})" for f, row in zip(fractions, rows)])
    ax.set_xlabel("labels used (count)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.legend()
    return _save(plt, fig, path)


def embedding_plot(points: Sequence[Sequence[float]], labels: Sequence[int], classes: Sequence[str], path: Path, title: str) -> Path:
    """A 2-D projection of embeddings, one colour per class."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for index, name in enumerate(classes):
        members = [p for p, y in zip(points, labels) if y == index]
        if members:
            xs, ys = zip(*members)
            ax.scatter(xs, ys, s=8, color=cmap(index % cmap.N), label=name)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=2, loc="best")
    return _save(plt, fig, path)
