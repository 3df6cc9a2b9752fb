"""The selection strategies on features whose structure is known: well-separated blobs."""

import pytest
import torch

from ssl_models.selection import STRATEGIES, kcenter_greedy, kmeans, knn_density, random_pick, select, selection_efficiency, typiclust


def blobs(per_blob: int = 40, centres: int = 5, dim: int = 16, spread: float = 0.05, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    means = torch.nn.functional.normalize(torch.randn(centres, dim, generator=generator), dim=1) * 3
    labels = torch.arange(centres).repeat_interleave(per_blob)
    return means[labels] + spread * torch.randn(len(labels), dim, generator=generator), labels


def test_kmeans_recovers_separated_blobs():
    x, labels = blobs()
    found = kmeans(x, 5, seed=1)
    # each blob is one cluster and each cluster one blob
    assert all(len(set(found[labels == b].tolist())) == 1 for b in range(5))
    assert len(set(found.tolist())) == 5


def test_typiclust_takes_one_typical_item_per_blob():
    x, labels = blobs()
    picked = typiclust(x, 5, k=10)
    assert sorted(labels[picked].tolist()) == [0, 1, 2, 3, 4]
    # the most typical item of its blob: no other member is denser
    density = knn_density(x, 10)
    for item in picked.tolist():
        assert density[item] == density[labels == labels[item]].max()


def test_kcenter_covers_every_blob_before_revisiting_one():
    x, labels = blobs()
    picked = kcenter_greedy(x, 5, seed=3)
    assert sorted(labels[picked].tolist()) == [0, 1, 2, 3, 4]
    assert len(set(picked.tolist())) == 5


def test_an_outlier_has_the_lowest_density():
    x, _ = blobs()
    x = torch.cat([x, torch.randn(1, x.shape[1]) * 3])
    assert int(knn_density(x, 10).argmin()) == len(x) - 1


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_picks_distinct_items_and_refuses_too_many(strategy):
    x, _ = blobs(per_blob=10)
    picked = select(strategy, x, 12, seed=0)
    assert len(picked) == 12 and len(set(picked.tolist())) == 12
    with pytest.raises(ValueError, match="larger than"):
        select(strategy, x, len(x) + 1)


def test_random_depends_on_the_seed():
    x, _ = blobs()
    assert random_pick(x, 10, seed=0).tolist() != random_pick(x, 10, seed=1).tolist()


def test_selection_efficiency_rows_and_diverse_picks_beat_random_on_blobs():
    x, y = blobs(per_blob=60, centres=6, spread=0.8)
    test_x, test_y = blobs(per_blob=30, centres=6, spread=0.8, seed=0)
    test_x = test_x + 0.3 * torch.randn_like(test_x)
    rows = selection_efficiency(x, y, test_x, test_y, budgets_per_class=(1,), seeds=range(4))
    assert [(r["strategy"], r["budget"]) for r in rows] == [("typiclust", 6), ("kcenter", 6), ("random", 6)]
    by = {r["strategy"]: r for r in rows}
    assert all(0 <= r["min"] <= r["accuracy"] <= r["max"] <= 1 for r in rows)
    # one item per blob (typiclust) labels every class; random misses some at 1 per class
    assert by["typiclust"]["accuracy"] >= by["random"]["accuracy"]
