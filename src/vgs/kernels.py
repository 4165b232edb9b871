"""The int8 products of the search stages, fast on any x86 CPU.

Both stages that score int8 vectors (the centroid bound, :mod:`vgs.centroids`, and MISA on int8 region
codes, :meth:`vgs.codecs.RegionCodec.misa`) need "the best of a group of int8 rows against a few int8
query vectors".  ``torch._int_mm`` does that fast only where oneDNN has int8 instructions (AVX-512 VNNI
or AMX): on AVX2 CPUs it falls back to a reference loop, about 0.7 G multiply-adds a second per core,
**10-21x slower** than the float32 kernels below (docs/benchmarks.md, section 8, "int8 products on AVX2").

The kernels here are compiled by numba (a librosa dependency, so already installed) on first use.  They
multiply in float32 on integer values: every product is at most ``127^2`` and every sum of up to 1,024 of
them stays below ``2^24``, so float32 holds each sum exactly in any order and the results equal
``torch._int_mm``'s to the bit, whichever kernel a machine runs.  They release the GIL, and a call
splits its images into ``torch.get_num_threads()`` contiguous parts run side by side (1.4-1.9x on 2 AVX2
cores when the second core is free), so ``torch.set_num_threads`` governs them as it governs torch.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Callable

import numpy as np
import torch

EXACT_TERMS = 1024  # products per sum that float32 holds exactly (1,024 x 127^2 < 2^24)


def int8_instructions() -> bool:
    """Whether ``torch._int_mm`` runs on int8 matrix instructions here (AVX-512 VNNI or AMX)."""
    probe = getattr(torch.cpu, "_is_vnni_supported", None)
    return bool(probe is not None and probe())


def representative_bounds(columns: torch.Tensor, query_codes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The centroid bound before each image's scale: ``N x d x m`` int8 representatives stored as
    columns (image ``i``'s ``m`` representatives are ``columns[i, :, s]``), ``p x d`` int8 query
    centroids and their ``p`` float weights -> ``N`` float32, ``sum_j w_j max_s <x_is, q_j>``."""
    _check_terms(columns.shape[1])
    out = np.empty(len(columns), dtype=np.float32)
    table, queries, weights_ = columns.numpy(), query_codes.numpy().astype(np.float32), weights.numpy().astype(np.float32)
    _in_parts(len(out), lambda a, b: _kernels()[0](table[a:b], queries, weights_, out[a:b]))
    return torch.from_numpy(out)


def region_maxima(codes: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``n x R x d`` int8 codes and a ``T x d`` int8 query -> ``n x T`` float32: each frame's best region,
    ``max_r <c_r, q_t>`` (exact integers).  ``torch._int_mm`` where it has int8 instructions, numba
    elsewhere."""
    n, r, d = codes.shape
    _check_terms(d)
    if int8_instructions():
        products = torch._int_mm(torch.from_numpy(codes.reshape(n * r, d)), torch.from_numpy(np.ascontiguousarray(query.T)))
        return products.view(n, r, len(query)).amax(1).float().numpy()
    out = np.empty((n, len(query)), dtype=np.float32)
    frames = np.ascontiguousarray(query, dtype=np.float32)
    _in_parts(n, lambda a, b: _kernels()[1](codes[a:b], frames, out[a:b]))
    return out


def _in_parts(count: int, run: Callable[[int, int], None], smallest: int = 256) -> None:
    """``run(start, stop)`` over ``0..count`` in ``torch.get_num_threads()`` contiguous parts of at least
    ``smallest`` items, side by side on a shared pool (the kernels release the GIL)."""
    parts = max(1, min(torch.get_num_threads(), count // smallest))
    if parts == 1:
        run(0, count)
        return
    edges = np.linspace(0, count, parts + 1).round().astype(int)
    for future in [_pool().submit(run, int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]:
        future.result()


@lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="vgs-kernels")


def _check_terms(d: int) -> None:
    if d > EXACT_TERMS:
        raise ValueError(f"int8 vectors of {d} dimensions: the kernels sum at most {EXACT_TERMS} products exactly")


@lru_cache(maxsize=1)
def _kernels() -> tuple[Callable, Callable]:
    """Compiled once per process (cached on disk by numba where the package folder is writable)."""
    from numba import njit

    @njit(cache=True, fastmath=True, boundscheck=False, nogil=True)
    def bounds(columns, queries, weights, out):  # pragma: no cover - compiled
        n, d, m = columns.shape
        p = queries.shape[0]
        first = np.empty(m, dtype=np.float32)  # two query centroids at a time: m lanes each
        second = np.empty(m, dtype=np.float32)
        for i in range(n):
            total = np.float32(0.0)
            for j in range(0, p, 2):
                j2 = min(j + 1, p - 1)  # an odd last centroid is paired with itself and counted once
                first[:] = 0.0
                second[:] = 0.0
                for k in range(d):
                    q1, q2 = queries[j, k], queries[j2, k]
                    for s in range(m):
                        x = np.float32(columns[i, k, s])
                        first[s] += x * q1
                        second[s] += x * q2
                best1, best2 = first[0], second[0]
                for s in range(1, m):
                    best1, best2 = max(best1, first[s]), max(best2, second[s])
                total += weights[j] * best1 + (weights[j2] * best2 if j2 != j else np.float32(0.0))
            out[i] = total

    @njit(cache=True, fastmath=True, boundscheck=False, nogil=True)
    def maxima(codes, query, out):  # pragma: no cover - compiled
        n, r, d = codes.shape
        t_count = query.shape[0]
        rows = np.empty((4, d), dtype=np.float32)  # four regions at a time share each frame's loads
        for i in range(n):
            out[i, :] = -np.inf
            for s in range(0, r, 4):
                for u in range(4):  # a short last block repeats the last region: the max is unchanged
                    su = min(s + u, r - 1)
                    for k in range(d):
                        rows[u, k] = codes[i, su, k]
                for t in range(t_count):
                    a0 = a1 = a2 = a3 = np.float32(0.0)
                    for k in range(d):
                        q = query[t, k]
                        a0 += rows[0, k] * q
                        a1 += rows[1, k] * q
                        a2 += rows[2, k] * q
                        a3 += rows[3, k] * q
                    out[i, t] = max(out[i, t], max(max(a0, a1), max(a2, a3)))

    return bounds, maxima


__all__ = ["EXACT_TERMS", "int8_instructions", "representative_bounds", "region_maxima"]
