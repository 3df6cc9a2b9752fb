"""Streaming training data: an image source, a resumable sharded sampler, a prefetching loader.

The training loop never holds the data set: each step reads one batch of uint8 images,
in an order fixed by (seed, epoch), while the previous batch trains.

    source   anything with ``len(source)`` and ``source.read(indices, pin=False)`` ->
             (B, 3, H, W) uint8 tensor: :class:`TensorImages` (in memory, for tests and
             small sets) or ``tasks.image.shards.ShardReader`` (decoded pixels on disk)
    sampler  :class:`EpochSampler`: the batches of one epoch, shardable across ranks and
             resumable mid-epoch (``state_dict`` = epoch + position)
    loader   :class:`PrefetchLoader`: a background thread reads the next batches (into
             pinned memory on CUDA) and the main thread copies them ``non_blocking``

The choice of format, measured (``benchmarks/bench_streaming.py``, 2-core CPU): with
decoded uint8 shards read with ``os.preadv`` the loop keeps 97.5% of the model-only
images/s at 32 px (SimCLR, width 16, batch 256), and peak memory does not grow with the
data (5k vs 20k images: the same peak RSS, writing and reading). JPEG bytes decoded per batch
(``torchvision.io.decode_jpeg``) would be 5-10x smaller on disk but cost CPU time on
every step of every epoch, which a 2-core CPU or a GPU fed by few cores cannot spare;
the shard format can add a JPEG variant behind the same ``read`` if disk becomes the
limit. Augmentation is not done here: views are drawn on the device, batched
(``ssl_models.augment``).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Protocol

import numpy as np
import torch


class ImageSource(Protocol):
    def __len__(self) -> int: ...

    def read(self, indices, pin: bool = False) -> torch.Tensor:
        """indices (B,) -> (B, 3, H, W) uint8, in that order."""
        ...


class TensorImages:
    """An in-memory (N, 3, H, W) uint8 tensor as an :class:`ImageSource` (or (N, L) integer token
    ids, for methods with a ``prepare_batch``)."""

    def __init__(self, images: torch.Tensor) -> None:
        tokens = images.ndim == 2 and not images.dtype.is_floating_point
        if not tokens and (images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3):
            raise ValueError(f"expected (N, 3, H, W) uint8 images, got {tuple(images.shape)} {images.dtype}")
        self.images = images
        self.image_size = images.shape[-1]

    def __len__(self) -> int:
        return len(self.images)

    def read(self, indices, pin: bool = False) -> torch.Tensor:
        batch = self.images[torch.as_tensor(np.asarray(indices), dtype=torch.long)]
        return batch.pin_memory() if pin else batch


class SubsetSource:
    """The images ``indices`` of another source, as a source (e.g. 1% of the labels)."""

    def __init__(self, source: ImageSource, indices) -> None:
        self.source, self.indices = source, np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def read(self, indices, pin: bool = False) -> torch.Tensor:
        return self.source.read(self.indices[np.asarray(indices, dtype=np.int64)], pin)


def as_source(images: torch.Tensor | ImageSource) -> ImageSource:
    return TensorImages(images) if isinstance(images, torch.Tensor) else images


class EpochSampler:
    """The batches of each epoch: a permutation drawn from (seed, epoch), cut into batches.

    With ``world_size`` ranks, global batch ``i`` of an epoch is
    ``order[i*B*W : (i+1)*B*W]`` and rank ``r`` takes its ``r``-th slice of ``B``: the
    ranks together see exactly the global batch a single process with batch ``B*W``
    would see, so losses with gathered negatives match the single-process loss. The
    ragged end of each epoch is dropped (BatchNorm wants full batches).

    ``position`` is the number of batches of ``epoch`` already consumed; iterating yields
    the rest of the epoch and advances it. ``state_dict`` / ``load_state_dict`` save and
    restore (epoch, position) for a mid-epoch resume.

    >>> sampler = EpochSampler(10, batch_size=4, seed=0)
    >>> [len(b) for b in sampler]
    [4, 4]
    """

    def __init__(self, num_images: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        if num_images < batch_size * world_size:
            raise ValueError(f"{num_images} images cannot fill one batch of {batch_size} x {world_size} ranks")
        self.num_images, self.batch_size, self.seed = num_images, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.steps_per_epoch = num_images // (batch_size * world_size)
        self.epoch, self.position = 0, 0

    def __len__(self) -> int:
        return self.steps_per_epoch

    def order(self, epoch: int) -> np.ndarray:
        """The permutation of all images for ``epoch`` (the same on every rank)."""
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_images)

    def remaining(self) -> list[np.ndarray]:
        """This rank's batches of the current epoch from ``position`` on."""
        order, b, w = self.order(self.epoch), self.batch_size, self.world_size
        starts = [(i * w + self.rank) * b for i in range(self.position, self.steps_per_epoch)]
        return [order[s : s + b] for s in starts]

    def __iter__(self) -> Iterator[np.ndarray]:
        for batch in self.remaining():
            yield batch
            self.position += 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "num_images": self.num_images,
                "batch_size": self.batch_size, "world_size": self.world_size}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "num_images", "batch_size", "world_size"):
            if state[key] != getattr(self, key):
                raise ValueError(f"sampler state is for {key}={state[key]}, this sampler has {getattr(self, key)}")
        if not 0 <= state["position"] <= self.steps_per_epoch:
            raise ValueError(f"sampler position {state['position']} is outside 0..{self.steps_per_epoch}")
        self.epoch, self.position = state["epoch"], state["position"]


class PrefetchLoader:
    """Iterate the sampler's remaining batches as (B, 3, H, W) uint8 tensors on ``device``.

    A daemon thread reads up to ``depth`` batches ahead (file reads and copies release the
    GIL, so they overlap the step's compute); on CUDA it reads into pinned memory and
    the copy to the device is ``non_blocking``. The sampler's ``position`` advances only
    when a batch is handed over, so it counts batches the loop has taken, not read ahead.
    The thread touches no random-number generator: the loop's RNG streams, and so the
    training run, are the same with and without prefetching.
    """

    def __init__(self, source: ImageSource, sampler: EpochSampler, device: torch.device | str = "cpu", depth: int = 2) -> None:
        self.source, self.sampler, self.device, self.depth = source, sampler, torch.device(device), depth
        self.pin = self.device.type == "cuda"

    def __len__(self) -> int:
        return self.sampler.steps_per_epoch - self.sampler.position

    def __iter__(self) -> Iterator[torch.Tensor]:
        batches = self.sampler.remaining()
        if self.depth <= 0:  # synchronous: the reference the benchmark compares against
            for indices in batches:
                batch = self.source.read(indices, pin=self.pin).to(self.device, non_blocking=True)
                self.sampler.position += 1
                yield batch
            return
        ready: queue.Queue = queue.Queue(maxsize=self.depth)
        stop = threading.Event()

        def hand_over(item) -> bool:  # False once the consumer has stopped
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for indices in batches:
                    if not hand_over(self.source.read(indices, pin=self.pin)):
                        return
            except BaseException as err:  # noqa: BLE001 - not swallowed: raised in the consumer
                hand_over(err)

        thread = threading.Thread(target=produce, name="prefetch", daemon=True)
        thread.start()
        try:
            for _ in batches:
                item = ready.get()
                if isinstance(item, BaseException):
                    raise item
                batch = item.to(self.device, non_blocking=True)
                self.sampler.position += 1
                yield batch
        finally:
            stop.set()
            thread.join()
