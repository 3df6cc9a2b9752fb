"""MLM: the loss against BERT's formula written out, the masking recipe, the text encoder."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ssl_models.losses.mlm import mlm_loss
from ssl_models.methods import build_method, default_backbone, is_text_method, method_class
from ssl_models.methods.mlm import MLM, bert_masking
from ssl_models.text import (
    CLS_ID,
    MASK_ID,
    PAD_ID,
    SEP_ID,
    SPECIAL_TOKENS,
    TextEncoder,
    load_text_encoder,
    save_text_encoder,
    text_features,
    trim_padding,
)
from ssl_models.training import TrainSettings, pretrain

VOCAB = 300


def literal_mlm_loss(logits: torch.Tensor, targets: torch.Tensor, masked: torch.Tensor) -> float:
    """L_MLM = -(1/|M|) sum_{i in M} log P(x_i | x_masked), P = softmax over the vocabulary; scalar loops in float64."""
    total, count = 0.0, 0
    for b in range(logits.shape[0]):
        for i in range(logits.shape[1]):
            if not masked[b, i]:
                continue
            row = logits[b, i].double().tolist()
            log_z = math.log(sum(math.exp(v) for v in row))
            total += -(row[int(targets[b, i])] - log_z)
            count += 1
    return total / count


def token_batch(batch: int = 8, length: int = 20, generator: torch.Generator | None = None) -> torch.Tensor:
    """[CLS] random pieces [SEP] [PAD]...: rows of different lengths, as the shards hold them."""
    ids = torch.full((batch, length), PAD_ID)
    for row in range(batch):
        n = 4 + row % (length - 6)
        ids[row, 0], ids[row, n + 1] = CLS_ID, SEP_ID
        ids[row, 1 : n + 1] = torch.randint(len(SPECIAL_TOKENS), VOCAB, (n,), generator=generator)
    return ids


def test_mlm_loss_matches_the_formula():
    torch.manual_seed(0)
    logits, targets = torch.randn(3, 7, 11), torch.randint(0, 11, (3, 7))
    masked = torch.rand(3, 7) < 0.4
    masked[0, 0] = True
    assert mlm_loss(logits[masked], targets[masked]).item() == pytest.approx(literal_mlm_loss(logits, targets, masked), rel=1e-5)


def test_mlm_loss_with_nothing_masked_is_zero_with_a_gradient():
    logits = torch.randn(0, 11, requires_grad=True)
    loss = mlm_loss(logits, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None


def test_bert_masking_follows_the_recipe():
    generator = torch.Generator().manual_seed(0)
    ids = token_batch(512, 64, generator)
    corrupted, selected = bert_masking(ids, VOCAB, generator=generator)
    special = ids < len(SPECIAL_TOKENS)
    assert not selected[special].any(), "special tokens ([PAD], [CLS], [SEP]) are never selected"
    assert torch.equal(corrupted[~selected], ids[~selected]), "unselected tokens are left alone"
    assert selected[~special].float().mean().item() == pytest.approx(0.15, abs=0.01)
    became_mask = (corrupted[selected] == MASK_ID).float().mean().item()
    unchanged = (corrupted[selected] == ids[selected]).float().mean().item()
    assert became_mask == pytest.approx(0.8, abs=0.02)
    # 10% unchanged on purpose, plus the random 10% that drew the same token by chance (1 / 295)
    assert unchanged == pytest.approx(0.1 + 0.1 / (VOCAB - len(SPECIAL_TOKENS)), abs=0.02)
    random_ids = corrupted[selected & (corrupted != MASK_ID) & (corrupted != ids)]
    assert (random_ids >= len(SPECIAL_TOKENS)).all(), "random replacements are never special tokens"


def test_whole_word_masking_selects_every_piece_of_a_word():
    continuation = torch.zeros(VOCAB, dtype=torch.bool)
    continuation[200:] = True  # ids 200+ continue the word before them
    generator = torch.Generator().manual_seed(1)
    ids = token_batch(256, 48, generator)
    _, selected = bert_masking(ids, VOCAB, is_continuation=continuation, generator=generator)
    pieces = (ids >= 200) & (torch.roll(ids, 1, dims=1) >= len(SPECIAL_TOKENS))
    previous_selected = torch.roll(selected, 1, dims=1)
    assert pieces.any() and torch.equal(selected[pieces], previous_selected[pieces])


def test_encoder_ignores_padding_and_shapes():
    torch.manual_seed(0)
    encoder = TextEncoder(VOCAB, max_len=32, dim=32, depth=2).eval()
    ids = token_batch(4, 16)
    padded = torch.cat([ids, torch.zeros(4, 10, dtype=torch.long)], dim=1)
    with torch.no_grad():
        assert encoder(ids).shape == (4, 32)
        torch.testing.assert_close(encoder(ids), encoder(padded), atol=1e-5, rtol=1e-5)
        alone = encoder(trim_padding(ids[:1]))
        torch.testing.assert_close(encoder(ids)[:1], alone, atol=1e-5, rtol=1e-5)  # other rows' lengths do not matter
        assert torch.isfinite(encoder(torch.zeros(2, 8, dtype=torch.long))).all(), "an all-padding row gives no NaN"
    with pytest.raises(ValueError, match="max_len"):
        encoder.forward_tokens(torch.ones(1, 40, dtype=torch.long))


def test_text_features_do_not_depend_on_batching_and_keep_the_order():
    torch.manual_seed(0)
    encoder = TextEncoder(vocab_size=60, max_len=16, dim=32, depth=1)
    lengths = torch.randint(2, 17, (40,))
    ids = torch.randint(len(SPECIAL_TOKENS), 60, (40, 16)).masked_fill(torch.arange(16) >= lengths[:, None], PAD_ID)
    batched = text_features(encoder, ids, batch_size=7)
    torch.testing.assert_close(batched, text_features(encoder, ids, batch_size=40), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(batched[:3], encoder(ids[:3]), atol=1e-5, rtol=1e-5)  # row i is document i, sorting or not


def test_save_and_load_without_pickle(tmp_path):
    torch.manual_seed(0)
    encoder = TextEncoder(VOCAB, max_len=32, dim=32, depth=1).eval()
    tokenizer = tmp_path / "tok.json"
    tokenizer.write_text('{"stand-in": "tokenizer"}')
    out = save_text_encoder(encoder, tmp_path / "enc", tokenizer, extra={"method": "mlm"})
    config = json.loads((out / "config.json").read_text())
    assert config["modality"] == "text" and config["method"] == "mlm" and config["feature_dim"] == 32
    assert (out / "tokenizer.json").read_text() == tokenizer.read_text()
    torch.load(out / "weights.pt", weights_only=True)  # plain tensors only
    loaded = load_text_encoder(out)
    ids = token_batch(3, 12)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), encoder(ids))
    (out / "config.json").write_text(json.dumps({"backbone": "resnet18_cifar"}))
    with pytest.raises(ValueError, match="not a text encoder"):
        load_text_encoder(out)


def test_mlm_method_interface_and_registry():
    assert is_text_method("mlm") and not is_text_method("simclr")
    assert method_class("mlm") is MLM and default_backbone("mlm") == "text_transformer"
    torch.manual_seed(0)
    encoder = TextEncoder(VOCAB, max_len=32, dim=32, depth=1)
    method = build_method("mlm", encoder, None, mask_prob=0.3)
    assert method.encoder is encoder
    assert method.head.embedding.weight is encoder.token_embed.weight, "the decoder is tied to the token embedding"
    out = method.training_step(method.prepare_batch(token_batch(8, 20).int()))
    assert out.embeddings.shape == (8, 32) and not out.embeddings.requires_grad
    # At initialisation the prediction is close to uniform over the vocabulary.
    assert out.loss.item() == pytest.approx(math.log(VOCAB), rel=0.1)
    out.loss.backward()
    assert encoder.token_embed.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="continuation_ids"):
        MLM(encoder, whole_word=True)


def test_mlm_learns_a_deterministic_language():
    """Each document is one of 4 fixed sequences: after a short training, MLM predicts hidden tokens."""
    torch.manual_seed(0)
    sentences = torch.randint(len(SPECIAL_TOKENS), VOCAB, (4, 14))
    ids = torch.zeros(1024, 20, dtype=torch.int32)
    ids[:, 0], ids[:, 15] = CLS_ID, SEP_ID
    ids[:, 1:15] = sentences[torch.arange(1024) % 4]
    method = MLM(TextEncoder(VOCAB, max_len=20, dim=32, depth=1))
    settings = TrainSettings(epochs=10, batch_size=64, lr=2e-2, weight_decay=0.01, warmup_epochs=1, optimizer="adamw")
    history = pretrain(method, ids, settings, progress=False)
    chance = math.log(VOCAB - len(SPECIAL_TOKENS))
    assert history[0].loss > 0.7 * chance, "it starts near chance"
    assert history[-1].loss < 0.2 * chance, f"final loss {history[-1].loss:.3f}: it should nearly memorise 4 sentences"
