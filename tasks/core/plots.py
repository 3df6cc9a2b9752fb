"""Small matplotlib figures the stages write as PNGs (and log to MLflow).

Every figure has a title and labelled axes: it is read on its own, in the MLflow UI or
``dvc plots``, away from the code that drew it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:
    from tasks.core.atomic import save_with

    fig.tight_layout()
    save_with(path, lambda tmp: fig.savefig(tmp, dpi=100, format=Path(path).suffix.lstrip(".") or "png"))  # all or nothing
    plt.close(fig)  # pyplot keeps every open figure alive otherwise
    return path


def training_curves(history: Sequence[dict], path: Path, title: str = "Pretraining, per epoch") -> Path:
    """Loss, embedding std and effective rank per epoch, side by side."""
    plt = _pyplot()
    keys = [
        ("loss", "training loss"),
        ("embedding_std", "std of normalised embeddings"),
        ("effective_rank", "effective rank of embeddings"),
    ]
    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4))
    for ax, (key, label) in zip(axes, keys, strict=True):
        ax.plot(epochs, [row[key] for row in history], marker="o")
        ax.set_title(label)
        ax.set_xlabel("epoch")
        epoch_axis(ax, epochs)
        ax.set_ylabel(label.split(" of ")[0])
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return _save(plt, fig, path)


def epoch_axis(ax, epochs: Sequence[int]) -> None:
    """Whole epochs on the x axis: each epoch a tick up to 12 of them, else integer ticks only;
    never 1.5, nor 0.945 ... 1.065 around a run of one epoch (matplotlib's integer locator
    gives up on a range that holds a single integer)."""
    from matplotlib.ticker import MaxNLocator

    ticks = sorted(set(epochs))
    if not ticks:
        return
    if len(ticks) <= 12:
        ax.set_xticks(ticks, [str(int(t)) for t in ticks])
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(ticks) == 1:
        ax.set_xlim(ticks[0] - 0.5, ticks[0] + 0.5)


ENCODER_NAMES = {"ssl": "SSL encoder", "random_init": "random init", "raw_pixels": "raw pixels"}


def accuracy_bars(
    metrics: dict[str, dict[str, float]],
    path: Path,
    title: str = "Frozen features: linear probe and kNN accuracy",
    *,
    chance: float | None = None,
    supervised: float | None = None,
) -> Path:
    """Linear-probe and kNN accuracy for each encoder, grouped bars; dashed lines for chance
    (1 / classes) and the supervised reference (the same architecture trained on every label)."""
    plt = _pyplot()
    names = [n for n in metrics if "linear_probe_acc" in metrics[n]]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    width = 0.38
    for offset, key, label in [(-width / 2, "linear_probe_acc", "linear probe"), (width / 2, "knn_acc", "kNN")]:
        values = [metrics[n][key] for n in names]
        bars = ax.bar([i + offset for i in range(len(names))], values, width, label=label)
        ax.bar_label(bars, fmt="%.3f", fontsize=8, padding=2)
    ax.set_xticks(range(len(names)), [ENCODER_NAMES.get(n, n) for n in names])
    ax.set_xlabel("encoder")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.08)  # room for the value labels above a bar near 1
    for level, label, colour in ((supervised, "from scratch, all labels", "tab:green"), (chance, "chance", "tab:gray")):
        if level is not None:
            ax.axhline(level, linestyle="--", linewidth=1, color=colour, label=f"{label} ({level:.3f})")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    return _save(plt, fig, path)


def label_efficiency_plot(
    rows: Sequence[dict], path: Path, title: str = "Label efficiency: fine-tuned SSL encoder vs from scratch"
) -> Path:
    """Test accuracy against the share of labels: fine-tuned SSL encoder vs from scratch."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    fractions = [row["fraction"] for row in rows]
    series = (("ssl_finetune", "SSL encoder, fine-tuned"), ("scratch", "same architecture, from scratch"))
    for key, label in series:
        ax.plot(fractions, [row[key] for row in rows], marker="o", label=label)
    # At each point the higher value is written above its marker and the lower one below, so
    # two close values never print on top of each other.
    for x, row in zip(fractions, rows, strict=True):
        high, low = sorted((key for key, _ in series), key=lambda k: row[k], reverse=True)
        ax.annotate(f"{row[high]:.3f}", (x, row[high]), textcoords="offset points", xytext=(0, 7), ha="center", va="bottom", fontsize=8)
        ax.annotate(f"{row[low]:.3f}", (x, row[low]), textcoords="offset points", xytext=(0, -7), ha="center", va="top", fontsize=8)
    ax.set_xscale("log")
    ax.set_xticks(fractions, [f"{f * 100:g}%\n({row['labels']})" for f, row in zip(fractions, rows, strict=True)])
    ax.minorticks_off()
    ax.set_xlim(min(fractions) / 1.8, max(fractions) * 1.8)  # the end labels stay inside the axes
    ax.set_xlabel("share of the train labels used (count)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(loc="upper left")
    return _save(plt, fig, path)


def embedding_plot(points: Sequence[Sequence[float]], labels: Sequence[int], classes: Sequence[str], path: Path, title: str) -> Path:
    """A 2-D projection of embeddings, one colour per class."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 5))
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for index, name in enumerate(classes):
        members = [p for p, y in zip(points, labels, strict=True) if y == index]
        if members:
            xs, ys = zip(*members, strict=True)
            ax.scatter(xs, ys, s=8, color=cmap(index % cmap.N), label=name)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    # Outside the axes: inside, "best" still hides a cluster.
    ax.legend(fontsize=8, markerscale=2, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="class", borderaxespad=0)
    return _save(plt, fig, path)


def _as_hwc(images) -> list:
    """(N, 3, H, W) float in [0, 1] (torch or numpy) -> N arrays (H, W, 3) for imshow."""
    import numpy as np

    array = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    return list(np.clip(array.transpose(0, 2, 3, 1), 0, 1))


def augment_preview(
    images, views1, views2, path: Path, title: str = "Augmentation preview: two random views of each image", local_views: Sequence = ()
) -> Path:
    """A grid with one column per image and labelled rows: the original, view 1, view 2,
    then one row per local crop (multi-crop), when ``local_views`` holds any.

    ``images``, ``views1``, ``views2``, each of ``local_views``: (N, 3, H, W) floats in [0, 1]
    (local crops smaller). Each picture is drawn about an inch and a half wide, pixels kept
    sharp (no smoothing of a 32-pixel image); a local crop fills the same square, so its
    pixels look larger."""
    plt = _pyplot()
    rows = [("original", _as_hwc(images)), ("view 1", _as_hwc(views1)), ("view 2", _as_hwc(views2))]
    rows += [(f"local {i + 1} ({crops.shape[-1]} px)", _as_hwc(crops)) for i, crops in enumerate(local_views)]
    if local_views and title == "Augmentation preview: two random views of each image":
        title = f"Augmentation preview: two random {views1.shape[-1]} px views and {len(local_views)} local crops of each image"
    columns = len(rows[0][1])
    fig, axes = plt.subplots(len(rows), columns, figsize=(1.5 * columns + 1.0, 1.5 * len(rows) + 0.7), squeeze=False)
    for r, (label, pictures) in enumerate(rows):
        for c, picture in enumerate(pictures):
            ax = axes[r][c]
            ax.imshow(picture, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=11, rotation=90)
            if r == 0:
                ax.set_title(f"image {c + 1}", fontsize=9)
    fig.suptitle(title)
    return _save(plt, fig, path)


def masking_preview(
    rows: Sequence[tuple[str, str]], path: Path, title: str = "MLM preview: each document, then what the encoder sees"
) -> Path:
    """Text's augment preview: per document its first tokens and the same tokens after BERT's
    masking (what the encoder gets; the pieces to predict in brackets)."""
    import textwrap

    plt = _pyplot()
    lines: list[tuple[str, str]] = []
    for index, (original, masked) in enumerate(rows, start=1):
        lines += [(f"document {index}", line) for line in textwrap.wrap(original, 150)[:2]]
        lines += [("masked", line) for line in textwrap.wrap(masked, 150)[:2]]
        lines.append(("", ""))
    fig = plt.figure(figsize=(14, 0.26 * len(lines) + 0.8))
    for i, (label, line) in enumerate(lines):
        y = 0.93 * (1 - (i + 0.5) / max(1, len(lines)))  # below the title
        fig.text(0.01, y, label, fontsize=8, weight="bold", va="center")
        fig.text(0.1, y, line, fontsize=8, family="monospace", va="center", color="firebrick" if label == "masked" else "black")
    fig.suptitle(title)
    return _save(plt, fig, path)


def per_class_accuracy_plot(classes: Sequence[str], matrix, path: Path, title: str = "Test accuracy per class") -> Path:
    """One horizontal bar per class (its test accuracy, the number of test items beside it),
    from a confusion matrix (row = true class); a dashed line at the overall accuracy.
    Horizontal, so that long class names stay readable; the height follows the class count."""
    import numpy as np

    plt = _pyplot()
    counts = np.asarray(matrix, dtype=float)
    totals = counts.sum(1)
    accuracy = np.divide(counts.diagonal(), totals, out=np.zeros(len(classes)), where=totals > 0)
    overall = counts.trace() / max(counts.sum(), 1)
    fig, ax = plt.subplots(figsize=(6.4, max(3.0, 0.32 * len(classes) + 1.6)))
    positions = range(len(classes))
    ax.barh(positions, accuracy, color="tab:blue")
    # The values in a column right of the axes (x = 1 and beyond), so neither a bar near 1 nor
    # the overall line runs through them.
    beside = ax.get_yaxis_transform()  # x in axes units, y in data units
    for position, a, n in zip(positions, accuracy, totals, strict=True):
        ax.text(1.02, position, f"{a:.3f} (n={int(n)})", transform=beside, fontsize=8, va="center", clip_on=False)
    ax.set_yticks(list(positions), list(classes), fontsize=9 if len(classes) <= 30 else 6)
    ax.invert_yaxis()  # the first class on top, as in the confusion matrix
    ax.axvline(overall, linestyle="--", linewidth=1, color="tab:gray")
    ax.set_xlim(0, 1)
    ax.set_xlabel("test accuracy")
    ax.set_ylabel("class")
    ax.set_title(f"{title}\n(dashed: overall, {overall:.3f})", fontsize=11)  # a legend would cover a bar
    return _save(plt, fig, path)


def confusion_matrix_plot(classes: Sequence[str], matrix, path: Path, title: str = "Confusion matrix (test split)") -> Path:
    """Counts of true class (rows) against predicted class (columns), shaded by the share of
    each true class (so a small class reads as clearly as a large one), each cell's count
    written in it up to 25 classes."""
    import numpy as np

    plt = _pyplot()
    counts = np.asarray(matrix, dtype=float)
    totals = counts.sum(1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    side = min(16.0, max(4.0, 0.45 * len(classes) + 2.5))
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if len(classes) <= 25:
        for (row, column), count in np.ndenumerate(counts):
            colour = "white" if shares[row, column] > 0.5 else "black"
            ax.text(column, row, f"{int(count)}", ha="center", va="center", fontsize=8, color=colour)
    size = 9 if len(classes) <= 15 else 6
    # Upright names under the columns side by side collide from a handful of classes on: turned a quarter.
    ax.set_xticks(range(len(classes)), list(classes), rotation=90 if len(classes) > 4 else 0, fontsize=size)
    ax.set_yticks(range(len(classes)), list(classes), fontsize=size)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    return _save(plt, fig, path)
