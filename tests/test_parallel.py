"""Chunked work split over threads (vgs.parallel), and the search stages that use it giving the same numbers
on any number of threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from vgs.centroids import Int8Representatives, lower_bounds
from vgs.codecs import RegionCodec
from vgs.errors import VGSError
from vgs.parallel import over_ranges, split_ranges


@pytest.mark.parametrize("n,chunk,parts", [(0, 4, 2), (1, 4, 2), (10, 4, 2), (16, 4, 2), (17, 4, 3), (100, 7, 5), (9, 100, 4)])
def test_ranges_cover_everything_once_on_chunk_edges(n: int, chunk: int, parts: int) -> None:
    ranges = split_ranges(n, chunk, parts)
    covered = [i for a, b in ranges for i in range(a, b)]
    assert covered == list(range(n))
    assert len(ranges) <= parts and all(b > a for a, b in ranges)
    assert all(a % chunk == 0 for a, _ in ranges)
    if n >= chunk * parts:  # as even as whole chunks allow
        sizes = [-(-(b - a) // chunk) for a, b in ranges]
        assert len(ranges) == parts and max(sizes) - min(sizes) <= 1


def test_bad_split_arguments_are_refused() -> None:
    for args in [(-1, 4, 2), (10, 0, 2), (10, 4, 0)]:
        with pytest.raises(VGSError, match="split_ranges"):
            split_ranges(*args)


def test_ranges_run_on_several_threads_and_errors_reach_the_caller() -> None:
    out = np.zeros(1000)
    names: set[str] = set()

    def work(a: int, b: int) -> None:
        names.add(threading.current_thread().name)
        out[a:b] = np.arange(a, b)

    over_ranges(work, 1000, 64, threads=3)
    assert (out == np.arange(1000)).all() and len(names) >= 2  # the caller and at least one pool thread

    def failing(a: int, b: int) -> None:
        if a > 0:
            raise ValueError("range failed")

    with pytest.raises(ValueError, match="range failed"):
        over_ranges(failing, 1000, 64, threads=2)


def test_the_int8_bound_and_the_code_scores_do_not_depend_on_the_thread_count() -> None:
    g = torch.Generator().manual_seed(0)
    table = Int8Representatives.quantize(torch.randn(5000, 16, 24, generator=g))
    frames = torch.randn(30, 24, generator=g)
    regions = torch.nn.functional.normalize(torch.randn(3000, 9, 24, generator=g), dim=-1)
    codec = RegionCodec.fit(regions.reshape(-1, 24).numpy(), 12)
    codes = codec.encode(regions.numpy())[0]
    before = torch.get_num_threads()
    try:
        got = {}
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            got[threads] = (lower_bounds(table, frames, chunk=512), codec.misa(codes, frames.numpy(), chunk=256, int8_query=True))
    finally:
        torch.set_num_threads(before)
    for threads in (2, 3):
        assert torch.equal(got[threads][0], got[1][0])
        np.testing.assert_array_equal(got[threads][1], got[1][1])


def test_a_failing_first_range_still_waits_for_the_others() -> None:
    finished: list[int] = []

    def work(a: int, b: int) -> None:
        if a == 0:
            raise ValueError("first range failed")
        threading.Event().wait(0.05)
        finished.append(a)

    with pytest.raises(ValueError, match="first range failed"):
        over_ranges(work, 300, 100, threads=3)
    assert sorted(finished) == [100, 200]  # none of them still running after the error reached the caller
