"""The shard format: what ShardWriter writes, ShardReader reads back, byte for byte."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tasks.image.shards import MANIFEST, ShardError, ShardReader, ShardWriter, write_shards


def random_images(n: int, size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_round_trip_across_shards(tmp_path):
    images = random_images(7)
    write_shards(tmp_path, iter(images), image_size=8, count=7, shard_bytes=3 * 8 * 8 * 3)  # 3 images a shard
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert [s["count"] for s in manifest["shards"]] == [3, 3, 1]
    assert np.array_equal(np.load(tmp_path / "shard-00001.npy"), images[3:6])  # plain .npy files
    reader = ShardReader(tmp_path)
    assert len(reader) == 7 and reader.image_size == 8
    indices = [6, 0, 3, 3, 5, 2]
    batch = reader.read(indices)
    assert batch.shape == (6, 3, 8, 8)
    assert np.array_equal(batch.permute(0, 2, 3, 1).numpy(), images[indices])
    assert batch.permute(0, 2, 3, 1).is_contiguous()  # channels-last, as the training step wants


def test_the_writer_refuses_a_wrong_count_or_shape(tmp_path):
    writer = ShardWriter(tmp_path / "a", image_size=8, count=2)
    with pytest.raises(ShardError, match=r"expected \(8, 8, 3\) uint8"):
        writer.add(np.zeros((8, 8, 4), np.uint8))
    writer.add(random_images(1)[0])
    with pytest.raises(ShardError, match="1 images written, 2 announced"):
        writer.close()
    assert not (tmp_path / "a" / MANIFEST).exists()  # unfinished: no manifest


def test_the_reader_names_a_truncated_shard(tmp_path):
    write_shards(tmp_path, iter(random_images(4)), image_size=8, count=4)
    shard = tmp_path / "shard-00000.npy"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ShardError, match=r"shard-00000\.npy"):
        ShardReader(tmp_path)
    with pytest.raises(ShardError, match="missing"):
        ShardReader(tmp_path / "nowhere")
