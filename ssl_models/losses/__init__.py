"""One small module per loss. Each docstring gives the paper and the formula."""

from ssl_models.losses.nt_xent import nt_xent_loss

__all__ = ["nt_xent_loss"]
