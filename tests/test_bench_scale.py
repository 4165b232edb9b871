"""benchmarks/bench_scale.py's parts that the docs' figures rest on: the in-memory cascade harness
(how ``p50_ms_1m`` is measured) and the result-key labels."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
bench_scale = pytest.importorskip("bench_scale")

from test_first_stage import clustered, queries, write_index  # noqa: E402
import vgs.centroids  # noqa: E402
import vgs.first_stage  # noqa: E402
from vgs.search import SearchIndex  # noqa: E402
from vgs.similarity import PackedFrames  # noqa: E402


def test_labels() -> None:
    assert [bench_scale.label(n) for n in (999, 39680, 100_000, 1_000_000)] == ["999", "39680", "100k", "1m"]


def test_cascade_latency_runs_the_stage_on_a_synthetic_gallery_larger_than_the_real_one(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    write_index(tmp_path / "idx", clustered(40, 6, 24, 0), (2, 3))
    index = SearchIndex(tmp_path / "idx")
    with pytest.raises(SystemExit, match="codes"):
        bench_scale.cascade_latency(index, queries(24, 3, 0), 500, 100)
    index.build_codes(16)
    got = bench_scale.cascade_latency(index, queries(24, 3, 0), 500, 100)
    assert got["p50"] > 0 and got["p95"] >= got["p50"]
    assert np.isclose(got["gib"], 500 * (6 * 24 + 4 + 6 * 16) / 2**30)  # int8 projected representatives + scale + codes, as held
    before = bench_scale.cascade_latency(index, queries(24, 3, 0), 500, 100, precision="float32")
    assert before["p50"] > 0 and np.isclose(before["gib"], 500 * (6 * 24 * 4 + 6 * 16) / 2**30)  # float32 representatives
    with pytest.raises(SystemExit, match="precision"):
        bench_scale.cascade_latency(index, queries(24, 3, 0), 500, 100, precision="fp8")
    monkeypatch.setattr(bench_scale, "CODE_LEAD_DIMS", 8)  # a first pass on the codes' 8 leading coordinates, from their own copy
    led = bench_scale.cascade_latency(index, queries(24, 3, 0), 500, 100)
    assert np.isclose(led["gib"], got["gib"] + 500 * 6 * 8 / 2**30)


def test_exhaustive_top10s_are_cached_and_extended(tmp_path) -> None:  # noqa: ANN001
    write_index(tmp_path / "idx", clustered(40, 6, 24, 0), (2, 3))
    index = SearchIndex(tmp_path / "idx")
    asked = queries(24, 5, 1)
    cache = tmp_path / "truth.npy"
    first, times = bench_scale.exhaustive(index, asked[:3], cache)
    assert len(times) == 3 and np.load(cache).shape == (3, 10)
    again, times = bench_scale.exhaustive(index, asked, cache)  # 3 read back, 2 computed
    assert len(times) == 2 and again[:3] == first and np.load(cache).shape == (5, 10)
    assert again == bench_scale.exhaustive(index, asked)[0]
    batched, times = bench_scale.exhaustive(index, asked, timed=2)  # 2 timed one by one, 3 in one pass
    assert len(times) == 2 and batched == again
    assert bench_scale.exhaustive_top10(index, asked, chunk=7) == again  # chunks of images across the gallery
    np.save(cache, np.full((2, 10), 99))  # another index's: refused
    with pytest.raises(SystemExit, match="not the top-10s"):
        bench_scale.exhaustive(index, asked, cache)


def test_bound_depths_rank_the_exhaustive_top10(tmp_path) -> None:  # noqa: ANN001
    """Every ranking of the centroid stage is measured by the depth that holds the exhaustive top-10: at
    most the gallery, at least 10, and 10 when the ranking is MISA itself (codes of every dimension)."""
    write_index(tmp_path / "idx", clustered(60, 6, 24, 0), (2, 3))
    index = SearchIndex(tmp_path / "idx")
    asked = queries(24, 4, 1)
    truth, _ = bench_scale.exhaustive(index, asked)
    bounds = {"bound float32", "bound int8", "bound int8, first 16 dims"}  # 24 projected dimensions: a first pass
    assert set(bench_scale.bound_depths(index, asked, truth)) == bounds  # no codes: no code rankings
    index.build_codes(24)
    index = SearchIndex(tmp_path / "idx")
    depths = bench_scale.bound_depths(index, asked, truth)
    assert set(depths) == bounds | {"codes, float32 query", "codes, int8 query"}  # 24-dimension codes: no lead
    for name, d in depths.items():
        assert d.shape == (4,) and (d >= 10).all() and (d <= 60).all(), name
    assert (depths["codes, float32 query"] <= 11).all()  # full-dimension int8 codes: MISA up to rounding
    write_index(tmp_path / "wide", clustered(60, 6, 80, 0), (2, 3))
    SearchIndex(tmp_path / "wide").build_codes(72)
    wide = SearchIndex(tmp_path / "wide")
    truth, _ = bench_scale.exhaustive(wide, queries(80, 4, 1))
    depths = bench_scale.bound_depths(wide, queries(80, 4, 1), truth)
    lead = depths[f"codes, first {bench_scale.CODE_LEAD_DIMS} dims, int8 query"]
    assert (lead >= 10).all() and (lead <= 60).all()


def test_derived_indexes_hold_the_source_at_another_precision_or_projected(tmp_path) -> None:  # noqa: ANN001
    """scale_data.derive_index: the int8 copy reads back as the source within half an int8 step per region, and a
    projection gives normalize(P x) for every region and caption frame (what a model with P after its head gives)."""
    import json

    import torch
    from scale_data import derive_index
    from test_first_stage import write_index as write

    from vgs.io import save_npy, write_json

    write(tmp_path / "src", clustered(30, 6, 24, 0), (2, 3))
    spoken = PackedFrames.cat(queries(24, 3, 2))  # three captions, in one chunk as IndexWriter writes them
    save_npy(tmp_path / "src" / "captions" / "chunk-00000.frames.npy", spoken.frames.numpy().astype(np.float16))
    save_npy(tmp_path / "src" / "captions" / "chunk-00000.lengths.npy", spoken.lengths.numpy())
    save_npy(tmp_path / "src" / "captions" / "chunk-00000.pooled.npy", np.zeros((3, 24), np.float32))
    write_json(tmp_path / "src" / "captions" / "chunk-00000.json", {"ids": list("abc"), "texts": list("abc"),
                                                                   "audio": list("abc"), "images": list("abc")})
    meta = json.loads((tmp_path / "src" / "index.json").read_text())
    write_json(tmp_path / "src" / "index.json", {**meta, "caption_chunks": ["chunk-00000"]})
    source = SearchIndex(tmp_path / "src")
    derive_index(tmp_path / "src", tmp_path / "int8")
    copy = SearchIndex(tmp_path / "int8")
    assert copy.meta["region_precision"] == "int8" and copy.image_paths == source.image_paths
    a, b = source.regions_of(np.arange(30)), copy.regions_of(np.arange(30))
    assert ((a - b).abs().flatten(2) <= a.abs().flatten(2).amax(1, keepdim=True) / 254 + 1e-6).all()
    projection = torch.nn.functional.normalize(torch.randn(8, 24, generator=torch.Generator().manual_seed(0)), dim=1)
    derive_index(tmp_path / "src", tmp_path / "proj", "float16", projection)
    small = SearchIndex(tmp_path / "proj")
    assert small.meta["embed_dim"] == 8 and small.caption_count == source.caption_count
    want = torch.nn.functional.normalize(torch.einsum("kd,ndhw->nkhw", projection, a), dim=1)
    np.testing.assert_allclose(small.regions_of(np.arange(30)).numpy(), want.numpy(), atol=2e-3)
    frames = torch.nn.functional.normalize(source.caption_frames @ projection.T, dim=1)
    np.testing.assert_allclose(small.caption_frames.numpy(), frames.numpy(), atol=2e-3)


def test_a_real_index_without_the_data_sets_caches_encodes_the_files_and_computes_the_features(
        tiny_scenes, tiny_run, tmp_path) -> None:  # noqa: ANN001
    """scale_data.build_real_index on a copy of a data set without its caches (a set built with --no-features, or
    never trained on here): the images are encoded from their files and the captions' features computed once,
    and the index equals the one built from the caches (the trunk cache holds float16, hence the tolerance)."""
    import shutil

    from scale_data import build_real_index

    bare = tmp_path / "bare"
    shutil.copytree(tiny_scenes, bare, ignore=shutil.ignore_patterns("cache"), symlinks=True)
    build_real_index(tiny_scenes, str(tiny_run), tmp_path / "cached", "dev", images=12, captions=15)
    build_real_index(bare, str(tiny_run), tmp_path / "files", "dev", images=12, captions=15)
    assert list((bare / "cache").glob("*/dev.ids.json")), "the captions' features are kept in the data set"
    cached, files = SearchIndex(tmp_path / "cached"), SearchIndex(tmp_path / "files")
    assert [Path(p).name for p in files.image_paths] == [Path(p).name for p in cached.image_paths]
    assert len(files.image_paths) == 12 and files.caption_count == 15
    np.testing.assert_allclose(files.regions_of(np.arange(12)).numpy(), cached.regions_of(np.arange(12)).numpy(), atol=2e-3)
    np.testing.assert_array_equal(files.caption_frames.numpy(), cached.caption_frames.numpy())


def test_a_fitted_projection_is_kept_and_read_back_on_a_rerun(tmp_path) -> None:  # noqa: ANN001
    """scale_data.fitted_projection: a rerun reads the kept projection (no model is loaded: the run named does not
    exist) rather than fitting it again."""
    import torch
    from safetensors.torch import save_file
    from scale_data import fitted_projection

    kept = torch.randn(4, 12, generator=torch.Generator().manual_seed(1))
    save_file({"weight": kept}, str(tmp_path / "projection.safetensors"))
    got = fitted_projection(str(tmp_path / "no-such-run"), tmp_path / "no-such-data", 4, tmp_path / "projection.safetensors")
    assert torch.equal(got, kept)


def test_centroid_variants_profile_and_ivf_probe_run_on_a_small_gallery(tmp_path, capsys, monkeypatch) -> None:  # noqa: ANN001
    """The probes behind docs/benchmarks.md's "Where the centroid stage's time goes" and "Leading 32 coordinates":
    the step timings per thread count, the codes' leading widths side by side, their own copy against reading in
    place (the same top-10s; the copy kept, the budget restored), and the inverted-file shortlist against the full bound (the full bound always keeps
    an exhaustive top-10 that fits in its candidates; a shortlist never holds more images than the gallery)."""
    variants = pytest.importorskip("centroid_variants")
    write_index(tmp_path / "idx", clustered(60, 6, 24, 0), (2, 3))
    index = SearchIndex(tmp_path / "idx")
    asked = queries(24, 3, 1)
    with pytest.raises(SystemExit, match="codes"):
        variants.profile(index, asked, 20)
    index.build_codes(16)
    index = SearchIndex(tmp_path / "idx")
    timings = variants.profile(index, asked, 20, rounds=1)
    assert set(timings) == {1, 2} and all(len(rows) == 3 and all(len(r) == 5 for r in rows) for rows in timings.values())
    assert all(abs(sum(r[:4]) - r[4]) < 1e-3 for rows in timings.values() for r in rows)  # the steps add up to the total
    truth = np.asarray(bench_scale.exhaustive(index, asked)[0])
    default = vgs.centroids.CODE_LEAD_DIMS
    variants.leads(index, asked, truth, [16, 8], 80)  # every image a candidate: every top-10 held
    lines = capsys.readouterr().out.splitlines()[-2:]
    assert [line.split()[0] for line in lines] == ["16", "8"] and all("agreement@10 1.000" in line for line in lines)
    assert vgs.centroids.CODE_LEAD_DIMS == default  # the constant restored
    monkeypatch.setattr(vgs.centroids, "CODE_LEAD_DIMS", 8)  # below the codes' 16: the stage's first pass reads its copy or in place
    timed = variants.leading_copy(index, asked, truth, 80, rounds=1)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["own copy", "in place", "per query, own copy / in place"]
    assert all("agreement@10 1.000" in line for line in lines[:2]) and all(len(t) == 3 for t in timed.values())
    assert list(index.region_search()._stored_codes._leading) == [8]
    assert index.region_search().max_bytes == vgs.first_stage.MAX_INDEX_BYTES  # the budget restored
    got = variants.ivf(index, asked, truth, 80)  # more candidates than images: every image kept
    assert [ok for ok, _, _ in got["full bound"]] == [True] * 3 and len(got) == 7
    assert all(0 < held <= 60 for rows in got.values() for _, _, held in rows)
