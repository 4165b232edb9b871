"""The centroid first stage (vgs.centroids): a lower bound of MISA, exact with one cluster per vector,
and the search stage built on it (stored centroids, recomputed ones, re-ranking)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vgs.centroids
from test_first_stage import FAKE_MODEL, clustered, queries, write_index
from vgs.centroids import PROJECTED_DIMS, Int8Centroids, kmeans, lower_bounds, project, region_centroids
from vgs.errors import VGSError
from vgs.search import EmbeddingScorer, SearchIndex
from vgs.similarity import PackedFrames


def naive_misa(regions: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """``N x R x D`` regions, ``T x D`` frames -> ``N``: mean over frames of the best region, by loops."""
    out = torch.zeros(len(regions))
    for i, image in enumerate(regions):
        out[i] = sum(max(float(region @ frame) for region in image) for frame in frames) / len(frames)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_lower_bound_never_exceeds_misa_and_equals_it_with_one_cluster_per_vector(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n, r, d, t = (int(v) for v in torch.randint(1, 14, (4,), generator=g))
    regions, frames = torch.randn(n, r, d + 1, generator=g), torch.randn(t, d + 1, generator=g)
    exact = naive_misa(regions, frames)
    for m in (1, 2, 5, r):
        for p in (1, 3, 8, t):
            assert (lower_bounds(region_centroids(regions, m), frames, p) <= exact + 1e-4).all(), (m, p)
    torch.testing.assert_close(lower_bounds(region_centroids(regions, r), frames, t), exact, atol=1e-4, rtol=1e-4)
    more = lower_bounds(region_centroids(regions, r + 3), frames, t + 2)  # more clusters than vectors: still exact
    torch.testing.assert_close(more, exact, atol=1e-4, rtol=1e-4)


def test_kmeans_partitions_deterministically_and_checks_its_input() -> None:
    x = torch.randn(3, 20, 5, generator=torch.Generator().manual_seed(0))
    centroids, shares = kmeans(x, 4)
    assert centroids.shape == (3, 4, 5) and shares.shape == (3, 4)
    torch.testing.assert_close(shares.sum(1), torch.ones(3))  # a partition of the vectors
    again, _ = kmeans(x, 4)
    assert torch.equal(centroids, again)
    two = torch.cat([torch.ones(1, 4, 2), -torch.ones(1, 4, 2)], dim=1)  # two obvious clusters
    found, weights = kmeans(two, 2)
    assert sorted(found[0, :, 0].tolist()) == [-1.0, 1.0] and weights.tolist() == [[0.5, 0.5]]
    with pytest.raises(VGSError, match="centroids"):
        kmeans(x, 0)
    with pytest.raises(VGSError, match="B x n x D"):
        kmeans(torch.zeros(2, 0, 5), 2)


def test_centroid_stage_through_the_index(tmp_path) -> None:  # noqa: ANN001
    write_index(tmp_path / "idx", clustered(120, 6, 24, 1), (2, 3))  # built without centroid files
    index = SearchIndex(tmp_path / "idx")
    for frames in queries(24, 5, 7):
        full = index.search_audio(FAKE_MODEL, frames, k=10, exhaustive=True)
        every = index.search_audio(FAKE_MODEL, frames, k=10, candidates=120, first_stage="centroids")
        assert [h.index for h in every] == [h.index for h in full]  # all candidates: the exhaustive order
        np.testing.assert_allclose([h.score for h in every], [h.score for h in full], rtol=1e-5)
        few = index.search_audio(FAKE_MODEL, frames, k=5, candidates=12, first_stage="centroids")
        assert len(few) == 5 and all(a.score >= b.score for a, b in zip(few, few[1:]))
    stored = tmp_path / "idx" / "images" / "chunk-00000.centroids.npy"
    assert stored.is_file()  # computed once from the regions and kept
    assert np.load(stored).shape == (16, 8, 24)
    held = index.image_centroids()
    assert held.values.dtype == torch.int8 and held.shape == (120, 8, 24)
    torch.testing.assert_close(SearchIndex(tmp_path / "idx").image_centroids().dequantize(), held.dequantize())
    stored.write_bytes(b"not an array")  # a damaged file is recomputed, not fatal
    torch.testing.assert_close(SearchIndex(tmp_path / "idx").image_centroids().dequantize(), held.dequantize())


def test_an_image_whose_regions_are_spoken_is_found_with_few_candidates(tmp_path) -> None:  # noqa: ANN001
    """The stage's point: a small candidate list still holds the best image."""
    regions = clustered(200, 6, 24, 2)
    write_index(tmp_path / "idx", regions, (2, 3))
    index = SearchIndex(tmp_path / "idx")
    found = 0
    for target in range(0, 200, 20):
        frames = torch.from_numpy(regions[target][[0, 2, 4, 4, 1]])  # frames that say what the image shows
        from vgs.similarity import PackedFrames

        query = PackedFrames(frames, torch.zeros(5, dtype=torch.long), torch.tensor([5]))
        full = index.search_audio(FAKE_MODEL, query, k=1, exhaustive=True)[0].index
        found += index.search_audio(FAKE_MODEL, query, k=1, candidates=10, first_stage="centroids")[0].index == full
    assert found == 10


def test_projected_bound_is_the_bound_under_a_rotation_and_shrinks_with_the_basis() -> None:
    g = torch.Generator().manual_seed(3)
    regions, frames = torch.randn(30, 6, 16, generator=g), torch.randn(9, 16, generator=g)
    centroids = region_centroids(regions, 4)
    rotation = torch.linalg.qr(torch.randn(16, 16, generator=g))[0].T  # 16 orthonormal rows
    full = lower_bounds(centroids, frames)
    torch.testing.assert_close(lower_bounds(project(centroids, rotation), frames, basis=rotation), full, atol=1e-4, rtol=1e-4)
    assert project(centroids, rotation[:5]).shape == (30, 4, 5)
    assert lower_bounds(project(centroids, rotation[:5]), frames, basis=rotation[:5]).shape == (30,)


@pytest.mark.parametrize("seed", [0, 1])
def test_int8_bound_follows_the_float_bound(seed: int) -> None:
    """Int8 centroids (one scale per image) and int8 query centroids: ``L`` within the quantization error,
    the same best images, and images whose centroids differ only in scale keep their order."""
    g = torch.Generator().manual_seed(seed)
    centroids = torch.randn(3000, 8, 64, generator=g) * torch.rand(3000, 1, 1, generator=g)
    frames = torch.randn(23, 64, generator=g)
    exact = lower_bounds(centroids, frames)
    table = Int8Centroids.quantize(centroids)
    assert table.values.dtype == torch.int8 and table.scales.shape == (3000,)
    assert (table.dequantize() - centroids).abs().amax() <= table.scales.amax() / 2 + 1e-6
    approx = lower_bounds(table, frames)
    assert (approx - exact).abs().amax() < 0.02 * exact.abs().amax()
    top, top_int8 = set(torch.topk(exact, 100).indices.tolist()), set(torch.topk(approx, 100).indices.tolist())
    assert len(top & top_int8) >= 95
    scaled = Int8Centroids.quantize(torch.stack([centroids[0], 2 * centroids[0]]))
    half, double = lower_bounds(scaled, frames).tolist()
    assert double == pytest.approx(2 * half, rel=1e-5)
    for m in (1, 3, 6):  # centroid counts the pairwise max does not halve evenly
        few = torch.randn(200, m, 16, generator=g)
        torch.testing.assert_close(lower_bounds(Int8Centroids.quantize(few), frames[:, :16]), lower_bounds(few, frames[:, :16]),
                                   atol=0.05, rtol=0.02)
    empty = Int8Centroids.cat([], 8, 64)
    assert empty.shape == (0, 8, 64) and lower_bounds(empty, frames).shape == (0,)


class CountingScorer(EmbeddingScorer):
    """MISA, counting the images scored at full precision."""

    def __init__(self) -> None:
        super().__init__("misa")
        self.scored = 0

    def scores(self, regions: torch.Tensor, captions: PackedFrames) -> torch.Tensor:
        self.scored += len(regions)
        return super().scores(regions, captions)


def test_codes_narrow_the_centroid_candidates_before_the_exact_rerank(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """With int8 codes the stage projects its centroids onto the codec and reads full regions for only
    CODE_RERANK_DEPTH images; on clustered data it still returns the exhaustive top-5."""
    regions = clustered(160, 6, 24, 4)
    write_index(tmp_path / "idx", regions, (2, 3))
    index = SearchIndex(tmp_path / "idx")
    index.build_codes(16)
    assert index.image_centroids().shape == (160, 8, min(16, PROJECTED_DIMS))  # projected onto the codec's rows
    monkeypatch.setattr(vgs.centroids, "CODE_RERANK_DEPTH", 20)
    same, rng = 0, np.random.default_rng(9)
    for target in range(0, 160, 20):  # queries that describe an image: some of its regions, plus noise
        spoken = torch.from_numpy(regions[target][[0, 2, 4, 4, 1]] + 0.3 * rng.standard_normal((5, 24)).astype(np.float32))
        frames = PackedFrames(torch.nn.functional.normalize(spoken, dim=1), torch.zeros(5, dtype=torch.long), torch.tensor([5]))
        counting = CountingScorer()
        full = index.search_audio(FAKE_MODEL, frames, k=5, exhaustive=True)
        hits = index.search_audio(counting, frames, k=5, candidates=160, first_stage="centroids")
        assert counting.scored == 20  # only the codes' best 20 of 160 candidates read at full precision
        assert len(hits) == 5 and all(a.score >= b.score for a, b in zip(hits, hits[1:]))
        same += [h.index for h in hits] == [h.index for h in full]
    assert same >= 7, same
