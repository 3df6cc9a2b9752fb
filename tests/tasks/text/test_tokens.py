"""Text ingest: a reproducible tokenizer and token shards, only accepted documents, labeled splits."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ssl_models.text import CLS_ID, PAD_ID, SEP_ID, SPECIAL_TOKENS, TOKENIZER_FILE
from tasks.image.sources import SourceError
from tasks.text.tokens import (
    WORD_START,
    continuation_ids,
    encode_texts,
    ingest_text_labeled,
    ingest_text_unlabeled,
    load_labeled_tokens,
    load_token_shards,
    load_tokenizer,
)
from tests.conftest import SAMPLE

POOL, LABELED = SAMPLE / "news.csv.gz", SAMPLE / "news_labeled.csv.gz"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("text_ingest")
    meta = ingest_text_unlabeled(POOL, root / "unlabeled", vocab_size=2000, max_len=64, shard_size=600)
    return root, meta


def test_shards_hold_cls_pieces_sep_and_padding(prepared):
    root, meta = prepared
    assert meta["documents"] == 1500 and meta["shards"] == 3 and meta["vocab_size"] == 2000
    assert sorted(p.name for p in (root / "unlabeled").iterdir()) == [
        "manifest.csv", "meta.json", TOKENIZER_FILE, "tokens-00000.npy", "tokens-00001.npy", "tokens-00002.npy"
    ]  # fmt: skip
    ids = load_token_shards(root / "unlabeled")
    assert ids.shape == (1500, 64) and ids.dtype.is_floating_point is False
    assert (ids[:, 0] == CLS_ID).all()
    lengths = (ids != PAD_ID).sum(dim=1)
    assert (ids[range(1500), lengths - 1] == SEP_ID).all(), "each row ends with [SEP] before its padding"
    assert ((ids >= 0) & (ids < 2000)).all()
    manifest = pd.read_csv(root / "unlabeled" / "manifest.csv")
    assert manifest["location"].iloc[0] == "news.csv.gz:row 2" and len(manifest) == 1500


def test_the_tokenizer_undoes_escapes_and_marks_word_starts(prepared):
    root, _ = prepared
    tokenizer = load_tokenizer(root / "unlabeled")
    assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    ids = encode_texts(tokenizer, ["Oil prices  #36;50 a barrel\\today"])[0]
    tokens = [tokenizer.id_to_token(int(i)) for i in ids if i != PAD_ID]
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and f"{WORD_START}$" in tokens and f"{WORD_START}oil" in tokens
    pieces = continuation_ids(tokenizer)
    assert pieces and all(not tokenizer.id_to_token(i).startswith(WORD_START) for i in pieces)
    assert not set(pieces) & set(range(len(SPECIAL_TOKENS)))


def test_ingest_is_byte_for_byte_reproducible(prepared, tmp_path):
    root, _ = prepared
    ingest_text_unlabeled(POOL, tmp_path / "again", vocab_size=2000, max_len=64, shard_size=600)
    for path in sorted((root / "unlabeled").iterdir()):
        assert (tmp_path / "again" / path.name).read_bytes() == path.read_bytes(), path.name


def test_only_accepted_documents_are_ingested(tmp_path):
    pool = tmp_path / "pool.txt"
    pool.write_text("\n".join(f"document number {i} about markets and football" for i in range(20)) + "\n")
    table = pd.DataFrame({"location": [f"pool.txt:line {i + 1}" for i in range(20)], "accepted": [i % 4 != 0 for i in range(20)]})
    table.to_csv(tmp_path / "table.csv", index=False)
    meta = ingest_text_unlabeled(pool, tmp_path / "out", tmp_path / "table.csv", vocab_size=200, max_len=16)
    assert meta["documents"] == 15
    assert "pool.txt:line 1" not in set(pd.read_csv(tmp_path / "out" / "manifest.csv")["location"])
    table["accepted"] = False
    table.to_csv(tmp_path / "table.csv", index=False)
    with pytest.raises(SourceError, match="no accepted documents"):
        ingest_text_unlabeled(pool, tmp_path / "out", tmp_path / "table.csv")
    assert (tmp_path / "out" / "meta.json").exists(), "a failed ingest leaves the previous output alone"


def test_labeled_csv_is_split_per_class_with_the_pool_tokenizer(prepared, tmp_path):
    root, _ = prepared
    counts = ingest_text_labeled(LABELED, tmp_path / "labeled", root / "unlabeled", test_fraction=0.2)
    assert counts == {"train": 800, "test": 200}
    data = load_labeled_tokens(tmp_path / "labeled")
    assert data["train_tokens"].shape == (800, 64) and data["test_tokens"].shape == (200, 64)
    assert np.bincount(data["test_labels"].numpy()).tolist() == [50, 50, 50, 50]
    assert json.loads((tmp_path / "labeled" / "classes.json").read_text()) == ["1", "2", "3", "4"]
    assert not (tmp_path / "labeled" / TOKENIZER_FILE).exists(), "the labeled set never trains a tokenizer"


def test_labeled_folders_with_train_and_test(prepared, tmp_path):
    root, _ = prepared
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("sport", "world"):
            folder = tmp_path / "src" / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                (folder / f"{i}.txt").write_text(f"{cls} news story {i}")
    counts = ingest_text_labeled(tmp_path / "src", tmp_path / "labeled", root / "unlabeled")
    assert counts == {"train": 6, "test": 4}
    with pytest.raises(SourceError, match="at least two classes"):
        only = tmp_path / "one"
        (only / "sport").mkdir(parents=True)
        (only / "sport" / "a.txt").write_text("x")
        ingest_text_labeled(only, tmp_path / "labeled2", root / "unlabeled")
