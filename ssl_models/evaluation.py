"""Evaluation maths on frozen features: linear probe and kNN.

Both take features computed once (no augmentation), so the SSL encoder and the
baselines (random init, raw pixels) go through exactly the same protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ssl_models.data import ImageSource, as_source


@torch.no_grad()
def extract_features(
    encoder: nn.Module, images: torch.Tensor | ImageSource, batch_size: int = 512, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """images: (N, 3, H, W) uint8 or an ImageSource (shards on disk, read batch by batch)
    -> features (N, D) float32 on the CPU, encoder in eval mode. Only the features are held."""
    device = torch.device(device)
    encoder = encoder.to(device).eval()
    source = as_source(images)
    chunks = []
    for start in range(0, len(source), batch_size):
        batch = source.read(np.arange(start, min(start + batch_size, len(source))), pin=device.type == "cuda")
        chunks.append(encoder(batch.to(device, non_blocking=True).float().div_(255)).float().cpu())
    return torch.cat(chunks)


RAW_PIXEL_SIDE = 32


def raw_pixel_features(images: torch.Tensor, side: int = RAW_PIXEL_SIDE, batch: int = 256) -> torch.Tensor:
    """The raw-pixel baseline: (N, 3, H, W) uint8 -> (N, 3*s*s) float in [0, 1], s = min(H, side).

    Larger images are area-averaged down to ``side`` px first: at 224 px the flat pixels
    would be 150,528 features per image, a probe costing minutes and gigabytes for a
    baseline whose only message is "what pixels alone give" (what 32 px pixels already say).
    """
    if images.shape[-1] <= side:
        return images.flatten(1).float() / 255
    rows = [F.adaptive_avg_pool2d(chunk.float() / 255, side).flatten(1) for chunk in images.split(batch)]
    return torch.cat(rows)


@dataclass(frozen=True)
class ProbeResult:
    accuracy: float  # on the test split
    weight_decay: float  # chosen on the validation split
    validation_accuracy: float


def _standardise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    return [(x - mean) / std for x in (train, *others)]


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float, max_iter: int = 200) -> nn.Linear:
    """Multinomial logistic regression, full batch, L-BFGS, L2 penalty on the weights."""
    torch.manual_seed(0)
    model = nn.Linear(x.shape[1], num_classes)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    optimizer = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y) + 0.5 * weight_decay * model.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return model


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    weight_decays: Sequence[float] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
    validation_fraction: float = 0.2,
    seed: int = 0,
) -> ProbeResult:
    """Linear probe by the book.

    Features are standardised with train statistics; the L2 strength is chosen on a
    validation split carved from train; the probe is refit on all of train with that
    strength and scored once on test.
    """
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(validation_fraction * len(train_x)))
    val_idx, fit_idx = order[:n_val], order[n_val:]
    fit_x, val_x = _standardise(train_x[fit_idx], train_x[val_idx])
    scores = {wd: _accuracy(_fit_logistic(fit_x, train_y[fit_idx], num_classes, wd), val_x, train_y[val_idx]) for wd in weight_decays}
    best_wd = max(scores, key=lambda wd: (scores[wd], wd))  # ties go to the stronger penalty
    all_x, test_xs = _standardise(train_x, test_x)
    model = _fit_logistic(all_x, train_y, num_classes, best_wd)
    return ProbeResult(_accuracy(model, test_xs, test_y), best_wd, scores[best_wd])


def knn_accuracy(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> float:
    """Weighted kNN (Wu et al., 2018): cosine similarity, votes weighted by exp(sim / t)."""
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    k = min(k, len(train_x))
    train_n = F.normalize(train_x.float(), dim=1)
    correct = 0
    for start in range(0, len(test_x), chunk_size):
        query = F.normalize(test_x[start : start + chunk_size].float(), dim=1)
        sim, idx = (query @ train_n.T).topk(k, dim=1)  # (Q, k)
        votes = torch.zeros(len(query), num_classes).scatter_add_(1, train_y[idx], (sim / temperature).exp())
        correct += (votes.argmax(1) == test_y[start : start + chunk_size]).sum().item()
    return correct / len(test_x)


def project_2d(features: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """t-SNE of (N, D) features to (N, 2), for a picture only (distances are not metric).

    Features are l2-normalised first, matching the cosine geometry kNN uses; perplexity
    is capped for tiny sets, where t-SNE requires it below N.
    """
    from sklearn.manifold import TSNE

    x = F.normalize(features.float(), dim=1).numpy()
    perplexity = min(30.0, max(1.0, (len(x) - 1) / 3))
    embedded = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    return torch.from_numpy(embedded).float()
