"""Ingest for text: a BPE tokenizer trained on the unlabeled text, and token-id shards.

    data/prepared/unlabeled/  tokenizer.json, tokens-00000.npy ... (N_i, max_len) int32,
                              manifest.csv (location, sha256), meta.json
    data/prepared/labeled/    {train,test}_tokens.npy (N, max_len) int32, {train,test}_labels.npy int64,
                              {train,test}_texts.json (the cleaned documents),
                              classes.json, manifest.csv

Each row is ``[CLS] pieces... [SEP]`` padded with ``[PAD]`` (id 0) or cut at ``max_len``
(ids and special tokens: ssl_models/text.py). The tokenizer is trained on the accepted
unlabeled documents only (cleaned by :func:`tasks.text.sources.clean_text`); the labeled
set is encoded with it, never trained on. Everything is deterministic (fixed document
order, a reproducible tokenizer: see :func:`train_tokenizer`), so the same data gives
the same bytes and DVC hash: the data version. Outputs go to a temporary folder renamed
into place, so a failure never leaves half a dataset.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ssl_models.text import (
    CLS_ID,
    PAD_ID,
    SEP_ID,
    SPECIAL_TOKENS,
    TOKENIZER_FILE,
    TextModelSettings,
)
from tasks.image.sources import SourceError
from tasks.text.sources import Document, clean_text, read_documents

SHARD_PATTERN = "tokens-{:05d}.npy"


# --- tokenizer ------------------------------------------------------------------------------


WORD_START = "\u2581"  # "▁": marks a piece that starts a word (SentencePiece's convention)


def train_tokenizer(texts: Sequence[str], vocab_size: int = 8000, min_frequency: int = 2, max_len: int = 128):
    """A lowercasing BPE tokenizer trained on ``texts``; a piece that starts a word begins with "▁".

    Words are split at whitespace and punctuation (BERT's normaliser, lowercased, accents
    stripped); special tokens take ids 0-4 in ``SPECIAL_TOKENS`` order; encoding adds
    [CLS] ... [SEP], cuts at ``max_len`` and pads to it.

    Why BPE with a word-start marker and not WordPiece's "##" pieces: the tokenizers library
    creates the "##" pieces in hash-map order, so WordPiece training gives a different
    vocabulary from run to run (huggingface/tokenizers#1794), and the data version would
    change with no change in the data. BPE over a sorted alphabet is reproducible (checked:
    identical tokenizer.json in separate processes), and "▁" still tells word starts apart
    for whole-word masking.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(), pre_tokenizers.Metaspace(prepend_scheme="always")]
    )
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    if [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] != list(range(len(SPECIAL_TOKENS))):
        raise RuntimeError("the tokenizer did not put the special tokens first")
    tokenizer.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", CLS_ID), ("[SEP]", SEP_ID)])
    tokenizer.enable_truncation(max_length=max_len)
    tokenizer.enable_padding(pad_id=PAD_ID, pad_token="[PAD]", length=max_len)
    return tokenizer


def load_tokenizer(path: str | Path):
    """A tokenizer saved as tokenizer.json (the data's, or the one beside a saved text encoder)."""
    from tokenizers import Tokenizer

    path = Path(path)
    return Tokenizer.from_file(str(path / TOKENIZER_FILE if path.is_dir() else path))


def encode(tokenizer, texts: Sequence[str], batch_size: int = 4096) -> np.ndarray:
    """Cleaned texts -> (N, max_len) int32 token ids, padded and cut as the tokenizer is set up."""
    max_len = tokenizer.truncation["max_length"]
    if not texts:
        return np.zeros((0, max_len), dtype=np.int32)
    rows = []
    for start in range(0, len(texts), batch_size):
        rows += [e.ids for e in tokenizer.encode_batch(list(texts[start : start + batch_size]))]
    return np.asarray(rows, dtype=np.int32)


def encode_texts(tokenizer, texts: Sequence[str]) -> torch.Tensor:
    """Raw texts (e.g. new documents at inference) -> (N, max_len) int64 ids, cleaned as the training data was."""
    return torch.from_numpy(encode(tokenizer, [clean_text(t) for t in texts])).long()


def continuation_ids(tokenizer) -> list[int]:
    """Ids of the pieces that continue a word (no "▁"): whole-word masking groups them with its start."""
    special = set(SPECIAL_TOKENS)
    return sorted(i for token, i in tokenizer.get_vocab().items() if not token.startswith(WORD_START) and token not in special)


# --- accepted documents ---------------------------------------------------------------------


def accepted_locations(table_csv: Path | None) -> set[str] | None:
    """Locations the validation table accepted; None when there is no table (take everything)."""
    if table_csv is None or not Path(table_csv).exists():
        return None
    table = pd.read_csv(table_csv, keep_default_na=False, na_values=[""], usecols=lambda c: c in ("location", "accepted"))
    if "accepted" not in table:
        return set(table["location"])
    return set(table.loc[table["accepted"].astype(str).str.lower() == "true", "location"])


def _keep(documents: list[Document], accepted: set[str] | None) -> list[Document]:
    return [d for d in documents if accepted is None or d.location in accepted]


def _staging(out_dir: Path) -> Path:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))


def _publish(tmp: Path, out_dir: Path) -> None:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)


def _manifest(documents: list[Document], path: Path) -> None:
    import hashlib

    rows = [{"location": d.location, "sha256": hashlib.sha256(d.raw).hexdigest()} for d in documents]
    pd.DataFrame(rows, columns=["location", "sha256"]).to_csv(path, index=False)


# --- the two sources ------------------------------------------------------------------------


def ingest_text_unlabeled(
    source: str | Path,
    out_dir: Path,
    table_csv: Path | None = None,
    *,
    vocab_size: int = 8000,
    min_frequency: int = 2,
    max_len: int = 128,
    shard_size: int = 16384,
    text_columns: Sequence[str] | None = None,
    label_column: str = "label",
) -> dict[str, int]:
    """Train the tokenizer on the accepted documents and write the token shards; returns counts.

    ``table_csv``: the validation table (``location``, ``accepted``); without it every
    document is taken. A CSV's ``label_column`` is never part of the text.
    """
    documents = _keep(read_documents(source, False, text_columns, label_column), accepted_locations(table_csv))
    if not documents:
        raise SourceError(f"{source}: no accepted documents to ingest; see `sslpipe validate` for why")
    texts = [clean_text(d.text) for d in documents]
    tokenizer = train_tokenizer(texts, vocab_size, min_frequency, max_len)
    ids = encode(tokenizer, texts)
    truncated = int((ids[:, -1] != PAD_ID).sum())  # rows whose last slot is used were (probably) cut
    tmp = _staging(out_dir)
    try:
        tokenizer.save(str(tmp / TOKENIZER_FILE))
        shards = 0
        for shards, start in enumerate(range(0, len(ids), shard_size), start=1):
            np.save(tmp / SHARD_PATTERN.format(shards - 1), ids[start : start + shard_size])
        _manifest(documents, tmp / "manifest.csv")
        meta = {
            "documents": len(ids),
            "max_len": max_len,
            "vocab_size": tokenizer.get_vocab_size(),
            "shards": shards,
            "full_rows": truncated,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        _publish(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def load_token_shards(prepared_dir: Path) -> torch.Tensor:
    """The unlabeled token ids, all shards in order: (N, max_len) int32 (what ``pretrain`` takes)."""
    shards = sorted(Path(prepared_dir).glob("tokens-*.npy"))
    if not shards:
        raise SourceError(f"{prepared_dir}: no token shards; run `sslpipe ingest` first")
    return torch.from_numpy(np.concatenate([np.load(p) for p in shards]))


def ingest_text_labeled(
    source: str | Path,
    out_dir: Path,
    tokenizer_path: Path,
    table_csv: Path | None = None,
    *,
    test_fraction: float = 0.2,
    text_columns: Sequence[str] | None = None,
    label_column: str = "label",
) -> dict[str, int]:
    """Encode a labeled text source with the unlabeled data's tokenizer; returns counts per split.

    A source without a train/test split (a CSV, a JSONL, ``<class>/`` folders) is split per
    class, in source order: the first ``test_fraction`` of each class is test (as images).
    """
    documents = _keep(read_documents(source, True, text_columns, label_column), accepted_locations(table_csv))
    classes = sorted({d.label for d in documents})
    if len(classes) < 2:
        raise SourceError(f"{source}: a labeled set needs at least two classes, found {classes}")
    if any(d.split for d in documents):
        splits = {split: [d for d in documents if d.split == split] for split in ("train", "test")}
    else:
        splits = {"train": [], "test": []}
        for name in classes:
            members = [d for d in documents if d.label == name]
            n_test = max(1, round(test_fraction * len(members)))
            splits["test"] += members[:n_test]
            splits["train"] += members[n_test:]
    tokenizer = load_tokenizer(tokenizer_path)
    tmp = _staging(out_dir)
    try:
        counts = {}
        for split, docs in splits.items():
            if not docs:
                raise SourceError(f"{source}: the {split} split has no documents")
            texts = [clean_text(d.text) for d in docs]
            np.save(tmp / f"{split}_tokens.npy", encode(tokenizer, texts))
            # The cleaned texts too: an encoder with another tokenizer (a champion to re-score) re-encodes them.
            (tmp / f"{split}_texts.json").write_text(json.dumps(texts, ensure_ascii=False))
            np.save(tmp / f"{split}_labels.npy", np.array([classes.index(d.label) for d in docs], dtype=np.int64))
            counts[split] = len(docs)
        (tmp / "classes.json").write_text(json.dumps(classes))
        _manifest(splits["train"] + splits["test"], tmp / "manifest.csv")
        _publish(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return counts


def load_labeled_texts(labeled_dir: Path) -> dict[str, list[str]]:
    """{train,test}_texts: the cleaned labeled documents, in the order of their token ids and labels."""
    return {f"{split}_texts": json.loads((Path(labeled_dir) / f"{split}_texts.json").read_text()) for split in ("train", "test")}


def load_labeled_tokens(labeled_dir: Path) -> dict[str, torch.Tensor]:
    """{train,test}_tokens (N, L) int64 and {train,test}_labels (N,) int64."""
    data = {f"{split}_tokens": torch.from_numpy(np.load(labeled_dir / f"{split}_tokens.npy")).long() for split in ("train", "test")}
    return data | {f"{split}_labels": torch.from_numpy(np.load(labeled_dir / f"{split}_labels.npy")) for split in ("train", "test")}


def ingest_text(
    unlabeled: str | Path,
    labeled: str | Path | None,
    validation_dir: Path | None,
    unlabeled_out: Path,
    labeled_out: Path,
    settings: TextModelSettings = TextModelSettings(),
    test_fraction: float = 0.2,
    text_columns: Sequence[str] | None = None,
    label_column: str = "label",
) -> dict[str, int]:
    """Tokenizer + shards from the accepted unlabeled documents, then the labeled set; returns counts."""
    table = (lambda name: validation_dir / f"{name}_table.csv") if validation_dir is not None else (lambda name: None)
    meta = ingest_text_unlabeled(
        unlabeled, unlabeled_out, table("unlabeled"), vocab_size=settings.vocab_size, max_len=settings.max_len,
        text_columns=text_columns, label_column=label_column,
    )  # fmt: skip
    counts = {"unlabeled": meta["documents"]}
    if labeled is not None:
        split = ingest_text_labeled(
            labeled,
            labeled_out,
            unlabeled_out,
            table("labeled"),
            test_fraction=test_fraction,
            text_columns=text_columns,
            label_column=label_column,
        )
        counts |= {f"labeled_{k}": v for k, v in split.items()}
    return counts
