"""The centroid first stage (vgs.centroids): a lower bound of MISA from representative regions and frame
centroids, exact with every region and one cluster per frame, and the search stage built on it (stored
representatives, recomputed ones, re-ranking)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vgs.centroids
import vgs.kernels
from test_first_stage import FAKE_MODEL, clustered, queries, write_index
from vgs.centroids import COARSE_DIMS, PROJECTED_DIMS, Int8Representatives, kmeans, lower_bounds, project, representatives
from vgs.codecs import principal_basis
from vgs.errors import VGSError
from vgs.kernels import PackedRepresentatives
from vgs.search import EmbeddingScorer, SearchIndex
from vgs.similarity import PackedFrames


def naive_misa(regions: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """``N x R x D`` regions, ``T x D`` frames -> ``N``: mean over frames of the best region, by loops."""
    out = torch.zeros(len(regions))
    for i, image in enumerate(regions):
        out[i] = sum(max(float(region @ frame) for region in image) for frame in frames) / len(frames)
    return out


def kept(regions: torch.Tensor, m: int) -> torch.Tensor:
    """Each image's representative regions, ``N x m x D``."""
    picks = representatives(regions, m)
    return regions.gather(1, picks[..., None].expand(-1, -1, regions.shape[2]))


@pytest.mark.parametrize("seed", range(6))
def test_lower_bound_never_exceeds_misa_and_equals_it_with_every_region_and_one_cluster_per_frame(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n, r, d, t = (int(v) for v in torch.randint(1, 14, (4,), generator=g))
    regions, frames = torch.randn(n, r, d + 1, generator=g), torch.randn(t, d + 1, generator=g)
    exact = naive_misa(regions, frames)
    for m in (1, 2, 5, r):
        for p in (1, 3, 8, t):
            assert (lower_bounds(kept(regions, m), frames, p) <= exact + 1e-4).all(), (m, p)
    torch.testing.assert_close(lower_bounds(kept(regions, r), frames, t), exact, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(lower_bounds(kept(regions, r + 3), frames, t + 2), exact, atol=1e-4, rtol=1e-4)


def naive_farthest_points(image: torch.Tensor, m: int) -> list[int]:
    """One image's ``R x D`` regions -> farthest-point picks by inner product, by loops."""
    mean = image.mean(0)
    picks = [min(range(len(image)), key=lambda r: (float(image[r] @ mean), r))]
    while len(picks) < min(m, len(image)):
        rest = [r for r in range(len(image)) if r not in picks]
        picks.append(min(rest, key=lambda r: (max(float(image[r] @ image[s]) for s in picks), r)))
    return picks


@pytest.mark.parametrize("seed", range(4))
def test_representatives_are_farthest_point_picks(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    regions = torch.nn.functional.normalize(torch.randn(7, 12, 5, generator=g), dim=2)
    for m in (1, 4, 11):
        picks = representatives(regions, m)
        assert picks.shape == (7, m) and all(len(set(row.tolist())) == m for row in picks)
        assert picks.tolist() == [naive_farthest_points(image, m) for image in regions], m
    assert torch.equal(representatives(regions, 11)[:, :4], representatives(regions, 4))  # nested: a file of more picks serves
    assert representatives(regions, 12).tolist() == [list(range(12))] * 7  # every region when m >= R
    assert representatives(regions, 40).shape == (7, 12)
    with pytest.raises(VGSError, match="N x R x D"):
        representatives(torch.zeros(3, 0, 4), 2)
    # a small object on a plain background: kept, where a mean of regions would blur it away
    background, thing = torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 0])
    image = torch.stack([background] * 15 + [thing])[None]
    assert 15 in representatives(image, 2)[0].tolist()


def test_principal_basis_keeps_inner_products_of_low_rank_vectors() -> None:
    g = torch.Generator().manual_seed(5)
    vectors = torch.randn(500, 3, generator=g) @ torch.randn(3, 16, generator=g)  # rank 3 in 16 dims
    basis = principal_basis(vectors, 3)
    torch.testing.assert_close(basis @ basis.T, torch.eye(3), atol=1e-5, rtol=0)
    a, b = vectors[:20], vectors[20:40]
    torch.testing.assert_close((a @ basis.T) @ (b @ basis.T).T, a @ b.T, atol=1e-3, rtol=1e-4)
    assert principal_basis(vectors, 40).shape == (16, 16)
    torch.testing.assert_close(principal_basis(vectors.flip(0), 3), basis, atol=1e-5, rtol=0)  # order-free, signs fixed


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
    write_index(tmp_path / "idx", clustered(120, 6, 24, 1), (2, 3))  # built without representative files
    index = SearchIndex(tmp_path / "idx")
    for frames in queries(24, 5, 7):
        full = index.search_audio(FAKE_MODEL, frames, k=10, exhaustive=True)
        every = index.search_audio(FAKE_MODEL, frames, k=10, candidates=120, first_stage="centroids")
        assert [h.index for h in every] == [h.index for h in full]  # all candidates: the exhaustive order
        np.testing.assert_allclose([h.score for h in every], [h.score for h in full], rtol=1e-5)
        few = index.search_audio(FAKE_MODEL, frames, k=5, candidates=12, first_stage="centroids")
        assert len(few) == 5 and all(a.score >= b.score for a, b in zip(few, few[1:]))
    stored = tmp_path / "idx" / "images" / "chunk-00000.representatives.npy"
    assert stored.is_file()  # computed once from the regions and kept
    assert np.load(stored).shape == (16, 6) and np.load(stored).dtype == np.uint8  # all 6 regions of a 2 x 3 grid
    held = index.image_representatives()
    assert held.values.dtype == torch.int8 and held.shape == (120, 6, min(24, PROJECTED_DIMS))
    torch.testing.assert_close(SearchIndex(tmp_path / "idx").image_representatives().dequantize(), held.dequantize())
    stored.write_bytes(b"not an array")  # a damaged file is recomputed, not fatal
    torch.testing.assert_close(SearchIndex(tmp_path / "idx").image_representatives().dequantize(), held.dequantize())
    np.save(stored, np.full((16, 6), 200, dtype=np.uint8))  # indices beyond the grid never address a region
    torch.testing.assert_close(SearchIndex(tmp_path / "idx").image_representatives().dequantize(), held.dequantize())
    assert np.load(stored).max() < 6
    np.save(stored, np.load(stored)[:, :3])  # fewer picks than the stage keeps: recomputed
    torch.testing.assert_close(SearchIndex(tmp_path / "idx").image_representatives().dequantize(), held.dequantize())
    assert np.load(stored).shape == (16, 6)


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
    side = kept(regions, 4)
    rotation = torch.linalg.qr(torch.randn(16, 16, generator=g))[0].T  # 16 orthonormal rows
    full = lower_bounds(side, frames)
    torch.testing.assert_close(lower_bounds(project(side, rotation), frames, basis=rotation), full, atol=1e-4, rtol=1e-4)
    assert project(side, rotation[:5]).shape == (30, 4, 5)
    assert lower_bounds(project(side, rotation[:5]), frames, basis=rotation[:5]).shape == (30,)


@pytest.mark.parametrize("seed", [0, 1])
def test_int8_bound_follows_the_float_bound(seed: int) -> None:
    """Int8 representatives (one scale per image) and int8 query centroids: ``L`` within the quantization
    error, the same best images, and images whose representatives differ only in scale keep their order."""
    g = torch.Generator().manual_seed(seed)
    centroids = torch.randn(3000, 8, 64, generator=g) * torch.rand(3000, 1, 1, generator=g)
    frames = torch.randn(23, 64, generator=g)
    exact = lower_bounds(centroids, frames)
    table = Int8Representatives.quantize(centroids)
    assert table.values.dtype == torch.int8 and table.scales.shape == (3000,)
    assert (table.dequantize() - centroids).abs().amax() <= table.scales.amax() / 2 + 1e-6
    approx = lower_bounds(table, frames)
    assert (approx - exact).abs().amax() < 0.02 * exact.abs().amax()
    top, top_int8 = set(torch.topk(exact, 100).indices.tolist()), set(torch.topk(approx, 100).indices.tolist())
    assert len(top & top_int8) >= 95
    scaled = Int8Representatives.quantize(torch.stack([centroids[0], 2 * centroids[0]]))
    half, double = lower_bounds(scaled, frames).tolist()
    assert double == pytest.approx(2 * half, rel=1e-5)
    for m in (1, 3, 6):  # counts the pairwise max does not halve evenly
        few = torch.randn(200, m, 16, generator=g)
        torch.testing.assert_close(lower_bounds(Int8Representatives.quantize(few), frames[:, :16]), lower_bounds(few, frames[:, :16]),
                                   atol=0.05, rtol=0.02)
    empty = Int8Representatives.cat([], 8, 64)
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
    """With int8 codes the stage reads full regions for only
    CODE_RERANK_DEPTH images; on clustered data it still returns the exhaustive top-5."""
    regions = clustered(160, 6, 24, 4)
    write_index(tmp_path / "idx", regions, (2, 3))
    index = SearchIndex(tmp_path / "idx")
    index.build_codes(16)
    assert index.image_representatives().shape == (160, 6, min(24, PROJECTED_DIMS))
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


@pytest.mark.parametrize("count", [0, 1, 7, 50, 80])
def test_candidates_are_the_best_by_the_bound_in_index_order(count: int) -> None:
    generator = torch.Generator().manual_seed(count)
    table = Int8Representatives.quantize(torch.randn(50, 8, 16, generator=generator))
    frames = torch.randn(12, 16, generator=generator)
    got = vgs.centroids.candidates(table, frames, count)
    bounds = lower_bounds(table, frames)
    want = np.sort(torch.topk(bounds, min(count, 50)).indices.numpy())
    np.testing.assert_array_equal(got, want)


def test_two_passes_keep_the_one_pass_candidates_when_the_leading_dimensions_rank_alike() -> None:
    generator = torch.Generator().manual_seed(3)
    lead = torch.randn(400, 8, COARSE_DIMS, generator=generator)
    table = Int8Representatives.quantize(torch.cat([lead, 0.01 * torch.randn(400, 8, 16, generator=generator)], dim=2))
    frames = torch.randn(12, COARSE_DIMS + 16, generator=generator)
    for count in (5, 20, 99):  # 400 images > COARSE_DEPTH x count: two passes
        want = np.sort(torch.topk(lower_bounds(table, frames), count).indices.numpy())
        np.testing.assert_array_equal(vgs.centroids.candidates(table, frames, count), want)


@pytest.mark.parametrize("vnni", [False, True])
def test_the_first_pass_ranks_by_the_leading_dimensions_only(monkeypatch, vnni: bool) -> None:  # noqa: ANN001
    """Image 0 matches the query on a trailing dimension only: the first pass drops it; with a first pass
    deep enough to hold every image there is one pass, and it is the best.  The same with the lead packed
    for VNNI (on CPUs that have it) and as plain int8 columns."""
    if vnni and not vgs.kernels.has_vnni():
        pytest.skip("this CPU has no AVX-512 VNNI")
    monkeypatch.setattr(vgs.kernels, "has_vnni", lambda: vnni)
    side = torch.zeros(100, 4, COARSE_DIMS + 8)
    side[1:, :, 0] = torch.linspace(0.1, 0.5, 99)[:, None]  # the others match weakly on dimension 0
    side[0, :, COARSE_DIMS] = 1.0
    frames = torch.zeros(3, COARSE_DIMS + 8)
    frames[:, 0] = frames[:, COARSE_DIMS] = 1.0
    table = Int8Representatives.quantize(side)
    lead = table.lead
    assert isinstance(lead, PackedRepresentatives) == vnni
    assert torch.equal(lead.unpacked() if vnni else lead, table.columns[:, :COARSE_DIMS]) and (vnni or lead.is_contiguous())
    assert 0 not in vgs.centroids.candidates(table, frames, 5)
    monkeypatch.setattr(vgs.centroids, "COARSE_DEPTH", 20)
    assert 0 in vgs.centroids.candidates(table, frames, 5)


def test_lead_scores_narrow_the_candidates_before_the_coarse_scores(monkeypatch) -> None:  # noqa: ANN001
    """With ``lead_scores`` the coarse scores see only the lead's best CODE_LEAD_FACTOR x depth."""
    monkeypatch.setattr(vgs.centroids, "CODE_LEAD_FACTOR", 2)
    table = Int8Representatives.quantize(torch.randn(60, 4, 8, generator=torch.Generator().manual_seed(2)))
    frames, seen = torch.randn(5, 8, generator=torch.Generator().manual_seed(3)), []

    def coarse(ids: np.ndarray) -> np.ndarray:
        seen.append(ids)
        return -ids.astype(np.float64)  # the lowest ids first

    first = vgs.centroids.candidates(table, frames, 50)  # by the bound, ascending
    got = vgs.centroids.candidates(table, frames, 50, coarse_scores=coarse, depth=5, lead_scores=lambda ids: ids.astype(np.float64))
    np.testing.assert_array_equal(seen[0], first[-10:])  # the lead kept the 10 highest ids of the 50 candidates
    np.testing.assert_array_equal(got, first[-10:-5])  # and the coarse scores the 5 lowest of those
    everything = vgs.centroids.candidates(table, frames, 60, coarse_scores=coarse, depth=5)
    np.testing.assert_array_equal(everything, np.arange(5))  # without a lead, the coarse scores see all 60
