"""The text encoder: a small Transformer over token ids, pretrained by MLM (ssl_models/methods/mlm.py).

    token ids (B, L) int, 0 = [PAD]
      -> token embedding + learned position embedding          (B, L, dim)
      -> ``depth`` pre-norm TransformerBlocks (the ViT's blocks; padding masked out of attention)
      -> LayerNorm                                              (B, L, dim)
      -> features: the mean over the non-padding tokens         (B, dim)

It is BERT's encoder (Devlin et al., 2019) with the ViT's pre-norm blocks, at a size that
trains on a CPU (defaults: dim 128, depth 2, 4 heads). The ids follow the tokenizer that
tasks/text/tokens.py trains; its special tokens come first in the vocabulary:

    [PAD] 0   [UNK] 1   [CLS] 2   [SEP] 3   [MASK] 4        (``SPECIAL_TOKENS``)

Its contract mirrors the image ``Encoder``: ``encoder(token_ids)`` (or ``features``) gives
(B, feature_dim), ``config`` rebuilds it, and on disk it is ``weights.pt`` + ``config.json``
(``"modality": "text"``), loaded without pickle, with the tokenizer (``tokenizer.json``)
copied beside them so that a registered text encoder is usable on its own.

>>> encoder = TextEncoder(vocab_size=1000, max_len=32)
>>> ids = torch.tensor([[2, 50, 51, 3, 0, 0]])
>>> encoder(ids).shape
torch.Size([1, 128])
"""

from __future__ import annotations

import html
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ssl_models.backbones import TransformerBlock
from ssl_models.encoder import CONFIG_FILE, WEIGHTS_FILE, Classifier, save_encoder

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(len(SPECIAL_TOKENS))

TOKENIZER_FILE = "tokenizer.json"
ARCHITECTURE = "text_transformer"


@dataclass(frozen=True)
class TextModelSettings:
    """The text encoder, its tokenizer and its MLM pretraining: the defaults measured in
    benchmarks/results/mlm.json (AG News, 2 CPU cores). The pipeline's ``text:`` params section
    (tasks/core/config.py) reads its defaults from here."""

    vocab_size: int = 4000
    max_len: int = 64
    dim: int = 64
    depth: int = 2
    heads: int | None = None  # dim // 32
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-2  # AdamW, per 256 documents (scaled linearly: 2.5e-3 at batch 64)
    weight_decay: float = 0.01
    warmup_epochs: int = 1
    mask_prob: float = 0.15
    whole_word: bool = False
    seed: int = 0
    method_params: dict = field(default_factory=dict)  # further MLM arguments (replace_prob, random_prob)


# AG News (and other scraped corpora) lost the "&" of HTML entities ("#36;" is "$", "#39;" is
# "'", "quot;" is '"') and joined lines with a backslash. A numeric entity is only taken when
# it stands at a word start, so "issue #39; ..." style text is rare enough to accept the risk.
_BARE_NUMERIC_ENTITY = re.compile(r"(?<![&\w])#(\d{2,5});")
_BARE_NAMED_ENTITY = re.compile(r"(?<![&\w])(quot|amp|lt|gt);")
_WHITESPACE = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """Undo scraping escapes and normalise whitespace; what the tokenizer sees.

    - ``\\`` (a line join in AG News) becomes a space: nobody writes a literal backslash in news;
    - ``#36;`` / ``#39;`` (entities whose "&" was lost) and real ``&#39;`` / ``&amp;`` entities
      become their characters;
    - runs of whitespace become one space, ends stripped.

    >>> clean_text("costs  #36;10\\\\million, it#39;s &lt;b&gt;")
    "costs $10 million, it's <b>"
    """

    def numeric(match: re.Match) -> str:
        code = int(match.group(1))
        return chr(code) if 0 < code < 0x110000 else match.group(0)

    text = text.replace("\\", " ")
    text = _BARE_NUMERIC_ENTITY.sub(numeric, text)
    text = _BARE_NAMED_ENTITY.sub(lambda m: f"&{m.group(1)};", text)
    text = html.unescape(text)
    return _WHITESPACE.sub(" ", text).strip()


def trim_padding(token_ids: torch.Tensor) -> torch.Tensor:
    """Drop the columns that are padding in every row: (B, L) -> (B, L'), L' = longest row.

    Shards are padded to a fixed ``max_len``; most news articles are far shorter, and
    attention costs grow with the square of the length.
    """
    longest = int((token_ids != PAD_ID).sum(dim=1).max().clamp_min(1))
    return token_ids[:, :longest]


class TextEncoder(nn.Module):
    backbone_name = ARCHITECTURE

    def __init__(
        self,
        vocab_size: int,
        max_len: int = 128,
        dim: int = 128,
        depth: int = 2,
        heads: int | None = None,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        heads = heads or max(1, dim // 32)
        self.config: dict[str, Any] = {
            "modality": "text",
            "backbone": ARCHITECTURE,
            "backbone_kwargs": {
                "vocab_size": vocab_size,
                "max_len": max_len,
                "dim": dim,
                "depth": depth,
                "heads": heads,
                "mlp_ratio": mlp_ratio,
            },
        }
        self.vocab_size, self.max_len = vocab_size, max_len
        self.token_embed = nn.Embedding(vocab_size, dim, padding_idx=PAD_ID)
        self.pos_embed = nn.Parameter(torch.zeros(1, max_len, dim))  # learned, as BERT
        self.blocks = nn.ModuleList([TransformerBlock(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.feature_dim = dim
        self._init_weights()

    def _init_weights(self) -> None:
        # BERT's initialisation: normal(0, 0.02) for embeddings and linear layers, zero biases.
        nn.init.normal_(self.pos_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.token_embed.weight[PAD_ID].zero_()

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TextEncoder:
        """The architecture ``config`` describes (:attr:`config`, or a saved config.json), freshly initialised."""
        return cls(**config["backbone_kwargs"])

    def forward_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B, L, dim) tokens after the final norm; padding attends and is attended by nothing."""
        length = token_ids.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequences of {length} tokens, the encoder takes at most max_len={self.max_len}")
        keep = token_ids != PAD_ID  # (B, L)
        attend = keep[:, None, None, :]  # (B, 1, 1, L): every query may look at every real token
        attend = attend | ~keep.any(dim=1)[:, None, None, None]  # an all-padding row: no NaN from an empty softmax
        x = self.token_embed(token_ids) + self.pos_embed[:, :length]
        for block in self.blocks:
            x = block(x, attend)
        return self.norm(x)

    def features(self, token_ids: torch.Tensor, trim: bool = True) -> torch.Tensor:
        """(B, L) ids -> (B, dim): the mean of the non-padding tokens (what evaluation uses).
        ``trim=False`` skips :func:`trim_padding` (the same result, padding is masked anyway):
        its data-dependent length cannot be held by an exported graph (ssl_models/export.py)."""
        if trim:
            token_ids = trim_padding(token_ids)
        keep = (token_ids != PAD_ID).unsqueeze(-1).float()  # (B, L, 1)
        tokens = self.forward_tokens(token_ids)
        return (tokens * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        # token_ids: (B, L) int -> (B, dim)
        return self.features(token_ids)


def build_text_encoder(config: dict[str, Any]) -> TextEncoder:
    """A TextEncoder from its ``config`` (``backbone_kwargs`` are the constructor's arguments)."""
    return TextEncoder.from_config(config)


@torch.no_grad()
def text_features(model: nn.Module, token_ids: torch.Tensor, batch_size: int = 256, device: torch.device | str = "cpu") -> torch.Tensor:
    """token ids (N, L) -> ``model``'s outputs (N, D) float32 on the CPU, in eval mode: a text
    encoder's mean-pooled features, a text classifier's logits.

    Documents go in sorted by length, so that each batch is trimmed to its own longest row.
    """
    model = model.to(device).eval()
    order = (token_ids != PAD_ID).sum(dim=1).argsort()
    outputs = torch.cat([model(token_ids[rows].to(device).long()).float().cpu() for rows in order.split(batch_size)])
    return outputs[order.argsort()]  # back in the order of ``token_ids``


def is_text_encoder_config(config: dict[str, Any]) -> bool:
    """True for a saved text encoder's config.json (the promotion gate compares like with like)."""
    return config.get("modality") == "text"


def save_text_encoder(
    encoder: TextEncoder, directory: str | Path, tokenizer: str | Path | None = None, extra: dict[str, Any] | None = None
) -> Path:
    """Write weights.pt, config.json (plus ``extra``) and a copy of ``tokenizer`` (tokenizer.json)."""
    directory = save_encoder(encoder, directory, extra)  # the same weights.pt + config.json as an image encoder
    if tokenizer is not None and Path(tokenizer).resolve() != (directory / TOKENIZER_FILE).resolve():
        shutil.copyfile(tokenizer, directory / TOKENIZER_FILE)
    return directory


def load_text_encoder(directory: str | Path, map_location: str | torch.device = "cpu") -> TextEncoder:
    """Load an encoder saved by :func:`save_text_encoder`; never runs pickle."""
    directory = Path(directory)
    config = json.loads((directory / CONFIG_FILE).read_text())
    if not is_text_encoder_config(config):
        raise ValueError(f'{directory}: not a text encoder (config.json has no "modality": "text")')
    encoder = build_text_encoder(config)
    encoder.load_state_dict(torch.load(directory / WEIGHTS_FILE, map_location=map_location, weights_only=True))
    return encoder.eval()


def text_module_from_weights(config: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """A text encoder or (config with ``num_classes``) a text classifier, from its config and weights."""
    if "num_classes" in config:
        module: nn.Module = Classifier(build_text_encoder(config["encoder"]), int(config["num_classes"]))
    else:
        module = build_text_encoder(config)
    module.load_state_dict(state_dict)
    return module.eval()
