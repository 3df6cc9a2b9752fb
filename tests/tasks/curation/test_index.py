"""The embeddings index and what is read from it, on features with planted copies."""

import numpy as np
import pandas as pd
import pytest
import torch

from tasks.curation.index import CurationError, EmbeddingIndex, write_index
from tasks.curation.pool import candidates, near_duplicate_pairs, outliers, read_exclude, shortlist


def build(tmp_path, features: torch.Tensor, batch: int = 7, k: int = 5) -> EmbeddingIndex:
    items = pd.DataFrame({"path": [f"img{i:03d}.png" for i in range(len(features))], "sha256": ["x"] * len(features)})
    meta = {"encoder": {"model_name": "m", "version": 1, "weights_sha256": "s", "run_id": "r"}, "data_version": "d"}
    write_index(tmp_path, iter(features.split(batch)), items, meta, k)
    return EmbeddingIndex.open(tmp_path)


@pytest.fixture
def pool():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(60, 32, generator=generator)
    x[50] = x[3] + 0.01 * torch.randn(32, generator=generator)  # planted near-copies
    x[51] = x[7] * 1.3  # same direction: cosine 1
    x[52] = x[3].clone()  # an exact copy of 3 too (ranks with 3 itself)
    return x


def test_neighbours_never_list_the_item_itself(tmp_path, pool):
    index = build(tmp_path, pool)
    assert index.neighbours.shape == (60, 5)
    assert not (index.neighbours == np.arange(60)[:, None]).any()
    assert np.all(np.diff(index.similarities, axis=1) <= 1e-6), "most similar first"
    embeddings = index.embeddings()
    assert embeddings.shape == (60, 32) and np.allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-5)
    assert np.allclose(np.load(tmp_path / "mean.npy"), pool.mean(0).numpy(), atol=1e-5)  # centred on the pool mean
    assert not (tmp_path / "raw.npy").exists()


def test_planted_copies_are_the_top_pairs_each_listed_once(tmp_path, pool):
    index = build(tmp_path, pool)
    pairs = near_duplicate_pairs(index, 0.9)
    assert {(a, b) for a, b, _ in pairs} == {(3, 50), (7, 51), (3, 52), (50, 52)}
    assert [s for _, _, s in pairs] == sorted((s for _, _, s in pairs), reverse=True)
    # of each pair the first is kept: 3 and 7 stay, their copies go
    assert set(range(60)) - set(candidates(index, pairs).tolist()) == {50, 51, 52}


def test_outliers_lowest_density_first(tmp_path):
    generator = torch.Generator().manual_seed(1)
    centres = torch.randn(3, 32, generator=generator)
    x = centres.repeat_interleave(20, 0) + 0.1 * torch.randn(60, 32, generator=generator)
    x[59] = torch.randn(32, generator=generator)  # far from every cluster
    index = build(tmp_path, x)
    found = outliers(index, 5)
    assert [d for _, d in found] == sorted(d for _, d in found)
    assert found[0][0] == 59


def test_shortlist_skips_copies_and_excluded_and_refuses_too_many(tmp_path, pool):
    index = build(tmp_path, pool)
    exclude = {"img000.png", "img001.png"}
    for strategy in ("typiclust", "kcenter", "random"):
        rows = shortlist(index, 20, strategy, 0.9, exclude)
        paths = [row["path"] for row in rows]
        assert len(paths) == 20 == len(set(paths)) and [row["rank"] for row in rows] == list(range(1, 21))
        assert not set(paths) & (exclude | {"img050.png", "img051.png", "img052.png"})
    with pytest.raises(CurationError, match="larger than the pool: 55 candidates"):
        shortlist(index, 56, "random", 0.9, exclude)


def test_search_finds_a_query_s_copy(tmp_path, pool):
    index = build(tmp_path, pool)
    sims, idx = index.search(pool[7:8], 2)
    assert idx[0].tolist()[0] == 7 and set(idx[0].tolist()) == {7, 51} and sims[0][0] == pytest.approx(1, abs=1e-5)


def test_exclude_file_lines_or_a_csv(tmp_path):
    (tmp_path / "a.txt").write_text("x.png\n\ny.png\n")
    (tmp_path / "b.csv").write_text("rank,path\n1,z.png\n")
    assert read_exclude(tmp_path / "a.txt") == {"x.png", "y.png"}
    assert read_exclude(tmp_path / "b.csv") == {"z.png"}
    with pytest.raises(CurationError, match="cannot read"):
        read_exclude(tmp_path / "missing.txt")


def test_a_missing_index_says_what_to_run(tmp_path):
    with pytest.raises(CurationError, match="sslpipe embed"):
        EmbeddingIndex.open(tmp_path / "nothing")


def test_a_pool_beyond_the_flat_limit_gets_an_ivf_index_that_finds_the_neighbours_and_copies(tmp_path, monkeypatch):
    """Above FLAT_LIMIT items the index is IVF (approximate): its neighbour table must agree with
    the exact one, and every planted near-copy must still be found."""
    import tasks.curation.index as index_module

    generator = torch.Generator().manual_seed(2)
    centres = torch.randn(40, 32, generator=generator)
    x = centres[torch.randint(40, (4000,), generator=generator)] + 0.7 * torch.randn(4000, 32, generator=generator)
    x[3900:] = x[:100] + 0.05 * torch.randn(100, 32, generator=generator)  # planted near-copies of items 0-99
    (tmp_path / "exact").mkdir()
    exact = build(tmp_path / "exact", x, batch=512, k=10)
    monkeypatch.setattr(index_module, "FLAT_LIMIT", 1000)
    (tmp_path / "ivf").mkdir()
    approx = build(tmp_path / "ivf", x, batch=512, k=10)

    assert exact.meta["index"] == "IndexFlatIP" and approx.meta["index"] == "IndexIVFFlat"
    assert approx.meta["index_cells"] == int(4 * 4000**0.5) and approx.meta["index_probes"] == index_module.IVF_PROBES
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx.neighbours, exact.neighbours, strict=True)])
    assert recall > 0.95, recall
    found = {(a, b) for a, b, _ in near_duplicate_pairs(approx, 0.95)}
    assert {(i, 3900 + i) for i in range(100)} <= found
    _, idx = approx.search(x[3950:3951], 2)
    assert set(idx[0].tolist()) == {50, 3950}
