"""The streaming data path: sampler order, sharding across ranks, mid-epoch resume, prefetching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssl_models.data import EpochSampler, PrefetchLoader, TensorImages


def test_the_order_is_a_function_of_seed_and_epoch():
    sampler = EpochSampler(103, batch_size=10, seed=3)
    sampler.set_epoch(1)
    first = np.concatenate(list(sampler))
    assert len(first) == 100 and len(set(first.tolist())) == 100  # each image at most once, ragged end dropped
    sampler.set_epoch(1)
    assert np.array_equal(np.concatenate(list(sampler)), first)
    sampler.set_epoch(2)
    assert not np.array_equal(np.concatenate(list(sampler)), first)
    assert not np.array_equal(EpochSampler(103, 10, seed=4).order(1), sampler.order(1))


def test_ranks_split_each_global_batch():
    single = EpochSampler(50, batch_size=12, seed=0)
    ranks = [EpochSampler(50, batch_size=4, seed=0, rank=r, world_size=3) for r in range(3)]
    for s in (single, *ranks):
        s.set_epoch(5)
    per_rank = [list(r) for r in ranks]
    assert len(per_rank[0]) == len(single) == 4
    for i, global_batch in enumerate(single):
        assert np.array_equal(np.concatenate([batches[i] for batches in per_rank]), global_batch)
    with pytest.raises(ValueError, match="rank 3"):
        EpochSampler(50, 4, rank=3, world_size=3)


def test_a_sampler_resumes_mid_epoch():
    sampler = EpochSampler(40, batch_size=4, seed=1)
    sampler.set_epoch(2)
    everything = list(EpochSampler.remaining(sampler))
    it = iter(sampler)
    next(it), next(it), next(it)
    state = sampler.state_dict()
    assert (state["epoch"], state["position"]) == (2, 2)  # the third batch was handed out, not yet consumed
    resumed = EpochSampler(40, batch_size=4, seed=1)
    resumed.load_state_dict(state)
    assert all(np.array_equal(a, b) for a, b in zip(list(resumed), everything[2:], strict=True))
    with pytest.raises(ValueError, match="batch_size=4"):
        EpochSampler(40, batch_size=8, seed=1).load_state_dict(state)


@pytest.mark.parametrize("depth", [0, 2])
def test_the_loader_gives_the_sampled_batches_in_order(depth):
    images = torch.randint(0, 256, (30, 3, 4, 4), dtype=torch.uint8)
    sampler = EpochSampler(30, batch_size=6, seed=0)
    sampler.set_epoch(1)
    expected = [images[torch.from_numpy(b)] for b in sampler.remaining()]
    loader = PrefetchLoader(TensorImages(images), sampler, depth=depth)
    for i, batch in enumerate(loader):
        assert torch.equal(batch, expected[i])
        assert sampler.position == i + 1  # counts batches handed over, not read ahead
        if i == 2:
            break  # stopping early must not hang the reader thread
    assert sampler.position == 3
    assert [torch.equal(a, b) for a, b in zip(loader, expected[3:], strict=True)] == [True, True]


def test_a_read_error_reaches_the_loop():
    class Broken(TensorImages):
        def read(self, indices, pin=False):
            raise OSError("disk gone")

    sampler = EpochSampler(8, batch_size=4)
    with pytest.raises(OSError, match="disk gone"):
        list(PrefetchLoader(Broken(torch.zeros(8, 3, 2, 2, dtype=torch.uint8)), sampler))
