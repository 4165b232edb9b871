"""The exact first stage (threshold algorithm over a region index) and the int8 region codes, against exhaustive MISA."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from vgs.codecs import RegionCodec
from vgs.errors import VGSError
from vgs.first_stage import RegionIndex, RegionSearch, threshold_topk
from vgs.io import save_npy, write_json
from vgs.search import INDEX_FORMAT, EmbeddingScorer, SearchIndex, pooled
from vgs.similarity import PackedFrames


def misa(regions: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Reference MISA, one image at a time: ``n x R x D`` regions, ``T x D`` frames -> ``n`` (float64)."""
    return np.array([(r.astype(np.float64) @ frames.astype(np.float64).T).max(0).mean() for r in regions])


def reference_topk(regions: np.ndarray, frames: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = misa(regions, frames)
    order = np.lexsort((np.arange(len(scores)), -scores))[:k]
    return order, scores[order]


def run_ta(regions: np.ndarray, frames: np.ndarray, k: int, codec: RegionCodec | None = None, **kwargs):  # noqa: ANN201
    n, r, d = regions.shape
    if codec is None:
        index = RegionIndex(d, r)
        index.add(regions)
        query = frames
    else:
        codes, errors = codec.encode(regions)
        index = RegionIndex(codec.index_dim, r)
        index.add(codec.index_vectors(codes, errors))
        query = codec.query_vectors(frames)
    return threshold_topk(lambda kk: index.fetch(query, kk), lambda ids: misa(regions[ids], frames), n, k, **kwargs)


@pytest.mark.parametrize("seed", range(8))
def test_threshold_topk_equals_exhaustive_on_random_galleries(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, r, d, t = int(rng.integers(1, 80)), int(rng.integers(1, 10)), int(rng.integers(2, 24)), int(rng.integers(1, 12))
    regions = rng.standard_normal((n, r, d)).astype(np.float32)
    regions /= np.linalg.norm(regions, axis=2, keepdims=True)
    frames = rng.standard_normal((t, d)).astype(np.float32)
    for k in (1, 5, 10, n + 3):
        for fetch_k, max_fetch in ((1, 4), (3, 1 << 16), (64, 1 << 16)):  # tiny fetches: several rounds, and the fallback
            found = run_ta(regions, frames, k, fetch_k=fetch_k, max_fetch=max_fetch)
            ids, scores = reference_topk(regions, frames, k)
            assert found.ids.tolist() == ids.tolist(), (k, fetch_k, found.stats)
            np.testing.assert_allclose(found.scores, scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dim", [3, 8, 16])
def test_bounded_codes_keep_the_search_exact(dim: int) -> None:
    """With the int8 PCA codes + error norms in the region index, fetched values are upper bounds: still exact."""
    rng = np.random.default_rng(dim)
    regions = rng.standard_normal((60, 6, 16)).astype(np.float32)
    codec = RegionCodec.fit(regions.reshape(-1, 16), dim)
    codes, errors = codec.encode(regions)
    bound = (codec.index_vectors(codes, errors).reshape(-1, dim + 2) @ codec.query_vectors(rng.standard_normal((9, 16))).T)
    truth = regions.reshape(-1, 16) @ rng.standard_normal((9, 16)).T  # not the same frames: just shapes
    assert bound.shape == truth.shape
    for q in range(4):
        frames = rng.standard_normal((int(rng.integers(1, 9)), 16)).astype(np.float32)
        exact = regions.reshape(-1, 16) @ frames.T
        upper = codec.index_vectors(codes, errors).reshape(-1, dim + 2) @ codec.query_vectors(frames).T
        assert (upper >= exact - 1e-5).all()
        for k in (1, 10):
            found = run_ta(regions, frames, k, codec=codec, fetch_k=4)
            assert found.ids.tolist() == reference_topk(regions, frames, k)[0].tolist()


def test_ties_break_by_lower_index_like_a_stable_sort() -> None:
    """Duplicate images and integer-valued embeddings: exact ties everywhere."""
    rng = np.random.default_rng(0)
    base = rng.integers(-2, 3, (6, 4, 5)).astype(np.float32)
    regions = np.concatenate([base, base, base[::-1]])  # every image three times
    frames = rng.integers(-2, 3, (3, 5)).astype(np.float32)
    for k in (1, 4, 7, 18, 30):
        for fetch_k in (1, 2, 100):
            found = run_ta(regions, frames, k, fetch_k=fetch_k)
            ids, scores = reference_topk(regions, frames, k)
            assert found.ids.tolist() == ids.tolist()
            assert found.scores.tolist() == scores.tolist()


def test_one_frame_and_one_image_and_empty_results() -> None:
    regions = np.ones((1, 3, 4), np.float32)
    found = run_ta(regions, np.ones((1, 4), np.float32), 10)
    assert found.ids.tolist() == [0] and found.scores.tolist() == [4.0]
    rng = np.random.default_rng(1)
    regions = rng.standard_normal((40, 5, 8)).astype(np.float32)
    frame = rng.standard_normal((1, 8)).astype(np.float32)
    found = run_ta(regions, frame, 3, fetch_k=2)  # one frame: the first fetched regions' images are the answer
    assert found.ids.tolist() == reference_topk(regions, frame, 3)[0].tolist()
    assert found.stats["scored"] <= 40
    empty = threshold_topk(lambda kk: (np.zeros((1, 0)), np.zeros((1, 0), np.int64), np.zeros(1)), lambda ids: ids, 0, 5)
    assert len(empty.ids) == 0
    with pytest.raises(VGSError):
        threshold_topk(lambda kk: None, lambda ids: ids, 3, 0)


def test_early_stopping_scores_few_images_when_the_answer_is_clear() -> None:
    rng = np.random.default_rng(2)
    regions = rng.standard_normal((2000, 4, 16)).astype(np.float32) * 0.1
    regions[123] = 1.0  # one image far above the rest
    found = run_ta(regions, np.ones((5, 16), np.float32), 1, fetch_k=16)
    assert found.ids.tolist() == [123]
    assert found.stats["scored"] < 50 and not found.stats["fallback"]


def test_codec_round_trip_and_files(tmp_path) -> None:  # noqa: ANN001
    rng = np.random.default_rng(3)
    regions = rng.standard_normal((10, 4, 12)).astype(np.float32)
    codec = RegionCodec.fit(regions.reshape(-1, 12), 12)  # dim == D: identity basis, only int8 error
    codes, errors = codec.encode(regions)
    assert codes.dtype == np.int8 and errors.dtype == np.float16 and float(errors[..., 1].max()) < 1e-3
    assert np.abs(codec.decode(codes) - regions).max() < 0.05
    codec.save(tmp_path)
    again = RegionCodec.load(tmp_path, 12)
    assert np.array_equal(again.basis, codec.basis) and np.array_equal(again.scale, codec.scale)
    assert RegionCodec.load(tmp_path / "none", 12) is None
    with pytest.raises(VGSError, match="codec.json"):
        RegionCodec.load(tmp_path, 16)  # another embedding size
    (tmp_path / "codec.json").write_text(json.dumps({"kind": "pca-int8", "dim": 10**9, "embed_dim": 12}))
    with pytest.raises(VGSError, match="dim"):
        RegionCodec.load(tmp_path, 12)


# ----------------------------------------------------------------------------- through SearchIndex


def write_index(folder, regions: np.ndarray, grid: tuple[int, int], chunk: int = 16) -> None:  # noqa: ANN001
    """An index folder in IndexWriter's layout from ``n x R x D`` regions (no model needed)."""
    meta = {"format": INDEX_FORMAT, "checkpoint": "synthetic", "checkpoint_sha256": "synthetic", "embed_dim": regions.shape[2],
            "similarity": "misa", "image_chunks": [], "caption_chunks": [], "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    for c0 in range(0, len(regions), chunk):
        part = torch.from_numpy(regions[c0: c0 + chunk])
        name = f"chunk-{len(meta['image_chunks']):05d}"
        save_npy(folder / "images" / f"{name}.regions.npy", part.numpy().astype(np.float16))
        save_npy(folder / "images" / f"{name}.pooled.npy", pooled(part, 1).numpy())
        write_json(folder / "images" / f"{name}.json", {"paths": [f"/x/{i}.jpg" for i in range(c0, c0 + len(part))], "grid": list(grid)})
        meta["image_chunks"].append(name)
    write_json(folder / "index.json", meta)


FAKE_MODEL = EmbeddingScorer("misa")  # the part of vgs.api.Model the search calls


def clustered(n: int, r: int, d: int, seed: int) -> np.ndarray:
    """Normalized regions around 12 topics (images share content, like photos do)."""
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((12, d))
    regions = topics[rng.integers(0, 12, (n, r))] + 0.6 * rng.standard_normal((n, r, d))
    return (regions / np.linalg.norm(regions, axis=2, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):  # noqa: ANN001, ANN201
    folder = tmp_path_factory.mktemp("idx")
    write_index(folder, clustered(150, 6, 24, 0), (2, 3))
    return folder


def queries(d: int, count: int, seed: int) -> list[PackedFrames]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        t = int(rng.integers(1, 20))
        frames = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((t, d)).astype(np.float32)), dim=1)
        out.append(PackedFrames(frames, torch.zeros(t, dtype=torch.long), torch.tensor([t])))
    return out


def test_search_audio_exact_equals_exhaustive(gallery) -> None:  # noqa: ANN001
    index = SearchIndex(gallery)
    for frames in queries(24, 6, 0):
        full = index.search_audio(FAKE_MODEL, frames, k=10, exhaustive=True)
        for stage in ("exact",):
            hits = index.search_audio(FAKE_MODEL, frames, k=10, first_stage=stage)
            assert [h.index for h in hits] == [h.index for h in full]
            np.testing.assert_allclose([h.score for h in hits], [h.score for h in full], rtol=1e-5)
    many = index.search_audio(FAKE_MODEL, queries(24, 1, 5)[0], k=1000)  # k > gallery: every image, best first
    assert sorted(h.index for h in many) == list(range(150))
    assert all(a.score >= b.score for a, b in zip(many, many[1:]))
    with pytest.raises(VGSError, match="first stage"):
        index.search_audio(FAKE_MODEL, queries(24, 1, 0)[0], first_stage="bogus")


def test_codes_exact_and_compact_stages(gallery, tmp_path) -> None:  # noqa: ANN001
    import shutil

    folder = tmp_path / "idx"
    shutil.copytree(gallery, folder)
    index = SearchIndex(folder)
    with pytest.raises(VGSError, match="no region codes"):
        index.search_audio(FAKE_MODEL, queries(24, 1, 0)[0], first_stage="compact")
    index.build_codes(12)  # half of D
    assert (folder / "images" / "chunk-00000.codes.npy").is_file()
    index = SearchIndex(folder)
    assert index.region_search().codec is not None and index.region_search().index("codes").dim == 14
    same = 0
    for frames in queries(24, 6, 1):
        full = [h.index for h in index.search_audio(FAKE_MODEL, frames, k=10, exhaustive=True)]
        assert [h.index for h in index.search_audio(FAKE_MODEL, frames, k=10)] == full  # exact: full regions
        same += len(set(full) & {h.index for h in index.search_audio(FAKE_MODEL, frames, k=10, first_stage="compact")})
    assert same / 60 > 0.3  # compact is approximate: it ranks by the 12-dim int8 codes
    # MISA on the codes of any ids, in any order and across chunks (the gallery's chunks hold 16 images),
    # is the codec's MISA of those images' codes gathered by hand
    regions, frames = index.region_search(), queries(24, 1, 2)[0].frames.numpy()
    every = np.concatenate([np.asarray(codes) for codes, _ in regions.codes])
    ids = np.array([149, 3, 17, 16, 15, 3, 80, 0, 148, 33])  # unsorted, a repeat, chunk edges, first and last
    for int8_query in (False, True):
        np.testing.assert_array_equal(regions.code_scores(ids, frames, int8_query), regions.codec.misa(every[ids], frames, int8_query=int8_query))
    assert regions.code_scores(np.zeros(0, dtype=np.int64), frames).shape == (0,)
    # on the leading coordinates only: the same as a codec of those coordinates on those codes
    lead = RegionCodec(regions.codec.basis[:5], regions.codec.scale[:5])
    expected = lead.misa(every[ids, :, :5], frames, int8_query=True)
    np.testing.assert_array_equal(regions.code_scores(ids, frames, True, dims=5), expected)
    assert list(regions._stored_codes._leading) == [5]  # read from their own contiguous copy, kept
    regions._stored_codes._leading.clear()
    regions.max_bytes = regions._stored_codes.leading_bytes(5) - 1  # a copy over the budget: read in place
    np.testing.assert_array_equal(regions.code_scores(ids, frames, True, dims=5), expected)
    assert not regions._stored_codes._leading
    with pytest.raises(VGSError, match="expected 1..12 dimensions, got 13"):
        regions.code_scores(ids, frames, dims=13)


def test_padded_frames_do_not_count(gallery) -> None:  # noqa: ANN001
    index = SearchIndex(gallery)
    rng = np.random.default_rng(4)
    real = torch.from_numpy(rng.standard_normal((1, 24, 7)).astype(np.float32))
    padded = torch.cat([real, 100 * torch.ones(1, 24, 5)], dim=2)  # 5 frames of loud padding
    packed = PackedFrames.from_padded(padded, torch.tensor([7]))
    plain = PackedFrames(real[0].T.contiguous(), torch.zeros(7, dtype=torch.long), torch.tensor([7]))
    a = index.search_audio(FAKE_MODEL, packed, k=5)
    b = index.search_audio(FAKE_MODEL, plain, k=5)
    c = index.search_audio(FAKE_MODEL, plain, k=5, exhaustive=True)
    assert [h.index for h in a] == [h.index for h in b] == [h.index for h in c]


def test_pooled_first_stage_still_available(gallery) -> None:  # noqa: ANN001
    index = SearchIndex(gallery)
    frames = queries(24, 1, 2)[0]
    full = index.search_audio(FAKE_MODEL, frames, k=10, exhaustive=True)
    pooled_hits = index.search_audio(FAKE_MODEL, frames, k=10, candidates=150, first_stage="pooled")
    assert [h.index for h in pooled_hits] == [h.index for h in full]  # all candidates: exact


def test_ivf_stage_and_the_memory_guard(gallery) -> None:  # noqa: ANN001
    from vgs.first_stage import RegionSearch

    index = SearchIndex(gallery)
    frames = queries(24, 1, 3)[0]
    hits = index.search_audio(FAKE_MODEL, frames, k=10, first_stage="ivf")  # approximate: only its shape is certain
    assert len(hits) == 10 and all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    small = RegionSearch(index.image_regions, max_bytes=1000)
    with pytest.raises(VGSError, match="GiB allowed"):
        small.index("flat")
    index.region_search().max_bytes = 1000  # the default stage falls back to centroids instead of failing
    assert len(index.search_audio(FAKE_MODEL, frames, k=10)) == 10


def test_auto_first_stage_is_exact_on_small_galleries_and_centroids_above(gallery, monkeypatch) -> None:  # noqa: ANN001
    import vgs.search

    index = SearchIndex(gallery)
    frames = queries(24, 1, 5)[0]
    chosen = []
    real = RegionSearch.search

    def spy(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        chosen.append("region")  # the region stages search through RegionSearch.search; centroids and pooled do not
        return real(self, *args, **kwargs)

    monkeypatch.setattr(RegionSearch, "search", spy)
    index.search_audio(FAKE_MODEL, frames, k=5)
    assert chosen  # small gallery: exact
    chosen.clear()
    monkeypatch.setattr(vgs.search, "EXACT_AUTO_MAX_IMAGES", index.image_count - 1)
    real_side = index.image_representatives
    monkeypatch.setattr(index, "image_representatives", lambda: chosen.append("centroids") or real_side())
    hits = index.search_audio(FAKE_MODEL, frames, k=5, candidates=3)
    assert chosen == ["centroids"] and len(hits) == 3  # above the limit: centroids, 3 candidates re-ranked


def test_codec_misa_is_misa_of_the_decoded_codes() -> None:
    """The chunked, scale-folded product equals MISA of the decoded codes against the projected frames, by loops."""
    rng = np.random.default_rng(5)
    regions = rng.standard_normal((7, 5, 16)).astype(np.float32)
    codec = RegionCodec.fit(regions.reshape(-1, 16), 6)
    codes, _ = codec.encode(regions)
    frames = rng.standard_normal((4, 16)).astype(np.float32)
    decoded, projected = codec.decode(codes), frames @ codec.basis.T
    naive = [np.mean([max(float(r @ q) for r in image) for q in projected]) for image in decoded]
    np.testing.assert_allclose(codec.misa(codes, frames, chunk=3), naive, rtol=1e-5, atol=1e-5)
    approx = codec.misa(codes, frames, chunk=3, int8_query=True)  # the query in int8 too: within its rounding
    np.testing.assert_allclose(approx, naive, atol=0.01 * np.abs(projected).max() * np.abs(decoded).sum(-1).max())
    assert approx.dtype == np.float64 and approx.shape == (7,)
    # dims: MISA of the first coordinates of the decoded codes against the first projected coordinates
    lead = [np.mean([max(float(r[:4] @ q[:4]) for r in image) for q in projected]) for image in decoded]
    np.testing.assert_allclose(codec.misa(codes, frames, chunk=3, dims=4), lead, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(codec.misa(codes[:, :, :4], frames, dims=4), codec.misa(codes, frames, dims=4))
    assert codec.principal and not RegionCodec.fit(regions.reshape(-1, 16), 16).principal  # identity basis at dim == D
    assert codec.leading(4) == 4 and codec.leading(6) is None and RegionCodec.fit(regions.reshape(-1, 16), 16).leading(4) is None
    with pytest.raises(VGSError, match="expected 1..6 dimensions, got 0"):
        codec.misa(codes, frames, dims=0)
