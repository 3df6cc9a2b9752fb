"""The figures people look at: every one titled and labelled, the augmentation preview big
enough to see with its rows named, label-efficiency values that do not print over each other."""

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pytest
import torch
from PIL import Image

from tasks.core import plots

HISTORY = [{"epoch": e, "loss": 5 - e, "embedding_std": 0.1 * e, "effective_rank": 3 * e} for e in range(1, 4)]
METRICS = {"ssl": {"linear_probe_acc": 0.42, "knn_acc": 0.37}, "random_init": {"linear_probe_acc": 0.31, "knn_acc": 0.29}}
# Close values at every fraction: the case where labels collided.
ROWS = [
    {"fraction": f, "labels": n, "ssl_finetune": a, "scratch": a - 0.004}
    for f, n, a in ((0.01, 20, 0.14), (0.1, 200, 0.35), (1.0, 2000, 0.43))
]


def _texts(monkeypatch):
    """Capture the figure each plot saves, to inspect its titles and labels."""
    saved = {}
    original = plots._save

    def keep(plt, fig, path):
        fig.canvas.draw()
        saved["fig"] = fig
        saved["renderer"] = fig.canvas.get_renderer()
        return original(plt, fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return saved


CLASSES = ["airplane", "automobile", "bird"]
CONFUSION = np.array([[5, 2, 1], [0, 8, 0], [3, 0, 1]])


@pytest.mark.parametrize("draw", ["curves", "bars", "label_efficiency", "embeddings", "preview", "per_class", "confusion"])
def test_every_plot_has_a_title_and_labelled_axes(tmp_path, monkeypatch, draw):
    saved = _texts(monkeypatch)
    images = torch.rand(4, 3, 32, 32)
    path = tmp_path / f"{draw}.png"
    {
        "curves": lambda: plots.training_curves(HISTORY, path),
        "bars": lambda: plots.accuracy_bars(METRICS, path),
        "label_efficiency": lambda: plots.label_efficiency_plot(ROWS, path),
        "embeddings": lambda: plots.embedding_plot([[0, 0], [1, 1]], [0, 1], ["cat", "dog"], path, "t-SNE of test embeddings"),
        "preview": lambda: plots.augment_preview(images, images.flip(3), images.flip(2), path),
        "per_class": lambda: plots.per_class_accuracy_plot(CLASSES, CONFUSION, path),
        "confusion": lambda: plots.confusion_matrix_plot(CLASSES, CONFUSION, path),
    }[draw]()
    fig = saved["fig"]
    titles = [fig._suptitle.get_text()] if fig._suptitle else []
    titles += [ax.get_title() for ax in fig.axes]
    assert any(t.strip() for t in titles), "no title"
    if draw != "preview":
        for ax in fig.axes:
            assert ax.get_xlabel() or ax.get_ylabel(), f"unlabelled axes in {draw}"
        plot = fig.axes[0]  # a colour bar, where there is one, comes after the plot and has one label
        assert plot.get_xlabel() and plot.get_ylabel(), f"unlabelled axes in {draw}"
    assert Image.open(path).size[0] >= 500


def test_augment_preview_is_large_with_rows_named_original_view_1_view_2(tmp_path, monkeypatch):
    saved = _texts(monkeypatch)
    images = np.random.default_rng(0).random((6, 3, 32, 32), dtype=np.float32)
    path = plots.augment_preview(images, images[:, :, ::-1], images[:, ::-1], tmp_path / "preview.png")
    width, height = Image.open(path).size
    assert width >= 900 and height >= 400  # each 32-pixel image drawn at over 100 pixels
    axes = np.array(saved["fig"].axes).reshape(3, 6)
    assert [axes[r][0].get_ylabel() for r in range(3)] == ["original", "view 1", "view 2"]


def test_label_efficiency_values_do_not_overlap(tmp_path, monkeypatch):
    saved = _texts(monkeypatch)
    plots.label_efficiency_plot(ROWS, tmp_path / "le.png")
    fig, renderer = saved["fig"], saved["renderer"]
    boxes = [t.get_window_extent(renderer) for t in fig.axes[0].texts]
    assert len(boxes) == 6
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b), "two value labels print over each other"


def test_augment_preview_shows_local_crops_as_rows_of_their_own(tmp_path, monkeypatch):
    saved = _texts(monkeypatch)
    images = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    crops = [images[:, :, :16, :16], images[:, :, 16:, 16:]]
    plots.augment_preview(images, images, images, tmp_path / "preview.png", local_views=crops)
    axes = np.array(saved["fig"].axes).reshape(5, 4)
    assert [axes[r][0].get_ylabel() for r in range(5)] == ["original", "view 1", "view 2", "local 1 (16 px)", "local 2 (16 px)"]
    assert axes[3][0].images[0].get_array().shape == (16, 16, 3)
    assert "32 px views and 2 local crops" in saved["fig"].texts[0].get_text()


@pytest.mark.parametrize("epochs", [1, 3, 30])
def test_training_curves_tick_whole_epochs_also_for_a_single_epoch(tmp_path, monkeypatch, epochs):
    saved = _texts(monkeypatch)
    history = [{"epoch": e, "loss": 5 / e, "embedding_std": 0.1, "effective_rank": 3.0} for e in range(1, epochs + 1)]
    plots.training_curves(history, tmp_path / "curves.png")
    for ax in saved["fig"].axes:
        low, high = ax.get_xlim()
        shown = [t for t in ax.get_xticks() if low <= t <= high]
        assert shown and all(float(t).is_integer() for t in shown), shown
        labels = [t.get_text() for t in ax.get_xticklabels() if low <= t.get_position()[0] <= high]
        assert all(label.isdigit() for label in labels), labels
        if epochs == 1:
            assert shown == [1] and labels == ["1"]


def test_per_class_accuracy_and_confusion_matrix_name_every_class_and_count(tmp_path, monkeypatch):
    saved = _texts(monkeypatch)
    plots.per_class_accuracy_plot(CLASSES, CONFUSION, tmp_path / "per_class.png")
    ax, renderer = saved["fig"].axes[0], saved["renderer"]
    assert [t.get_text() for t in ax.get_yticklabels()] == CLASSES
    assert [t.get_text() for t in ax.texts] == ["0.625 (n=8)", "1.000 (n=8)", "0.250 (n=4)"]
    assert "overall, 0.700" in ax.get_title()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    axes_box, figure_box = ax.get_window_extent(renderer), saved["fig"].bbox
    # In a column right of the axes: no bar and no overall line runs through them, and the figure holds them.
    assert all(axes_box.x1 <= box.x0 and box.x1 <= figure_box.x1 for box in boxes), "a value label is inside the axes or cut off"

    plots.confusion_matrix_plot(CLASSES, CONFUSION, tmp_path / "confusion.png")
    ax, renderer = saved["fig"].axes[0], saved["renderer"]
    assert [t.get_text() for t in ax.get_xticklabels()] == [t.get_text() for t in ax.get_yticklabels()] == CLASSES
    assert sorted(int(t.get_text()) for t in ax.texts) == sorted(CONFUSION.flatten().tolist())
    labels = [t.get_window_extent(renderer) for t in ax.get_xticklabels()]
    assert not any(a.overlaps(b) for i, a in enumerate(labels) for b in labels[i + 1 :]), "class names print over each other"
    assert Image.open(tmp_path / "confusion.png").size[0] >= 400


def test_confusion_matrix_of_ten_classes_keeps_its_names_apart(tmp_path, monkeypatch):
    saved = _texts(monkeypatch)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    matrix = np.random.default_rng(0).integers(0, 30, (10, 10))
    plots.confusion_matrix_plot(names, matrix, tmp_path / "confusion.png")
    ax, renderer = saved["fig"].axes[0], saved["renderer"]
    for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
        boxes = [t.get_window_extent(renderer) for t in labels]
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
