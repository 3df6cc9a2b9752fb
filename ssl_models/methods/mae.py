"""MAE: hide most patches, encode the rest, reconstruct the hidden pixels.

He, Chen, Xie, Li, Dollar, Girshick. "Masked Autoencoders Are Scalable Vision
Learners", CVPR 2022. https://arxiv.org/abs/2111.06377
Read alongside facebookresearch/mae ``models_mae.py``; the functions below keep its
names and order: patchify, unpatchify, random_masking, forward_encoder,
forward_decoder, forward_loss.

    image (B, 3, H, W) --patchify--> L = (H/p)^2 patches of p*p*3 values
    keep a random 25% of the patches (mask_ratio = 0.75)
    encoder (the ViT backbone) runs on the kept patches only, plus the class token
    decoder (light: narrower, shallower) gets the encoded kept tokens plus a shared,
    learned mask token at every hidden position, and predicts each patch's pixels
    loss = mean over hidden patches of mean_c (pred - target)^2
    with norm_pix_loss the target is each patch standardised by its own mean and std

The asymmetric design is the point: the encoder never sees mask tokens (it is cheap,
seeing 25% of the tokens, and it sees at test time what it saw in training: real
patches), while the decoder, used only for pretraining, does the filling in.

Augmentation: only random resized crop (scale 0.2 to 1) and flip; masking is the
pretext, and the paper found colour jitter hurts.

How the method reaches into the encoder: ``Encoder.forward`` normalises its input
and runs the whole backbone, with no way to drop tokens. So MAE applies the
encoder's own normalisation (``encoder.mean`` / ``encoder.std``) itself and calls
the backbone's pieces: ``patch_embed`` (via ``embed_patches``, which adds the
position embedding), ``cls_token``, ``pos_embed``, ``blocks`` and ``norm``. These
are the same modules ``encoder(images)`` runs, so after pretraining the encoder works
unchanged on whole images: (B, 3, H, W) -> (B, dim), the mean of the patch tokens.

Backbones: ``vit_tiny`` only (masking needs tokens).
Kept after training: ``encoder`` (the decoder and mask token are dropped).
Embeddings for collapse monitoring: the mean of the encoded visible tokens.
Optimiser: AdamW, as the paper (base lr 1.5e-4 per 256, betas (0.9, 0.95), wd 0.05,
warm-up), but the paper's lr is for 800+ epochs: short runs need more, lr 1.5e-3 per
256 (see ``recommended``). 3 epochs on 1000 CIFAR images, final-epoch loss: AdamW
1.5e-3: 0.92; AdamW 1.5e-4: 1.24; the pipeline's SGD 0.3: 0.98.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ssl_models.augment import ViewPolicy, random_resized_crop
from ssl_models.backbones import TransformerBlock, sincos_position_embedding
from ssl_models.encoder import Encoder
from ssl_models.losses.masked_mse import masked_mse_loss
from ssl_models.methods.base import StepOutput


class MAE(nn.Module):
    backbones = ("vit_tiny",)
    recommended: ClassVar[dict[str, Any]] = {"optimizer": "adamw", "lr": 1.5e-3, "weight_decay": 0.05}

    def __init__(
        self,
        encoder: Encoder,
        views: ViewPolicy,
        mask_ratio: float = 0.75,
        decoder_dim: int = 64,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        norm_pix_loss: bool = True,
        crop_scale: tuple[float, float] = (0.2, 1.0),
    ) -> None:
        super().__init__()
        vit = encoder.backbone
        if not hasattr(vit, "blocks"):
            raise ValueError(f"MAE needs a ViT backbone ({self.backbones}), got {type(vit).__name__}")
        self.encoder = encoder
        self.image_size = views.size  # only the crop size is taken from the view policy
        self.crop_scale = crop_scale
        self.patch_size, self.grid_size = vit.patch_size, vit.grid_size
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss

        # --- the light decoder -------------------------------------------------------
        self.decoder_embed = nn.Linear(vit.feature_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        pos = sincos_position_embedding(decoder_dim, self.grid_size, cls_token=True)
        self.register_buffer("decoder_pos_embed", pos.unsqueeze(0), persistent=False)  # (1, 1 + L, Dd)
        self.decoder_blocks = nn.ModuleList([TransformerBlock(decoder_dim, decoder_heads) for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch_size**2 * 3)  # pixels of one patch
        nn.init.normal_(self.mask_token, std=0.02)
        for module in [self.decoder_embed, self.decoder_pred, *self.decoder_blocks.modules()]:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    # --- patches --------------------------------------------------------------------

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, L, p*p*3), patches row-major, each patch (p, p, 3) flattened."""
        p, h = self.patch_size, imgs.shape[2] // self.patch_size
        x = imgs.reshape(imgs.shape[0], 3, h, p, h, p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(imgs.shape[0], h * h, p * p * 3)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, p*p*3) -> (B, 3, H, W), the inverse of ``patchify``."""
        p, h = self.patch_size, int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], h, h, p, p, 3)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], 3, h * p, h * p)

    def random_masking(self, x: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keep a random subset of tokens per sample, by sorting random noise.

        x: (B, L, D) -> kept tokens (B, L_keep, D), mask (B, L) with 1 = hidden,
        ids_restore (B, L) that puts the shuffled sequence back in order.
        """
        n, length, dim = x.shape
        len_keep = int(length * (1 - mask_ratio))
        noise = torch.rand(n, length, device=x.device)
        ids_shuffle = noise.argsort(dim=1)  # ascending: the smallest noise is kept
        ids_restore = ids_shuffle.argsort(dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        x_kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
        mask = torch.ones(n, length, device=x.device)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)  # back to patch order
        return x_kept, mask, ids_restore

    # --- encoder and decoder ----------------------------------------------------------

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """imgs normalised (B, 3, H, W) -> latent (B, 1 + L_keep, D), mask, ids_restore."""
        vit = self.encoder.backbone
        x = vit.embed_patches(imgs)  # (B, L, D), position embedding added
        x, mask, ids_restore = self.random_masking(x, mask_ratio)
        cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for block in vit.blocks:
            x = block(x)
        return vit.norm(x), mask, ids_restore

    def forward_decoder(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent (B, 1 + L_keep, D) -> predicted pixels (B, L, p*p*3)."""
        x = self.decoder_embed(x)  # (B, 1 + L_keep, Dd)
        n, length, dim = x.shape[0], ids_restore.shape[1], x.shape[2]
        mask_tokens = self.mask_token.expand(n, length + 1 - x.shape[1], -1)
        x_ = torch.cat([x[:, 1:], mask_tokens], dim=1)  # (B, L, Dd), shuffled order
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, dim))  # patch order
        x = torch.cat([x[:, :1], x_], dim=1) + self.decoder_pos_embed  # class token back in front
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]  # drop the class token

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """MSE on the hidden patches only; imgs (B, 3, H, W), pred (B, L, p*p*3), mask (B, L)."""
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            # Per-patch standardisation: predict structure, not each patch's brightness.
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        return masked_mse_loss(pred, target, mask)

    # --- the method interface ---------------------------------------------------------

    def training_step(self, images: torch.Tensor) -> StepOutput:
        # images: (B, 3, H, W) in [0, 1]; one lightly augmented view each.
        x = random_resized_crop(images, self.image_size, scale=self.crop_scale)
        x = (x - self.encoder.mean) / self.encoder.std  # the Encoder's own normalisation
        latent, mask, ids_restore = self.forward_encoder(x, self.mask_ratio)
        pred = self.forward_decoder(latent, ids_restore)  # (B, L, p*p*3)
        loss = self.forward_loss(x, pred, mask)
        return StepOutput(loss, latent[:, 1:].mean(dim=1).detach())
