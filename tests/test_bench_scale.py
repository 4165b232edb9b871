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
    assert np.isclose(got["gib"], 500 * (8 * 16 * 4 + 6 * 16) / 2**30)  # projected centroids + codes, as held


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
