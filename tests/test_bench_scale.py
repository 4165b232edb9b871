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
from vgs.search import SearchIndex  # noqa: E402


def test_labels() -> None:
    assert [bench_scale.label(n) for n in (999, 39680, 100_000, 1_000_000)] == ["999", "39680", "100k", "1m"]


def test_cascade_latency_runs_the_stage_on_a_synthetic_gallery_larger_than_the_real_one(tmp_path) -> None:  # noqa: ANN001
    write_index(tmp_path / "idx", clustered(40, 6, 24, 0), (2, 3))
    index = SearchIndex(tmp_path / "idx")
    with pytest.raises(SystemExit, match="codes"):
        bench_scale.cascade_latency(index, queries(24, 3, 0), 500, 100)
    index.build_codes(16)
    got = bench_scale.cascade_latency(index, queries(24, 3, 0), 500, 100)
    assert got["p50"] > 0 and got["p95"] >= got["p50"]
    assert np.isclose(got["gib"], 500 * (8 * 16 + 4 + 6 * 16) / 2**30)  # int8 projected centroids + scale + codes, as held
    before = bench_scale.cascade_latency(index, queries(24, 3, 0), 500, 100, precision="float32")
    assert before["p50"] > 0 and np.isclose(before["gib"], 500 * (8 * 16 * 4 + 6 * 16) / 2**30)  # float32 centroids
    with pytest.raises(SystemExit, match="precision"):
        bench_scale.cascade_latency(index, queries(24, 3, 0), 500, 100, precision="fp8")


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
    np.save(cache, np.full((2, 10), 99))  # another index's: refused
    with pytest.raises(SystemExit, match="not the top-10s"):
        bench_scale.exhaustive(index, asked, cache)


def test_bound_depths_rank_the_exhaustive_top10(tmp_path) -> None:  # noqa: ANN001
    """Every ranking of the centroid stage is measured by the depth that holds the exhaustive top-10: at
    most the gallery, at least 10, and 10 when the ranking is MISA itself (codes of every dimension)."""
    write_index(tmp_path / "idx", clustered(60, 6, 24, 0), (2, 3))
    index = SearchIndex(tmp_path / "idx")
    index.build_codes(24)
    index = SearchIndex(tmp_path / "idx")
    asked = queries(24, 4, 1)
    truth, _ = bench_scale.exhaustive(index, asked)
    depths = bench_scale.bound_depths(index, asked, truth)
    assert set(depths) == {"bound float32", "bound int8", "codes, float32 query", "codes, int8 query"}
    for name, d in depths.items():
        assert d.shape == (4,) and (d >= 10).all() and (d <= 60).all(), name
    assert (depths["codes, float32 query"] <= 11).all()  # full-dimension int8 codes: MISA up to rounding
