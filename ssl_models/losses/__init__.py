"""One small module per loss. Each docstring gives the paper and the formula."""

from ssl_models.losses.barlow_twins import barlow_twins_loss
from ssl_models.losses.dino import dino_loss, update_center
from ssl_models.losses.ibot import ibot_patch_loss
from ssl_models.losses.info_nce import info_nce_loss
from ssl_models.losses.koleo import koleo_loss
from ssl_models.losses.masked_mse import masked_mse_loss
from ssl_models.losses.mlm import mlm_loss
from ssl_models.losses.mocov3 import mocov3_loss
from ssl_models.losses.neg_cosine import byol_loss, negative_cosine_similarity
from ssl_models.losses.nnclr import nearest_neighbour, nnclr_loss
from ssl_models.losses.nt_xent import nt_xent_loss
from ssl_models.losses.swav import swav_loss
from ssl_models.losses.vicreg import vicreg_loss

__all__ = [
    "barlow_twins_loss",
    "byol_loss",
    "dino_loss",
    "ibot_patch_loss",
    "info_nce_loss",
    "koleo_loss",
    "masked_mse_loss",
    "mlm_loss",
    "mocov3_loss",
    "nearest_neighbour",
    "negative_cosine_similarity",
    "nnclr_loss",
    "nt_xent_loss",
    "swav_loss",
    "update_center",
    "vicreg_loss",
]
