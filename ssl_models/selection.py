"""Which unlabeled items to label first, chosen in self-supervised feature space (no labels).

Three strategies, each a plain function of the (N, D) features of the candidates that returns
the indices it picks, in the order it picked them:

- :func:`typiclust` (Hacohen, Dekel and Weinshall, "Active Learning on a Budget: Opposite
  Strategies Suit High and Low Budgets", ICML 2022, arXiv:2202.02794): k-means into ``budget``
  clusters, then from each cluster, largest first, its most *typical* item, the one of highest
  density ``typicality(x) = 1 / mean_{y in kNN(x)} ||x - y||``. At tiny budgets typical and
  diverse beats uncertain and beats random.
- :func:`kcenter_greedy` (Sener and Savarese, "Active Learning for Convolutional Neural
  Networks: A Core-Set Approach", ICLR 2018): repeatedly the item farthest from everything
  picked so far, ``argmax_i min_j ||x_i - c_j||``, a 2-approximation of the k-center cover.
- :func:`random_pick`: the baseline every strategy must beat.

Features are compared on the unit sphere (l2-normalised), as the encoder's kNN evaluation
does, so distances and cosine similarities say the same: ``||x - y||^2 = 2 - 2 cos(x, y)``.

>>> features = torch.randn(500, 32)
>>> picked = typiclust(features, budget=10, density=knn_density(features, k=10))
>>> len(picked), len(set(picked.tolist()))
(10, 10)

:func:`selection_efficiency` measures whether a strategy pays: it picks ``budget`` labeled train
items without looking at their labels, fits the linear probe on those alone and scores it
on the test split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ssl_models.evaluation import linear_probe

STRATEGIES = ("typiclust", "kcenter", "random")


def _unit(features: torch.Tensor) -> torch.Tensor:
    return F.normalize(features.float(), dim=1)


def knn_density(features: torch.Tensor, k: int = 20, chunk_size: int = 1024) -> torch.Tensor:
    """Mean cosine similarity of each item to its ``k`` nearest other items: (N, D) -> (N,).

    Exact, chunked (memory ``chunk_size x N``), so for sets that fit one search (the labeled
    evaluation set); the pipeline computes the same quantity for the pool through its index
    (tasks/curation/index.py). High: a typical item in a dense region; low: an outlier.
    """
    x = _unit(features)
    k = min(k, len(x) - 1)
    if k < 1:
        return torch.ones(len(x))
    out = []
    for start in range(0, len(x), chunk_size):
        sims = x[start : start + chunk_size] @ x.T
        rows = torch.arange(len(sims))
        sims[rows, rows + start] = -2.0  # never its own neighbour
        out.append(sims.topk(k, dim=1).values.mean(1))
    return torch.cat(out)


def kmeans(features: torch.Tensor, k: int, iterations: int = 20, seed: int = 0, chunk_size: int = 65536) -> torch.Tensor:
    """Spherical k-means (k-means++ seeding, Lloyd steps on cosine similarity): (N, D) -> labels (N,).

    Chunked over the items, so memory is ``chunk_size x k`` beyond the features themselves.
    """
    x = _unit(features)
    n = len(x)
    k = min(k, n)
    generator = torch.Generator().manual_seed(seed)
    # k-means++: each new centre drawn with probability proportional to its squared distance.
    centres = [int(torch.randint(n, (1,), generator=generator))]
    nearest = (2 - 2 * (x @ x[centres[0]])).clamp_min(0)
    for _ in range(1, k):
        weights = nearest if nearest.sum() > 0 else torch.ones(n)
        centre = int(torch.multinomial(weights, 1, generator=generator))
        centres.append(centre)
        nearest = torch.minimum(nearest, (2 - 2 * (x @ x[centre])).clamp_min(0))
    c = x[centres].clone()
    labels = torch.zeros(n, dtype=torch.long)
    for _ in range(iterations):
        labels = torch.cat([(chunk @ c.T).argmax(1) for chunk in x.split(chunk_size)])
        sums = torch.zeros_like(c).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k)
        moved = F.normalize(sums, dim=1)
        c = torch.where((counts > 0)[:, None], moved, c)  # an empty cluster keeps its centre
    return labels


def typiclust(features: torch.Tensor, budget: int, density: torch.Tensor | None = None, k: int = 20, seed: int = 0) -> torch.Tensor:
    """TypiClust (Hacohen et al. 2022): the most typical item of each of ``budget`` k-means clusters.

    ``density`` (N,): typicality per item, higher is more typical; :func:`knn_density` when
    None. One deviation from the paper, said plainly: the pipeline passes the density from its
    index's neighbours over the whole pool rather than recomputing it within each cluster;
    at a cluster's core the two agree, and it needs no per-cluster search at a million items.
    Clusters are visited largest first (the paper's order); each gives one item.
    """
    n = len(features)
    if budget > n:
        raise ValueError(f"budget {budget} is larger than the {n} candidates")
    density = knn_density(features, k) if density is None else density
    labels = kmeans(features, budget, seed=seed)
    sizes = torch.bincount(labels, minlength=budget)
    picked: list[int] = []
    for cluster in sizes.argsort(descending=True, stable=True).tolist():
        members = (labels == cluster).nonzero().flatten()
        if len(members):
            picked.append(int(members[density[members].argmax()]))
    if len(picked) < budget:  # empty clusters (duplicated points): fill with the most typical of the rest
        rest = torch.ones(n, dtype=torch.bool)
        rest[picked] = False
        left = rest.nonzero().flatten()
        picked += left[density[left].argsort(descending=True)][: budget - len(picked)].tolist()
    return torch.tensor(picked, dtype=torch.long)


def kcenter_greedy(features: torch.Tensor, budget: int, seed: int = 0) -> torch.Tensor:
    """k-center greedy (Sener & Savarese 2018): the item farthest from all picked so far, ``budget`` times.

    Starts from a seeded random item; each step costs one pass over the features (N x D).
    """
    x = _unit(features)
    n = len(x)
    if budget > n:
        raise ValueError(f"budget {budget} is larger than the {n} candidates")
    first = int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(seed)))
    picked = [first]
    distance = (2 - 2 * (x @ x[first])).clamp_min(0)
    distance[first] = -1
    for _ in range(1, budget):
        nxt = int(distance.argmax())
        picked.append(nxt)
        distance = torch.minimum(distance, (2 - 2 * (x @ x[nxt])).clamp_min(0))
        distance[picked] = -1
    return torch.tensor(picked, dtype=torch.long)


def random_pick(features: torch.Tensor, budget: int, seed: int = 0) -> torch.Tensor:
    """``budget`` items uniformly at random (seeded): the baseline."""
    n = len(features)
    if budget > n:
        raise ValueError(f"budget {budget} is larger than the {n} candidates")
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:budget]


def select(strategy: str, features: torch.Tensor, budget: int, density: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
    """One of :data:`STRATEGIES` by name; ``density`` is used by ``typiclust`` only."""
    pickers: dict[str, Callable[[], torch.Tensor]] = {
        "typiclust": lambda: typiclust(features, budget, density, seed=seed),
        "kcenter": lambda: kcenter_greedy(features, budget, seed=seed),
        "random": lambda: random_pick(features, budget, seed=seed),
    }
    if strategy not in pickers:
        raise ValueError(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    return pickers[strategy]()


def selection_efficiency(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    strategies: Sequence[str] = STRATEGIES,
    budgets_per_class: Sequence[int] = (1, 2, 5),
    seeds: Sequence[int] = (0, 1, 2),
    weight_decay: float = 0.1,
    k: int = 20,
) -> list[dict]:
    """Does a strategy pay? Per strategy, budget and seed: pick ``budget`` train items from their
    features alone (``budget = per_class x classes``; the labels are never looked at), fit the
    linear probe on those items' labels only (fixed L2 ``weight_decay``: a handful of labels
    leaves nothing to validate on), and score it on the whole test split.

    Returns one row per (strategy, budget): ``strategy, budget, per_class, accuracy`` (mean over
    seeds), ``std``, ``min``, ``max``, ``seeds``.
    """
    classes = int(max(train_y.max(), test_y.max())) + 1
    train_x = train_x - train_x.mean(0)  # centred as the pool's index is (tasks/curation/index.py); no labels used
    density = knn_density(train_x, k)
    rows = []
    for strategy in strategies:
        for per_class in budgets_per_class:
            budget = per_class * classes
            scores = []
            for seed in seeds:
                picked = select(strategy, train_x, budget, density, seed)
                probe = linear_probe(train_x[picked], train_y[picked], test_x, test_y, weight_decays=(weight_decay,), seed=seed)
                scores.append(probe.accuracy)
            values = torch.tensor(scores)
            rows.append(
                {
                    "strategy": strategy,
                    "budget": budget,
                    "per_class": per_class,
                    "accuracy": round(float(values.mean()), 4),
                    "std": round(float(values.std(unbiased=False)), 4),
                    "min": round(float(values.min()), 4),
                    "max": round(float(values.max()), 4),
                    "seeds": len(seeds),
                }
            )
    return rows
