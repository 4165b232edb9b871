"""`vgs index --regions int8`: regions stored as int8 with one scale per region read back as their floats,
search like the float16 index, merge from shards unchanged, and refuse damaged or mismatched files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from test_first_stage import FAKE_MODEL
from test_shards import MODEL, photos  # noqa: F401  (the fixture)
from vgs.codecs import Int8Regions, quantize_regions
from vgs.errors import VGSError
from vgs.io import save_npy
from vgs.search import SearchIndex, build_index
from vgs.shards import build_shard, merge_shards
from vgs.similarity import PackedFrames


def tiny_model():  # noqa: ANN201
    scope: dict = {}
    exec(MODEL, scope)  # the seeded untrained model test_shards uses  # noqa: S102
    return scope["model"]


def test_int8_regions_read_as_the_floats_they_stand_for() -> None:
    rng = np.random.default_rng(0)
    regions = rng.standard_normal((5, 7, 12)).astype(np.float32) * rng.uniform(0.01, 3, (5, 7, 1)).astype(np.float32)
    regions[2, 3] = 0  # an all-zero region keeps a positive scale
    codes, scales = quantize_regions(torch.from_numpy(regions))
    assert codes.dtype == np.int8 and codes.shape == (5, 7, 12) and scales.shape == (5, 7) and (scales > 0).all()
    stored = Int8Regions(codes, scales)
    assert stored.shape == (5, 7, 12) and len(stored) == 5
    assert (np.abs(stored[:] - regions) <= scales[..., None] / 2 + 1e-7).all()  # within half a step
    np.testing.assert_allclose(np.abs(regions).max(-1), 127 * scales, rtol=1e-6, atol=1e-28)  # each region's scale is its own
    np.testing.assert_array_equal(stored[np.array([4, 1])], stored[:][[4, 1]])
    np.testing.assert_array_equal(np.asarray(stored, dtype=np.float64), stored[:].astype(np.float64))
    again, same = quantize_regions(torch.from_numpy(stored[:]))  # decoded regions quantize to the same codes
    np.testing.assert_array_equal(again, codes)
    np.testing.assert_allclose(same, scales, rtol=1e-6)


def test_an_int8_index_searches_like_the_float16_one(photos: Path, tmp_path: Path) -> None:  # noqa: F811
    model = tiny_model()
    build_index(model, tmp_path / "half", photos, progress=False, codes=8)
    build_index(model, tmp_path / "int8", photos, progress=False, codes=8, precision="int8")
    half, small = SearchIndex(tmp_path / "half"), SearchIndex(tmp_path / "int8")
    assert small.meta["region_precision"] == "int8" and small.image_paths == half.image_paths
    a, b = half.regions_of(np.arange(14)), small.regions_of(np.arange(14))  # n x D x H x W
    step = a.abs().flatten(2).amax(1) / 127  # n x R: each region's int8 step
    assert ((a - b).abs().flatten(2) <= step[:, None] / 2 + 2e-3).all()  # half a step, plus float16 rounding
    region_bytes = [sum(f.stat().st_size for f in (folder / "images").glob(f"*.{kind}.npy"))
                    for folder, kind in ((tmp_path / "half", "regions"), (tmp_path / "int8", "regions"))]
    assert region_bytes[1] < 0.6 * region_bytes[0]
    rng = np.random.default_rng(1)
    for _ in range(5):
        frames = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((6, 16)).astype(np.float32)), dim=1)
        query = PackedFrames(frames, torch.zeros(6, dtype=torch.long), torch.tensor([6]))
        for stage in ("exact", "centroids", "compact", "pooled"):
            want = half.search_audio(FAKE_MODEL, query, k=5, first_stage=stage)
            got = small.search_audio(FAKE_MODEL, query, k=5, first_stage=stage)
            assert [h.path for h in got] == [h.path for h in want], stage
            np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=0.02)
    with pytest.raises(VGSError, match="stores int8 regions, not float16"):
        build_index(model, tmp_path / "int8", photos, progress=False, precision="float16")
    build_index(model, tmp_path / "int8", photos, progress=False)  # no --regions: as the index stores them


def test_damaged_int8_files_are_refused_by_name(photos: Path, tmp_path: Path) -> None:  # noqa: F811
    build_index(tiny_model(), tmp_path / "idx", photos, progress=False, codes=0, precision="int8")
    scales = tmp_path / "idx" / "images" / "chunk-00000.scales.npy"
    good = np.load(scales)
    save_npy(scales, -good)
    with pytest.raises(VGSError, match="chunk-00000.scales.npy.*positive"):
        SearchIndex(tmp_path / "idx")
    save_npy(scales, good[:, :1])
    with pytest.raises(VGSError, match="chunk-00000.scales.npy.*corrupt"):
        SearchIndex(tmp_path / "idx")
    save_npy(scales, good)
    regions = tmp_path / "idx" / "images" / "chunk-00000.regions.npy"
    save_npy(regions, np.load(regions).astype(np.float16))
    with pytest.raises(VGSError, match="chunk-00000.regions.npy.*expected int8"):
        SearchIndex(tmp_path / "idx")
    with pytest.raises(VGSError, match="--regions"):
        build_index(tiny_model(), tmp_path / "new", photos, progress=False, precision="int4")


def test_int8_shards_merge_into_the_single_process_index(photos: Path, tmp_path: Path) -> None:  # noqa: F811
    model = tiny_model()
    for shard in (0, 1):
        build_shard(model, tmp_path / "sharded", photos, None, (shard, 2), progress=False, precision="int8")
    merge_shards(tmp_path / "sharded")
    build_index(model, tmp_path / "single", photos, progress=False, codes=0, precision="int8")
    merged, one = SearchIndex(tmp_path / "sharded"), SearchIndex(tmp_path / "single")
    assert merged.meta["region_precision"] == "int8" and merged.image_paths == one.image_paths
    shard_codes = {path: (c, s) for i in (0, 1) for path, c, s in zip(
        SearchIndex(tmp_path / "sharded" / "shards" / f"0000{i}-of-00002").image_paths,
        np.load(tmp_path / "sharded" / "shards" / f"0000{i}-of-00002" / "images" / "chunk-00000.regions.npy"),
        np.load(tmp_path / "sharded" / "shards" / f"0000{i}-of-00002" / "images" / "chunk-00000.scales.npy"))}
    codes = np.load(tmp_path / "sharded" / "images" / "chunk-00000.regions.npy")
    scales = np.load(tmp_path / "sharded" / "images" / "chunk-00000.scales.npy")
    for j, path in enumerate(merged.image_paths):  # the merge copies each shard's codes, not a re-rounding of them
        np.testing.assert_array_equal(codes[j], shard_codes[path][0])
        np.testing.assert_allclose(scales[j], shard_codes[path][1], rtol=1e-6)
    np.testing.assert_allclose(merged.regions_of(np.arange(14)).numpy(), one.regions_of(np.arange(14)).numpy(), atol=2e-2)
