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


@pytest.mark.parametrize("draw", ["curves", "bars", "label_efficiency", "embeddings", "preview"])
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
    }[draw]()
    fig = saved["fig"]
    titles = [fig._suptitle.get_text()] if fig._suptitle else []
    titles += [ax.get_title() for ax in fig.axes]
    assert any(t.strip() for t in titles), "no title"
    if draw != "preview":
        for ax in fig.axes:
            assert ax.get_xlabel() and ax.get_ylabel(), f"unlabelled axes in {draw}"
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
    assert [axes[r][0].get_ylabel() for r in range(5)] == ["original", "view 1", "view 2", "local 1", "local 2"]
    assert axes[3][0].images[0].get_array().shape == (16, 16, 3)
    assert "2 local crops" in saved["fig"].texts[0].get_text()
