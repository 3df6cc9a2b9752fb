"""Backbones: image tensors in, one feature vector per image out.

Every backbone exposes ``feature_dim``. Build one by name with :func:`build_backbone`,
so that configs stay plain data (``{"name": "resnet18_cifar", "width": 16}``).
"""

from __future__ import annotations

import functools
import inspect
from collections import OrderedDict
from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (He et al., 2016)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


IMAGENET_STEM_FROM = 96  # px: from this size on, ResNets use the ImageNet stem


def resolve_stem(stem: str, image_size: int) -> str:
    """The stem for ``stem``: "auto" is "cifar" below IMAGENET_STEM_FROM px, "imagenet" from it on."""
    if stem == "auto":
        return "imagenet" if image_size >= IMAGENET_STEM_FROM else "cifar"
    if stem not in ("cifar", "imagenet"):
        raise ValueError(f"unknown stem {stem!r}; choose auto, cifar or imagenet")
    return stem


def make_stem(stem: str, in_channels: int, width: int) -> nn.Sequential:
    """The CIFAR stem (3x3 conv, full resolution) or the ImageNet one (7x7 stride-2 conv +
    3x3 stride-2 max-pool: a quarter of the resolution, 16x less compute after it)."""
    if stem == "cifar":
        return nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
    )


class ResNet18Cifar(nn.Module):
    """ResNet-18 whose stem follows the image size (``stem="auto"``).

    Small images (32x32) lose too much to the ImageNet stem's 7x7 stride-2 conv and
    max-pool, so below 96 px the stem is a 3x3 convolution at full resolution (the
    CIFAR stem); from 96 px on it is the ImageNet stem. ``width`` is the channel count
    of the first stage (64 in the paper); stages double it. Width 16 trains on a laptop CPU.

    >>> net = ResNet18Cifar(width=16)
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 128])
    """

    def __init__(self, width: int = 64, in_channels: int = 3, image_size: int = 32, stem: str = "auto") -> None:
        super().__init__()
        self.stem_kind = resolve_stem(stem, image_size)
        self.stem = make_stem(self.stem_kind, in_channels, width)
        stages, channels = [], width
        for stage, out_channels in enumerate([width, 2 * width, 4 * width, 8 * width]):
            stride = 1 if stage == 0 else 2
            stages += [BasicBlock(channels, out_channels, stride), BasicBlock(out_channels, out_channels, 1)]
            channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, 3, H, W) -> (B, 8 * width)
        return self.pool(self.stages(self.stem(x))).flatten(1)

    def forward_features_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map before pooling, for dense pretext tasks (colorization,
        inpainting): (B, 3, H, W) -> (B, 8 * width, H / 8, W / 8) with the CIFAR stem,
        H / 32 with the ImageNet stem. ``forward`` pools it."""
        return self.stages(self.stem(x))


class TorchvisionResNet(nn.Module):
    """torchvision's ``resnet18`` / ``resnet50`` (weights=None: nothing is downloaded),
    without the classifier, its stem swapped for the CIFAR stem below 96 px (as
    solo-learn does). Features: 512 (resnet18) or 2048 (resnet50).
    """

    def __init__(self, arch: str = "resnet18", image_size: int = 224, stem: str = "auto") -> None:
        super().__init__()
        import torchvision

        net = getattr(torchvision.models, arch)(weights=None)
        self.stem_kind = resolve_stem(stem, image_size)
        if self.stem_kind == "cifar":
            net.conv1 = nn.Conv2d(3, net.conv1.out_channels, 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
        self.feature_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def forward_features_map(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, 3, H, W) -> (B, feature_dim)
        return self.net(x)


def default_patch_size(image_size: int) -> int:
    """The largest of 16, 8, 4 px that divides the image into a grid of at least 8x8
    (4 px at 32, 8 px at 64-96, 16 px at 128-224), else the whole image's side / 8."""
    for patch in (16, 8, 4):
        if image_size % patch == 0 and image_size // patch >= 8:
            return patch
    raise ValueError(f"image size {image_size}: no ViT patch size of 16, 8 or 4 px divides it into a grid of at least 8x8")


def sincos_position_embedding(dim: int, grid_size: int, cls_token: bool = False) -> torch.Tensor:
    """Fixed 2D sine-cosine position embedding, as MAE: (grid_size**2 [+1], dim).

    Half of the channels encode the row, half the column; each half is sin and cos of
    the coordinate at geometrically spaced frequencies (Vaswani et al., 2017). The
    class token, when there is one, gets zeros.
    """
    if dim % 4:
        raise ValueError(f"the embedding dim must be a multiple of 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # (D/4,)
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")  # row-major, as patchify

    def encode(position: torch.Tensor) -> torch.Tensor:  # (L,) -> (L, D/2)
        angles = position.flatten()[:, None] * omega[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    embedding = torch.cat([encode(rows), encode(cols)], dim=1).float()  # (L, D)
    if cls_token:
        embedding = torch.cat([torch.zeros(1, dim), embedding])
    return embedding


class Attention(nn.Module):
    """Multi-head self-attention over tokens (B, L, D) -> (B, L, D).

    ``mask`` (optional, bool, broadcastable to (B, heads, L, L), True = may attend) keeps
    padding tokens out of the attention, for text.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, L, D / heads)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


def _rename_keys(state_dict: dict, prefix: str, renames: dict[str, str]) -> None:
    """Rename ``prefix + old`` keys to ``prefix + new`` in place: state dicts saved before a
    module's parameters got their present names still load."""
    for old, new in renames.items():
        if prefix + old in state_dict and prefix + new not in state_dict:
            state_dict[prefix + new] = state_dict.pop(prefix + old)


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: x + MSA(LN(x)), then x + MLP(LN(x)).

    Parameter names are timm's (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``,
    ``mlp.fc1``, ``mlp.fc2``); weights saved with the older ``mlp.0`` / ``mlp.2`` names load."""

    _OLD_NAMES: ClassVar[dict[str, str]] = {
        "mlp.0.weight": "mlp.fc1.weight",
        "mlp.0.bias": "mlp.fc1.bias",
        "mlp.2.weight": "mlp.fc2.weight",
        "mlp.2.bias": "mlp.fc2.bias",
    }

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(OrderedDict(fc1=nn.Linear(dim, hidden), act=nn.GELU(), fc2=nn.Linear(hidden, dim)))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        _rename_keys(state_dict, prefix, self._OLD_NAMES)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Cut an image into ``patch_size`` squares and embed each linearly (a strided
    convolution): (B, 3, H, W) -> (B, (H/p) * (W/p), dim), row-major. timm's name and layout."""

    def __init__(self, in_channels: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, dim, patch_size, patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.patch_size or x.shape[-2] % self.patch_size:
            raise ValueError(f"image of {tuple(x.shape[-2:])} px is not a multiple of the patch size {self.patch_size}")
        return self.proj(x).flatten(2).transpose(1, 2)


def interpolate_position_embedding(pos_embed: torch.Tensor, grid_size: int) -> torch.Tensor:
    """A (1, 1 + g*g, D) position embedding (class token first) for a grid of ``grid_size``:
    the patch part resized bicubically as a (D, g, g) map, the class token's kept (DINO's
    ``interpolate_pos_encoding``). So a crop smaller than the image the ViT was built for
    (DINO's local crops: 16 px on a 32 px model) has positions spread over the whole grid."""
    grid = round((pos_embed.shape[1] - 1) ** 0.5)
    if grid == grid_size:
        return pos_embed
    cls, patches = pos_embed[:, :1], pos_embed[:, 1:]
    patches = patches.reshape(1, grid, grid, -1).permute(0, 3, 1, 2)  # (1, D, g, g)
    patches = F.interpolate(patches, size=(grid_size, grid_size), mode="bicubic", align_corners=False)
    return torch.cat([cls, patches.permute(0, 2, 3, 1).reshape(1, grid_size**2, -1)], dim=1)


class VisionTransformer(nn.Module):
    """A small ViT (Dosovitskiy et al., 2021), the backbone of MAE.

    The image is cut into ``patch_size`` squares (by default from the image size, see
    :func:`default_patch_size`: 4 px, an 8x8 grid of 64 tokens, at 32x32; 16 px at 224),
    each linearly embedded, a class token prepended, a fixed sine-cosine position embedding
    added, then ``depth`` pre-norm blocks and a final LayerNorm.
    The feature is the mean of the patch tokens after that norm (``pool="mean"``) or
    the class token (``pool="cls"``); mean pooling gives the better frozen features
    after MAE, whose class token receives no direct training signal.

    Defaults (dim 128, depth 4, 4 heads) run at a reasonable speed on 2 CPU cores;
    the real ViT-Tiny is dim 192, depth 12, 3 heads. ``width`` lets the pipeline's one
    size knob drive this backbone too: when given, ``dim = 8 * width``, the feature
    size of ResNet18Cifar at the same width, and ``heads = dim // 32``.

    The pieces are public so that MAE can run the encoder on visible patches only
    (the Encoder's input normalisation must then be applied by the caller):
        patch_embed  PatchEmbed, (B, 3, H, W) -> (B, L, dim); ``embed_patches`` adds positions
        cls_token    (1, 1, dim) parameter
        pos_embed    (1, 1 + L, dim) fixed buffer, class token first (zeros)
        blocks       nn.ModuleList of TransformerBlock
        norm         the final LayerNorm

    Other input sizes: an image smaller (or larger) than ``image_size`` gets the position
    embedding interpolated to its grid (DINO's local crops). ``forward_tokens(x, mask,
    mask_token)`` replaces the masked patches' embeddings by a mask token before the
    positions are added (iBOT, BEiT); ``pool_tokens`` is the pooling ``forward`` applies.

    State dict: timm's ``VisionTransformer`` names (``patch_embed.proj``, ``blocks.N.attn.qkv``,
    ``blocks.N.mlp.fc1``, ...), so ``timm_state_dict(vit)`` loads into a timm ViT of the same
    shape (``global_pool="token"``, ``num_classes=0``, LayerNorm eps 1e-5). The position
    embedding is fixed, so it is not stored; ``timm_state_dict`` adds it.

    >>> vit = VisionTransformer()
    >>> vit(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 128])
    """

    def __init__(
        self,
        image_size: int = 32,
        patch_size: int | None = None,
        dim: int = 128,
        depth: int = 4,
        heads: int | None = None,
        mlp_ratio: float = 4.0,
        pool: str = "mean",
        width: int | None = None,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        patch_size = patch_size or default_patch_size(image_size)
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        if pool not in ("mean", "cls"):
            raise ValueError(f"pool must be 'mean' or 'cls', got {pool!r}")
        if width is not None:
            dim = 8 * width
        heads = heads or max(1, dim // 32)
        self.image_size, self.patch_size, self.pool_mode = image_size, patch_size, pool
        self.grid_size = image_size // patch_size
        self.num_patches = self.grid_size**2
        self.patch_embed = PatchEmbed(in_channels, dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        # Fixed, not learned (as MAE): recomputed on construction, so not in the state_dict.
        pos = sincos_position_embedding(dim, self.grid_size, cls_token=True)
        self.register_buffer("pos_embed", pos.unsqueeze(0), persistent=False)
        self.blocks = nn.ModuleList([TransformerBlock(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.feature_dim = dim
        self._init_weights()

    def _init_weights(self) -> None:
        # As MAE: xavier for linear layers and the patch projection, small normal for the token.
        nn.init.normal_(self.cls_token, std=0.02)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        _rename_keys(state_dict, prefix, {"patch_embed.weight": "patch_embed.proj.weight", "patch_embed.bias": "patch_embed.proj.bias"})
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def position_embedding(self, grid_size: int) -> torch.Tensor:
        """(1, 1 + grid_size**2, dim), class token first: the built grid's, or interpolated to another."""
        return interpolate_position_embedding(self.pos_embed, grid_size)

    def embed_patches(self, x: torch.Tensor, mask: torch.Tensor | None = None, mask_token: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, H, W) normalised -> patch tokens with position (B, L, dim), no class token.

        ``mask`` (B, L) bool, True where the patch is hidden: its embedding is replaced by
        ``mask_token`` (1, 1, dim) before the position is added, so the model knows where
        the hidden patch was but not what it showed."""
        tokens = self.patch_embed(x)  # (B, L, dim), row-major
        if mask is not None:
            if mask_token is None:
                raise ValueError("a mask needs a mask_token")
            tokens = torch.where(mask.unsqueeze(-1), mask_token.to(tokens.dtype), tokens)
        return tokens + self.position_embedding(x.shape[-1] // self.patch_size)[:, 1:]

    def forward_tokens(self, x: torch.Tensor, mask: torch.Tensor | None = None, mask_token: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, H, W) -> all tokens after the final norm (B, 1 + L, dim), class token first.
        ``mask`` / ``mask_token``: see ``embed_patches``."""
        tokens = self.embed_patches(x, mask, mask_token)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def pool_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 1 + L, dim) -> (B, dim): the mean of the patch tokens, or the class token."""
        return tokens[:, 1:].mean(dim=1) if self.pool_mode == "mean" else tokens[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, 3, H, W) -> (B, dim)
        return self.pool_tokens(self.forward_tokens(x))

    def forward_features_map(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens as a map, like ResNet18Cifar's: (B, 3, H, W) -> (B, dim, H/p, W/p)."""
        tokens = self.forward_tokens(x)[:, 1:]  # (B, L, dim)
        grid = x.shape[-1] // self.patch_size
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, grid, grid)


def vit_small(
    image_size: int = 32, patch_size: int | None = None, dim: int = 384, depth: int = 12, heads: int = 6, pool: str = "mean"
) -> VisionTransformer:
    """ViT-S (Touvron et al., 2021; the backbone of DINO's and iBOT's ViT-S/16): dim 384,
    depth 12, 6 heads, about 21.7M parameters; the patch follows the image size as for
    ``vit_tiny`` (4 px at 32, 16 px at 224). The pipeline's ``width`` does not apply: ViT-S
    is one fixed size. On 2 CPU cores it is slow (about 20x the default ``vit_tiny``);
    it is meant for GPU runs."""
    return VisionTransformer(image_size=image_size, patch_size=patch_size, dim=dim, depth=depth, heads=heads, pool=pool)


def timm_state_dict(vit: VisionTransformer) -> dict[str, torch.Tensor]:
    """The backbone's weights as timm's ``VisionTransformer`` names them, the fixed position
    embedding included: ``timm_vit.load_state_dict(timm_state_dict(vit))`` (strict) for a
    timm ViT built with the same dim, depth, heads, patch and image size, ``class_token=True``,
    ``global_pool="token"``, ``num_classes=0`` (LayerNorm eps 1e-5 for identical outputs)."""
    return {**vit.state_dict(), "pos_embed": vit.pos_embed.detach().clone()}


TIMM_PREFIX = "timm:"  # pretrain.backbone=timm:NAME: any model of the timm library


class TimmBackbone(nn.Module):
    """Any timm model (``pretrain.backbone=timm:NAME``) as a backbone: its pooled features.

    Built by ``timm.create_model(name, pretrained=False, num_classes=0)``: no weights are
    downloaded (``pretrained=True`` downloads timm's, for ``pretrain.init=timm:NAME`` only:
    tasks/image/init.py; the pipeline never builds it so otherwise), and ``num_classes=0``
    removes the classifier, so ``forward`` gives timm's pooled pre-logits features,
    (B, 3, H, W) -> (B, feature_dim). Models with a fixed input size (ViTs, Swin, ...) are
    built at ``image_size`` (timm's ``img_size``, which also resizes their position embedding);
    CNNs take any size as they are (at 32 px an ImageNet stem leaves a 1x1 map: cheap, coarse).

    >>> net = TimmBackbone("resnet18")  # doctest: +SKIP
    >>> net(torch.zeros(2, 3, 32, 32)).shape  # doctest: +SKIP
    torch.Size([2, 512])
    """

    def __init__(self, name: str, image_size: int = 32, pretrained: bool = False) -> None:
        super().__init__()
        try:
            import timm
        except ImportError:
            raise ValueError(f"backbone {TIMM_PREFIX}{name} needs the timm package: pip install timm") from None
        if not timm.is_model(name):
            raise ValueError(f"backbone {TIMM_PREFIX}{name}: timm has no model {name!r} (timm.list_models() lists them)")
        try:
            net = timm.create_model(name, pretrained=pretrained, num_classes=0, img_size=image_size)
        except TypeError:  # a model that takes any size has no img_size argument
            net = timm.create_model(name, pretrained=pretrained, num_classes=0)
        self.net = net
        # What forward returns: timm's pre-logits width (head_hidden_size where a head adds a
        # layer after pooling, as MobileNetV3's; else num_features).
        self.feature_dim = int(getattr(net, "head_hidden_size", None) or net.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, 3, H, W) normalised -> (B, feature_dim)
        return self.net(x)

    def forward_features_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map (B, C, h, w) for the dense pretext tasks; CNNs only."""
        fmap = self.net.forward_features(x)
        if fmap.dim() != 4:
            raise ValueError(f"{type(self.net).__name__} gives tokens, not a spatial map: colorization and inpainting need a CNN")
        return fmap


BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "resnet18_cifar": ResNet18Cifar,  # the name is historical: the stem follows image_size
    "resnet18": functools.partial(TorchvisionResNet, "resnet18"),
    "resnet50": functools.partial(TorchvisionResNet, "resnet50"),
    "vit_tiny": VisionTransformer,
    "vit_small": vit_small,
}


def describe(name: str, image_size: int) -> str:
    """A backbone name as it is built at ``image_size``, for logs and tags: the ResNet stem
    and the ViT patch follow the size (``resnet18_cifar`` gets the ImageNet stem at 224 px)."""
    if name.startswith("resnet"):
        return f"{name}, {resolve_stem('auto', image_size)} stem"
    if name.startswith("vit"):
        return f"{name}, patch {default_patch_size(image_size)}"
    return name


def build_backbone(name: str, **kwargs) -> nn.Module:
    """Build a registered backbone by name.

    Callers pass the pipeline's common settings (``width``, ``image_size``, ...); each
    backbone takes the ones its constructor names and ignores the rest, so configs
    need no per-backbone branches. ``timm:NAME`` is any timm model (:class:`TimmBackbone`).
    """
    if name.startswith(TIMM_PREFIX):
        constructor = functools.partial(TimmBackbone, name.removeprefix(TIMM_PREFIX))
    elif name in BACKBONES:
        constructor = BACKBONES[name]
    else:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)} or {TIMM_PREFIX}NAME (any timm model)")
    accepted = inspect.signature(constructor).parameters
    return constructor(**{k: v for k, v in kwargs.items() if k in accepted})
