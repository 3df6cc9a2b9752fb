"""The text part of evaluate (the shell: tasks/evaluate.py, whose ``EvaluatePart`` this module is).

Rows: ``ssl`` (the MLM encoder) and ``random_init`` (the shell), on mean-pooled features of the
labeled token ids (ssl_models/text.py ``text_features``), and ``tfidf``: TF-IDF over the same
tokens (a bag of BPE pieces, fitted on the labeled train split), the classic baseline for topic
classification and a strong one. Fine-tuning takes text's recipe (``TEXT_FINETUNE``: AdamW) and
no augmentation.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ssl_models.finetune import TEXT_FINETUNE, FinetuneSettings
from ssl_models.text import SPECIAL_TOKENS, TextEncoder
from ssl_models.text import load_text_encoder as load_encoder
from ssl_models.text import text_features as features
from tasks.evaluation.scoring import Labeled
from tasks.text.tokens import load_labeled_tokens

UNIT = "documents"
FINETUNE = TEXT_FINETUNE

__all__ = ["FINETUNE", "UNIT", "augment", "baselines", "features", "load_encoder", "load_labeled", "tfidf_features"]


def load_labeled(directory: str | Path) -> Labeled:
    tokens = load_labeled_tokens(Path(directory))
    classes = json.loads((Path(directory) / "classes.json").read_text())
    return Labeled((tokens["train_tokens"], tokens["train_labels"]), (tokens["test_tokens"], tokens["test_labels"]), classes)


def baselines(encoder: TextEncoder, labeled: Labeled) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {"tfidf": tfidf_features(labeled.train[0], labeled.test[0], encoder.vocab_size)}


def augment(settings: FinetuneSettings) -> None:
    """Text has no fine-tuning augmentation: token ids go in as read."""


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
    keep = (min_df <= (train_counts > 0).sum(axis=0).A1).nonzero()[0]
    transformer = TfidfTransformer(sublinear_tf=True).fit(train_counts[:, keep])

    def to_tensor(counts) -> torch.Tensor:
        return torch.from_numpy(transformer.transform(counts[:, keep]).toarray()).float()

    return to_tensor(train_counts), to_tensor(test_counts)
