"""The text part of embed (the shell: tasks/embed.py, whose docstring lists what this module supplies).

The pool is read one token shard at a time (tasks/text/tokens.py: up to 16,384 documents each)
and embedded ``batch_size`` documents at a time with the MLM encoder's mean-pooled features;
an item's path is its location in the source (``news.csv.gz:row 12``). A query document from
outside the pool (`sslpipe similar notes.txt`) is the file's text, encoded with the encoder's
own tokenizer. The pictures show each document's first words, as the tokenizer gives them back.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ssl_models.text import TextEncoder, text_features
from ssl_models.text import load_text_encoder as load_encoder
from tasks.curation.index import CurationError
from tasks.text.tokens import encode_texts, load_labeled_tokens, load_tokenizer

__all__ = ["batches", "items", "labeled_features", "load_encoder", "previews", "query"]


def _shards(prepared_dir: str | Path) -> list[Path]:
    return sorted(Path(prepared_dir).glob("tokens-*.npy"))


def items(prepared_dir: str | Path) -> pd.DataFrame:
    """path (the document's location in the source) and sha256, in shard order."""
    manifest = pd.read_csv(Path(prepared_dir) / "manifest.csv", keep_default_na=False, na_values=[""], dtype=str)
    return manifest.rename(columns={"location": "path"})[["path", "sha256"]]


def batches(encoder: TextEncoder, prepared_dir: str | Path, batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
    """Mean-pooled features of the pool, a shard in memory at a time."""
    for shard in _shards(prepared_dir):
        ids = torch.from_numpy(np.load(shard)).long()
        for start in range(0, len(ids), batch_size):
            yield text_features(encoder, ids[start : start + batch_size], batch_size, device)


def labeled_features(encoder: TextEncoder, labeled_dir: str | Path, device: torch.device):
    tokens = load_labeled_tokens(Path(labeled_dir))
    train_x = text_features(encoder, tokens["train_tokens"], device=device)
    test_x = text_features(encoder, tokens["test_tokens"], device=device)
    return train_x, tokens["train_labels"], test_x, tokens["test_labels"]


def previews(prepared_dir: str | Path, indices: list[int]) -> list[str]:
    """The first words of the pooled documents at ``indices`` (decoded from their tokens)."""
    if not indices:
        return []
    tokenizer = load_tokenizer(prepared_dir)
    shards = _shards(prepared_dir)
    sizes = np.cumsum([0] + [len(np.load(p, mmap_mode="r")) for p in shards])
    texts = []
    for index in indices:
        shard = int(np.searchsorted(sizes, index, side="right") - 1)
        ids = np.load(shards[shard], mmap_mode="r")[index - sizes[shard]]
        texts.append(tokenizer.decode([int(i) for i in ids]))
    return texts


def query(encoder: TextEncoder, encoder_dir: str | Path, path: str | Path, image_size: int) -> torch.Tensor:
    """The features (1, D) of one text file's content (the whole file is one document)."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CurationError(f"{path}: cannot be read as a UTF-8 document ({type(err).__name__}: {err})") from None
    if not text.strip():
        raise CurationError(f"{path}: an empty document")
    ids = encode_texts(load_tokenizer(encoder_dir), [text])
    return text_features(encoder, ids)
