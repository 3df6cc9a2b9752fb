"""Evaluation for text: frozen mean-pooled features, the same linear probe and kNN as for images.

Three feature sets go through one protocol (ssl_models/evaluation.py: ``linear_probe``,
``knn_accuracy``) on the labeled token ids of data/prepared/labeled:

    ssl          the MLM-pretrained encoder, mean of the non-padding tokens
    random_init  the same architecture at random initialisation (same seed, same shape)
    tfidf        TF-IDF over the same tokens (a bag of BPE pieces, fitted on the labeled train
                 split): the classic baseline for topic classification, and a strong one

The result has the shape of tasks/evaluate.py's metrics: ``{"ssl": {...}, "random_init":
{...}, "tfidf": {...}}``, each ``{"linear_probe_acc", "knn_acc", "probe_weight_decay"}``;
:func:`label_efficiency` adds the fine-tuning curve (SSL encoder vs the same architecture
from scratch, at fractions of the train labels).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ssl_models.evaluation import knn_accuracy, linear_probe
from ssl_models.finetune import stratified_subset
from ssl_models.text import PAD_ID, SPECIAL_TOKENS, TextClassifier, TextEncoder, build_text_encoder
from tasks.core.config import EvaluateConfig

TEXT_ENCODERS = ("ssl", "random_init", "tfidf")


@torch.no_grad()
def text_features(encoder: TextEncoder, token_ids: torch.Tensor, batch_size: int = 256, device: torch.device | str = "cpu") -> torch.Tensor:
    """token ids (N, L) -> mean-pooled features (N, D) float32 on the CPU, encoder in eval mode.

    Documents are sorted by length so that each batch is trimmed to its own longest row.
    """
    encoder = encoder.to(device).eval()
    order = (token_ids != PAD_ID).sum(dim=1).argsort()
    features = torch.empty(len(token_ids), encoder.feature_dim)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        features[rows] = encoder.features(token_ids[rows].to(device).long()).float().cpu()
    return features


def tfidf_features(train_ids: torch.Tensor, test_ids: torch.Tensor, vocab_size: int, min_df: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Bag-of-pieces TF-IDF (sublinear tf, l2-normalised rows), fitted on train: (N, V') each.

    Pieces in fewer than ``min_df`` train documents are dropped (they cannot generalise and
    only cost memory); special tokens never count.
    """
    from scipy.sparse import csr_matrix
    from sklearn.feature_extraction.text import TfidfTransformer

    def counts(ids: torch.Tensor) -> csr_matrix:
        rows, cols = (ids >= len(SPECIAL_TOKENS)).nonzero(as_tuple=True)
        values = torch.ones(len(rows))
        return csr_matrix((values.numpy(), (rows.numpy(), ids[rows, cols].numpy())), shape=(len(ids), vocab_size))

    train_counts, test_counts = counts(train_ids), counts(test_ids)
    keep = ((train_counts > 0).sum(axis=0).A1 >= min_df).nonzero()[0]
    transformer = TfidfTransformer(sublinear_tf=True).fit(train_counts[:, keep])
    to_tensor = lambda m: torch.from_numpy(transformer.transform(m[:, keep]).toarray()).float()  # noqa: E731
    return to_tensor(train_counts), to_tensor(test_counts)


def score_features(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, cfg: EvaluateConfig) -> dict[str, float]:
    """Linear probe and kNN, as tasks/evaluate.py scores image features."""
    probe = linear_probe(train_x, train_y, test_x, test_y, cfg.probe_weight_decays, cfg.probe_validation_fraction)
    knn = knn_accuracy(train_x, train_y, test_x, test_y, cfg.knn_k, cfg.knn_temperature)
    return {"linear_probe_acc": probe.accuracy, "knn_acc": knn, "probe_weight_decay": probe.weight_decay}


def random_init_like(encoder: TextEncoder, seed: int = 0) -> TextEncoder:
    """The same architecture, freshly initialised with ``seed``."""
    torch.manual_seed(seed)
    return build_text_encoder(encoder.config)


def evaluate_text_encoders(
    encoder: TextEncoder, labeled: dict[str, torch.Tensor], cfg: EvaluateConfig, device: torch.device | str = "cpu", seed: int = 0
) -> dict[str, dict[str, float]]:
    """``labeled``: {train,test}_tokens (N, L) and {train,test}_labels (N,) (text_ingest.load_labeled_tokens)."""
    train_ids, test_ids = labeled["train_tokens"], labeled["test_tokens"]
    features = {
        name: (text_features(model, train_ids, device=device), text_features(model, test_ids, device=device))
        for name, model in (("ssl", encoder), ("random_init", random_init_like(encoder, seed)))
    }
    features["tfidf"] = tfidf_features(train_ids, test_ids, encoder.vocab_size)
    return {name: score_features(tr, labeled["train_labels"], te, labeled["test_labels"], cfg) for name, (tr, te) in features.items()}


def text_probe_accuracy(encoder: TextEncoder, labeled: dict[str, torch.Tensor], cfg: EvaluateConfig, device: torch.device | str = "cpu") -> float:
    """The SSL row's probe accuracy by the protocol above: the promotion gate's re-evaluation of a text champion."""
    train_x = text_features(encoder, labeled["train_tokens"], device=device)
    test_x = text_features(encoder, labeled["test_tokens"], device=device)
    return score_features(train_x, labeled["train_labels"], test_x, labeled["test_labels"], cfg)["linear_probe_acc"]


# --- label efficiency: fine-tuning ------------------------------------------------------------


def finetune_text(
    encoder: TextEncoder,
    labeled: dict[str, torch.Tensor],
    num_classes: int,
    fraction: float = 1.0,
    random_init: bool = False,
    steps: int = 150,
    batch_size: int = 32,
    lr: float = 5e-4,
    weight_decay: float = 0.01,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[float, TextClassifier]:
    """Fine-tune a copy of ``encoder`` (or the same shape from scratch) on ``fraction`` of the train labels; (test accuracy, the classifier).

    AdamW with linear warm-up (10% of the steps) and cosine decay; a fixed number of steps at
    every fraction, as the image recipe (ssl_models/finetune.py), so the points are comparable.
    """
    import copy

    start = random_init_like(encoder, seed) if random_init else copy.deepcopy(encoder)
    model = TextClassifier(start, num_classes).to(device)
    subset = stratified_subset(labeled["train_labels"], fraction, seed)
    x, y = labeled["train_tokens"][subset], labeled["train_labels"][subset]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = max(1, steps // 10)
    schedule = lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup)))  # noqa: E731
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        batch = torch.randint(len(x), (min(batch_size, len(x)),), generator=generator)
        loss = F.cross_entropy(model(x[batch].to(device)), y[batch].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        test_x, test_y = labeled["test_tokens"], labeled["test_labels"]
        for i in range(0, len(test_x), 256):
            correct += (model(test_x[i : i + 256].to(device)).argmax(1).cpu() == test_y[i : i + 256]).sum().item()
    return correct / len(test_x), model.cpu()


def finetune_text_accuracy(encoder: TextEncoder, labeled: dict[str, torch.Tensor], num_classes: int, fraction: float = 1.0, random_init: bool = False, **settings) -> float:
    """:func:`finetune_text`'s test accuracy alone (the label-efficiency curve keeps no model)."""
    return finetune_text(encoder, labeled, num_classes, fraction, random_init, **settings)[0]


def label_efficiency(
    encoder: TextEncoder, labeled: dict[str, torch.Tensor], num_classes: int, fractions: list[float], device: torch.device | str = "cpu", **settings
) -> list[dict[str, float]]:
    """Rows {fraction, labels, ssl_finetune, scratch}, as tasks/evaluate.py's curve for images."""
    rows = []
    for fraction in fractions:
        ssl_acc = finetune_text_accuracy(encoder, labeled, num_classes, fraction, False, device=device, **settings)
        scratch_acc = finetune_text_accuracy(encoder, labeled, num_classes, fraction, True, device=device, **settings)
        labels = len(stratified_subset(labeled["train_labels"], fraction, settings.get("seed", 0)))
        rows.append({"fraction": fraction, "labels": labels, "ssl_finetune": ssl_acc, "scratch": scratch_acc})
    return rows
