"""Chunked tensor work split over the threads torch may use.

The search stages loop over chunks of images small enough to stay in cache (:data:`vgs.centroids.BOUND_CHUNK`);
each chunk's products are too small for torch's own intra-op threads to split.  :func:`over_ranges` cuts the
loop into one contiguous range per thread and runs them on a shared pool: torch kernels release the GIL, so
the ranges run in parallel.  One owner for that decision: the stages call it, none keeps a pool of its own.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Callable

import torch

from .errors import VGSError

_POOLS: dict[int, ThreadPoolExecutor] = {}  # by worker count; shared by every caller (a server's queries too)
_POOLS_LOCK = threading.Lock()


def split_ranges(n: int, chunk: int, parts: int) -> list[tuple[int, int]]:
    """``range(n)`` cut into at most ``parts`` contiguous ``(start, stop)`` ranges, each a whole number of
    ``chunk``s (but the last), as even as that allows; ``[]`` when ``n == 0``."""
    if n < 0 or chunk < 1 or parts < 1:
        raise VGSError(f"split_ranges: expected n >= 0, chunk >= 1 and parts >= 1, got {n}, {chunk}, {parts}")
    chunks = -(-n // chunk)
    parts = min(parts, chunks)
    edges = [min(n, (chunks * i // parts) * chunk) for i in range(parts + 1)] if parts else []
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]


def over_ranges(work: Callable[[int, int], None], n: int, chunk: int, threads: int | None = None) -> None:
    """Call ``work(start, stop)`` over ``range(n)`` cut by :func:`split_ranges` into one range per thread
    (``threads``: :func:`torch.get_num_threads` by default), in parallel; ``work`` must write disjoint
    outputs.  One range runs on the calling thread; an exception in any range is raised here."""
    threads = torch.get_num_threads() if threads is None else threads
    ranges = split_ranges(n, chunk, max(1, threads))
    if len(ranges) <= 1:
        for start, stop in ranges:
            work(start, stop)
        return
    with _POOLS_LOCK:
        pool = _POOLS.get(len(ranges) - 1)
        if pool is None:
            pool = _POOLS[len(ranges) - 1] = ThreadPoolExecutor(len(ranges) - 1, thread_name_prefix="vgs-range")
    futures = [pool.submit(work, start, stop) for start, stop in ranges[1:]]
    try:
        work(*ranges[0])
    finally:
        wait(futures)  # no range still writing after this returns or raises
    for future in futures:
        future.result()


__all__ = ["split_ranges", "over_ranges"]
