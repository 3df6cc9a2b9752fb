"""A ring buffer of past embeddings, filled with every process's rows (SwAV, NNCLR).

    queue = EmbeddingQueue(1024, 128)     # K slots of (128,) rows
    queue.push(z.detach())                # gathers every rank's rows, overwrites the oldest
    queue.rows()                          # (filled, 128): the filled slots

The rows pushed are gathered across processes (ssl_models/distributed.py), so the queue is
the same on every rank, and one process with the whole batch holds the same queue. It is a
module with buffers, so it moves with ``.to()`` and is saved in checkpoints.
"""

from __future__ import annotations

import torch
from torch import nn

from ssl_models.distributed import gather


class EmbeddingQueue(nn.Module):
    def __init__(self, size: int, *row_shape: int) -> None:
        super().__init__()
        self.register_buffer("queue", torch.zeros(size, *row_shape))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))  # next slot to write
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))  # valid slots

    @torch.no_grad()
    def push(self, rows: torch.Tensor) -> None:
        """Push this rank's ``rows`` (n, *row_shape) and every other rank's, oldest first out."""
        rows = gather(rows.detach()).to(self.queue.dtype)[-self.queue.shape[0] :]  # a batch above K keeps its last K
        size = self.queue.shape[0]
        slots = (self.ptr + torch.arange(rows.shape[0], device=rows.device)) % size
        self.queue[slots] = rows
        self.ptr.copy_((self.ptr + rows.shape[0]) % size)
        self.filled.copy_((self.filled + rows.shape[0]).clamp(max=size))

    def rows(self) -> torch.Tensor:
        """The filled slots (filled, *row_shape), a copy (push edits the buffer in place).
        Until it wraps the filled slots are the first ones; after, all are."""
        return self.queue[: int(self.filled)].clone()

    @property
    def is_full(self) -> bool:
        return int(self.filled) == self.queue.shape[0]
