"""The int8 products of the search stages, fast on any x86 CPU.

Both stages that score int8 vectors (the centroid bound, :mod:`vgs.centroids`, and MISA on int8 region
codes, :meth:`vgs.codecs.RegionCodec.misa`) need "the best of a group of int8 rows against a few int8
query vectors".  ``torch._int_mm`` is not used: on AVX2 CPUs it falls back to a reference loop, about
0.7 G multiply-adds a second per core, 20-28x slower than the float32 kernels here (docs/benchmarks.md,
section 8, "int8 products on AVX2"), and with AVX-512 VNNI (2-core AMD EPYC, Zen 4) the kernel below
reading the codes in place was level with a gathered copy through it on all 128 coordinates (0.97-1.13x)
and 1.6-2.0x faster on the 32 leading ones the search reads first ("int8 products with VNNI").

The kernels multiply in float32 on integer values: every product is at most ``127^2`` and every sum of
up to 1,024 of them stays below ``2^24``, so float32 holds each sum exactly in any order and the results
are the exact integer products, on every machine.

- :func:`representative_bounds` is LLVM IR written with ``llvmlite`` (the compiler library under numba,
  so already installed) and compiled for this CPU on first use: 16 representatives a vector and four
  query centroids at a time, the accumulators in registers.  numba's own compile of the same loops was
  left scalar by LLVM's vectorizer (it cannot prove the accumulators do not alias the table): the
  explicit vectors are 3.1x faster on one AVX2 core (17.5 against 54.5 ms over 100,000 images of 32 x 32).
  With AVX-512 VNNI the bound's first pass reads :class:`PackedRepresentatives` instead
  (:func:`prepared_representatives`): ``vpdpbusd`` sums four int8 products a lane in one instruction, in
  int32, with no conversion to float; the same bounds bit for bit, 4.9x faster over a million images of
  16 x 32 on one Zen 4 core (docs/benchmarks.md, section 8, "The first pass in VNNI").
- :func:`region_maxima` is LLVM IR in the same way, the frames as the vector lanes and four regions at
  a time: 1.03-1.4x numba's compile of the same loops, which vectorized along the dimensions and summed
  each product horizontally (docs/benchmarks.md, section 8, "Two passes").  It reads the images in place
  (:class:`StoredRows`: an index's memory-mapped chunks, no gathered copy), and also float16 regions, in
  float32: the search's exact re-rank (:mod:`vgs.similarity`).  With AVX-512 VNNI, int8 codes go through
  :func:`_maxima_vnni_ir` instead: the same integers, 1.6-2.0x faster (section 8, "The first pass in VNNI").

Both release the GIL, and a call splits its images into ``torch.get_num_threads()`` contiguous parts run
side by side (1.4-1.9x on 2 AVX2 cores when the second core is free), so ``torch.set_num_threads``
governs them as it governs torch.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
import torch

from .io import gather_rows

EXACT_TERMS = 1024  # products per sum that float32 holds exactly (1,024 x 127^2 < 2^24)
BOUND_LANES = 16  # representatives per vector in the bound's kernel
BOUND_CENTROIDS = 4  # query centroids per pass over an image's representatives
MAXIMA_LANES = 8  # frames per vector in the codes' kernel
MAXIMA_REGIONS = 4  # regions per pass in the codes' kernel


def representative_bounds(columns: "torch.Tensor | PackedRepresentatives", query_codes: torch.Tensor, weights: torch.Tensor,
                          image_scales: torch.Tensor | None = None, rows: np.ndarray | None = None) -> torch.Tensor:
    """The centroid bound: ``N x d x m`` int8 representatives stored as columns (image ``i``'s ``m``
    representatives are ``columns[i, :, s]``), ``p x d`` int8 query centroids, their ``p`` float weights and
    optionally ``N`` image scales ``c_i`` -> ``N`` float32, ``c_i sum_j w_j max_s <x_is, q_j>``.

    ``rows`` (``n`` image indices): the bounds of those images only, ``n`` float32, read in place (a
    copy of 12,000 images' rows cost twice the bound over them, docs/benchmarks.md, section 8).

    The scales are applied in the kernel, not by a torch op over the ``N`` values: a torch op that large
    runs on torch's OpenMP threads, which then spin for milliseconds and share a core with the next
    kernel's second thread (the bound over 100,000 images on 2 threads: 11 ms alone, 15-19 ms right after
    a 100,000-element torch multiply or any torch product).  With one thread it makes no difference.

    ``columns`` may be :class:`PackedRepresentatives` (:func:`prepared_representatives` on a VNNI CPU): the
    same bounds, bit for bit, from the integer kernel (``rows`` not supported there)."""
    if isinstance(columns, PackedRepresentatives):
        if rows is not None:
            raise ValueError("the bound: packed representatives are read whole, not by rows")
        return _packed_bounds(columns, query_codes, weights, image_scales)
    if columns.dtype != torch.int8 or columns.ndim != 3:
        raise ValueError(f"the bound: expected N x d x m int8 representatives, got {columns.dtype} of shape {tuple(columns.shape)}")
    n, d, m = columns.shape
    _check_terms(d)
    if m == 0:
        raise ValueError("the bound needs at least one representative per image")
    if query_codes.ndim != 2 or query_codes.shape[1] != d or len(weights) != len(query_codes):
        raise ValueError(f"the bound: expected p x {d} query centroids and p weights for representatives of {d} "
                         f"dimensions, got {tuple(query_codes.shape)} and {len(weights)}")
    if rows is not None:
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        if rows.ndim != 1 or (len(rows) and not 0 <= int(rows.min()) <= int(rows.max()) < n):
            raise ValueError(f"the bound: expected image indices in 0..{n - 1}, got shape {rows.shape}")
    out = np.empty(n if rows is None else len(rows), dtype=np.float32)
    if len(out) == 0:
        return torch.from_numpy(out)
    groups = -(-len(query_codes) // BOUND_CENTROIDS)  # centroids padded to whole groups with zero weights
    queries = np.zeros((groups * BOUND_CENTROIDS, d), dtype=np.float32)
    queries[: len(query_codes)] = query_codes.numpy()
    weights_ = np.zeros(len(queries), dtype=np.float32)
    weights_[: len(weights)] = weights.numpy()
    table = np.ascontiguousarray(columns.numpy())
    scales = np.ones(n, dtype=np.float32) if image_scales is None else np.ascontiguousarray(image_scales.numpy(), dtype=np.float32)
    if scales.shape != (n,):
        raise ValueError(f"image scales: expected {n}, got shape {scales.shape}")
    kernel = _bounds_kernel(d, m, indexed=rows is not None)

    def run(a: int, b: int) -> None:  # bounds a..b; the kernel's image 0 is the table's image a unless indexed
        first = a if rows is None else 0
        kernel(table[first:].ctypes.data, b - a, d, m, queries.ctypes.data, len(queries), weights_.ctypes.data,
               scales[first:].ctypes.data, out[a:b].ctypes.data, None if rows is None else rows[a:b].ctypes.data)
    _in_parts(len(out), run)
    return torch.from_numpy(out)


@dataclass(frozen=True)
class PackedRepresentatives:
    """``N x d x m`` int8 representatives laid out for the VNNI bound (:func:`prepared_representatives`):
    ``data`` ``N x g x m' x 4`` uint8, ``g = ceil(d / 4)`` groups of four coordinates, each representative's
    four as one 32-bit word (what ``vpdpbusd`` multiplies and sums in one lane), the values offset by 128
    (``x + 128``, unsigned as the instruction wants: the kernel subtracts ``128 sum_k q_k`` from each
    product).  Coordinates are padded with zeros (``128``) to whole groups and representatives to whole
    vectors of :data:`BOUND_LANES` by repeating the last one (the max is unchanged).  The same bytes a
    representative as ``columns`` (``d x m`` an image when both divide)."""

    data: np.ndarray
    dims: int
    representatives: int

    CHUNK = 65536  # images packed at a time (bounds the temporaries)

    @classmethod
    def of(cls, columns: torch.Tensor) -> "PackedRepresentatives":
        """From ``N x d x m`` int8 columns (:class:`vgs.centroids.Int8Representatives` layout)."""
        if columns.dtype != torch.int8 or columns.ndim != 3 or columns.shape[2] == 0:
            raise ValueError(f"packing: expected N x d x m int8 representatives, got {columns.dtype} of shape {tuple(columns.shape)}")
        n, d, m = columns.shape
        _check_terms(d)
        groups, width = -(-d // 4), -(-m // BOUND_LANES) * BOUND_LANES
        data = np.empty((n, groups, width, 4), dtype=np.uint8)
        source = columns.numpy()
        padded = np.zeros((min(n, cls.CHUNK), groups * 4, width), dtype=np.int8)
        for a in range(0, n, cls.CHUNK):
            part, block = source[a: a + cls.CHUNK], padded[: len(source[a: a + cls.CHUNK])]
            block[:, :d, :m] = part
            block[:, :d, m:] = part[:, :, m - 1: m]
            block[:, d:] = 0
            words = block.reshape(len(block), groups, 4, width).transpose(0, 1, 3, 2)  # n x g x m' x 4
            np.bitwise_xor(words.view(np.uint8), np.uint8(0x80), out=data[a: a + len(block)])  # x + 128
        return cls(data, d, m)

    def __len__(self) -> int:
        return len(self.data)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``N x d x m``, the representatives' shape before packing."""
        return len(self.data), self.dims, self.representatives

    def unpacked(self) -> torch.Tensor:
        """The ``N x d x m`` int8 columns again (for tests and checks)."""
        n, groups, width, _ = self.data.shape
        words = (self.data ^ np.uint8(0x80)).view(np.int8).transpose(0, 1, 3, 2)  # n x g x 4 x m'
        return torch.from_numpy(np.ascontiguousarray(words.reshape(n, groups * 4, width)[:, : self.dims, : self.representatives]))


@lru_cache(maxsize=1)
def has_vnni() -> bool:
    """Whether this CPU has AVX-512 VNNI (``vpdpbusd``: 64 int8 products summed into 16 int32 lanes in one
    instruction), which :func:`prepared_representatives` then packs for.  ``VGS_NO_VNNI=1`` says no (for
    benchmarks and tests of the float32 kernel)."""
    import llvmlite.binding as llvm

    if os.environ.get("VGS_NO_VNNI") == "1" or not llvm.get_process_triple().startswith("x86_64"):
        return False
    _host_machine()
    try:
        features = set(llvm.get_host_cpu_features().flatten().split(","))
    except RuntimeError:
        return False
    return {"+avx512f", "+avx512bw", "+avx512vnni"} <= features


def prepared_representatives(columns: torch.Tensor) -> "torch.Tensor | PackedRepresentatives":
    """``N x d x m`` int8 representatives in the layout this CPU's fastest bound reads, for a table that
    :func:`representative_bounds` will read whole many times: :class:`PackedRepresentatives` with AVX-512
    VNNI (a million images of 16 x 32 on one Zen 4 core: see docs/benchmarks.md, section 8, "The first
    pass in VNNI"), else the columns themselves, contiguous."""
    return PackedRepresentatives.of(columns) if has_vnni() else columns.contiguous()


def _packed_bounds(table: PackedRepresentatives, query_codes: torch.Tensor, weights: torch.Tensor,
                   image_scales: torch.Tensor | None) -> torch.Tensor:
    """:func:`representative_bounds` on packed representatives: ``p x d`` int8 query centroids -> ``N`` float32."""
    n, d, m = table.shape
    if query_codes.dtype != torch.int8 or query_codes.ndim != 2 or query_codes.shape[1] != d or len(weights) != len(query_codes):
        raise ValueError(f"the bound: expected p x {d} int8 query centroids and p weights for representatives of {d} "
                         f"dimensions, got {tuple(query_codes.shape)} and {len(weights)}")
    groups, width = table.data.shape[1:3]
    count = -(-len(query_codes) // BOUND_CENTROIDS) * BOUND_CENTROIDS  # padded with zero centroids and weights
    queries = np.zeros((count, groups * 4), dtype=np.int8)
    queries[: len(query_codes), :d] = query_codes.numpy()
    corrections = (128 * queries.astype(np.int32).sum(1)).astype(np.int32)  # <x + 128, q> - <x, q>
    words = np.ascontiguousarray(queries).view(np.int32)  # count x g: each group's four coordinates as one word
    weights_ = np.zeros(count, dtype=np.float32)
    weights_[: len(weights)] = weights.numpy()
    scales = np.ones(n, dtype=np.float32) if image_scales is None else np.ascontiguousarray(image_scales.numpy(), dtype=np.float32)
    if scales.shape != (n,):
        raise ValueError(f"image scales: expected {n}, got shape {scales.shape}")
    out = np.empty(n, dtype=np.float32)
    if n == 0:
        return torch.from_numpy(out)
    kernel = _packed_kernel(groups, width // BOUND_LANES)

    def run(a: int, b: int) -> None:
        kernel(table.data[a:].ctypes.data, b - a, groups, width // BOUND_LANES, words.ctypes.data, count,
               corrections.ctypes.data, weights_.ctypes.data, scales[a:].ctypes.data, out[a:b].ctypes.data)
    _in_parts(n, run)
    return torch.from_numpy(out)


class StoredArrays:
    """The concatenation of ``parts`` (each ``n_c x R x D``, every image's ``R x D`` block C-contiguous: an
    index's memory-mapped chunk files), checked once, with each part's first image (``offsets``, then the
    total) and address: what :func:`region_maxima` reads in place through :meth:`rows`."""

    def __init__(self, parts: Sequence[np.ndarray]):
        first = parts[0] if len(parts) else None
        if first is None or first.ndim != 3 or any(
                p.dtype != first.dtype or p.ndim != 3 or p.shape[1:] != first.shape[1:] or not _images_contiguous(p)
                for p in parts):
            raise ValueError("stored arrays: expected at least one part, each n x R x D with C-contiguous images, "
                             "of one dtype and R x D")
        self.parts, self.dtype = list(parts), first.dtype
        self.regions, self.width = int(first.shape[1]), int(first.shape[2])
        self.offsets = np.cumsum([0] + [len(p) for p in parts]).astype(np.int64)
        self._bases = np.array([p.ctypes.data for p in parts], dtype=np.int64)
        self._steps = np.array([p.strides[0] for p in parts], dtype=np.int64)
        self._leading: dict[int, StoredArrays] = {}
        self._leading_lock = threading.Lock()

    @classmethod
    def of(cls, array: np.ndarray) -> "StoredArrays":
        """One ``n x R x D`` array (copied first unless its images are C-contiguous)."""
        return cls([array if array.ndim != 3 or _images_contiguous(array) else np.ascontiguousarray(array)])

    def rows(self, ids: np.ndarray, dims: int | None = None) -> "StoredRows":
        """Images ``ids`` on their first ``dims`` coordinates (all ``D`` by default)."""
        ids = np.asarray(ids, dtype=np.int64)
        dims = self.width if dims is None else dims
        if not 1 <= dims <= self.width or len(ids) and not (0 <= int(ids.min()) and int(ids.max()) < int(self.offsets[-1])):
            raise ValueError(f"stored rows: expected ids in 0..{int(self.offsets[-1]) - 1} and 1..{self.width} dims, "
                             f"got dims {dims}")
        return StoredRows(self, ids, dims)

    def leading(self, dims: int) -> "StoredArrays":
        """The first ``dims`` coordinates of every image, copied once into contiguous ``n_c x R x dims`` parts
        and kept (``R * dims`` bytes an image for int8): a pass over a few thousand scattered images on a few
        leading coordinates then reads each image as one run of memory instead of ``R`` rows a stride
        apart, one cache line each (3,000 scenes images' first 32 of 128 coordinates: 10 against 22 ms,
        docs/benchmarks.md, section 8, "The codes' leading coordinates as their own copy").  Itself when
        ``dims`` is every coordinate."""
        if not 1 <= dims <= self.width:
            raise ValueError(f"stored arrays: expected 1..{self.width} leading dims, got {dims}")
        if dims == self.width:
            return self
        with self._leading_lock:  # concurrent first queries copy once
            if dims not in self._leading:
                self._leading[dims] = StoredArrays([np.ascontiguousarray(p[:, :, :dims]) for p in self.parts])
            return self._leading[dims]

    def leading_bytes(self, dims: int) -> int:
        """The memory :meth:`leading` holds for ``dims`` coordinates."""
        return int(self.offsets[-1]) * self.regions * min(dims, self.width) * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        """The parts' bytes."""
        return self.leading_bytes(self.width)

    def addresses(self, ids: np.ndarray) -> np.ndarray:
        """Each image's first element in memory: ``n`` int64."""
        part = np.searchsorted(self.offsets, ids, side="right") - 1
        return self._bases[part] + (ids - self.offsets[part]) * self._steps[part]


def _images_contiguous(array: np.ndarray) -> bool:
    """Whether each image's ``R x D`` block of an ``n x R x D`` array is C-contiguous (always, when empty)."""
    return not array.size or (array.strides[2] == array.itemsize and array.strides[1] == array.shape[2] * array.itemsize)


@dataclass(frozen=True)
class StoredRows:
    """Images ``ids`` of :class:`StoredArrays` on their first ``dims`` coordinates (:meth:`StoredArrays.rows`)."""

    arrays: StoredArrays
    ids: np.ndarray
    dims: int

    @property
    def dtype(self) -> np.dtype:
        return self.arrays.dtype

    @property
    def shape(self) -> tuple[int, int, int]:
        """``n x R x dims``."""
        return len(self.ids), self.arrays.regions, self.dims

    def gather(self) -> np.ndarray:
        """The rows as one ``n x R x dims`` array (a copy)."""
        return gather_rows([p[:, :, : self.dims] for p in self.arrays.parts], self.arrays.offsets, self.ids,
                           np.empty(self.shape, dtype=self.dtype))


def region_maxima(codes: np.ndarray | StoredRows, query: np.ndarray, vnni: bool | None = None) -> np.ndarray:
    """Each frame's best region, ``max_r <c_r, q_t>``: ``n x R x d`` regions (an array, or :class:`StoredRows`
    read in place) and a ``T x d`` query -> ``n x T`` float32.

    int8 codes with an int8 query: exact integers, from the VNNI kernel (:func:`_maxima_vnni_ir`) where
    the CPU has AVX-512 VNNI and ``d`` is a multiple of 4, else from the float32 one (:func:`_maxima_ir`,
    which also takes a float query: products in float32);
    ``vnni=False`` forces the float32 one (for comparisons).  float16 regions (as an index stores them) with
    a float query: the float32 kernel reading float16 (:func:`float16_regions`), products and sums in float32.
    """
    if isinstance(codes, np.ndarray) and codes.ndim == 3:
        codes = StoredArrays.of(codes).rows(np.arange(len(codes)))
    if not isinstance(codes, StoredRows) or codes.dtype not in (np.int8, np.float16) or query.ndim != 2 \
            or query.shape[1] != codes.shape[2]:
        raise ValueError(f"region maxima: expected n x R x d int8 codes or float16 regions and a T x d query, got "
                         f"{getattr(codes, 'dtype', type(codes))} of shape {getattr(codes, 'shape', None)} and {query.shape}")
    n, r, d = codes.shape
    if codes.dtype == np.float16 and not float16_regions():
        raise ValueError("region maxima: this CPU has no float16 conversion instructions (F16C)")
    if codes.dtype == np.int8:
        _check_terms(d)
        if d % 4 == 0 and query.dtype == np.int8 and vnni is not False and has_vnni():
            return _vnni_maxima(codes, query)
    t = len(query)
    padded = -(-t // MAXIMA_LANES) * MAXIMA_LANES  # frames padded with zeros to whole vectors
    frames = np.zeros((d, padded), dtype=np.float32)  # d x T': the frames' k-th coordinates in row k
    frames[:, :t] = query.T
    out = np.empty((n, padded), dtype=np.float32)
    if n == 0 or t == 0:
        return out[:, :t]
    addresses, stride = codes.arrays.addresses(codes.ids), codes.arrays.width
    kernel = _maxima_kernel(codes.dtype.name)

    def run(a: int, b: int) -> None:
        scratch = np.empty(MAXIMA_REGIONS * d, dtype=np.float32)  # the block's regions in float32
        kernel(addresses[a:b].ctypes.data, b - a, r, d, stride, frames.ctypes.data, padded, scratch.ctypes.data,
               out[a:b].ctypes.data)
    _in_parts(n, run)
    return out[:, :t]


def _vnni_maxima(codes: StoredRows, query: np.ndarray) -> np.ndarray:
    """:func:`region_maxima` of int8 codes (``d`` a multiple of 4) with AVX-512 VNNI (:func:`_maxima_vnni_ir`)."""
    n, r, d = codes.shape
    t = len(query)
    vectors = -(-t // BOUND_LANES)
    padded = np.zeros((vectors * BOUND_LANES, d), dtype=np.int8)  # frames padded with zeros to whole vectors
    padded[:t] = query
    words = (padded.view(np.uint8) ^ np.uint8(0x80)).reshape(vectors, BOUND_LANES, d // 4, 4)  # q + 128
    frames = np.ascontiguousarray(words.transpose(2, 0, 1, 3))  # d/4 x V x 16 x 4
    out = np.empty((n, vectors * BOUND_LANES), dtype=np.int32)
    if n == 0 or t == 0:
        return out[:, :t].astype(np.float32)
    addresses, stride = codes.arrays.addresses(codes.ids), codes.arrays.width
    kernel = _maxima_vnni_kernel()

    def run(a: int, b: int) -> None:
        kernel(addresses[a:b].ctypes.data, b - a, r, d, stride, frames.ctypes.data, vectors, out[a:b].ctypes.data)
    _in_parts(n, run)
    return out[:, :t].astype(np.float32)


@lru_cache(maxsize=1)
def float16_regions() -> bool:
    """Whether :func:`region_maxima` reads float16 regions here: LLVM converts them with single instructions
    (x86 F16C, or any other architecture, which converts natively), never with a library call."""
    import llvmlite.binding as llvm

    if not llvm.get_process_triple().startswith(("x86_64", "i686", "i386")):
        return True
    _host_machine()  # initializes LLVM's native target
    try:
        return "+f16c" in llvm.get_host_cpu_features().flatten().split(",")
    except RuntimeError:
        return False


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


def _bounds_kernel(d: int, m: int, indexed: bool = False) -> Callable[..., None]:
    """The bound's kernel for ``d x m`` representatives (``indexed``: of the images a list of indices names),
    compiled once per process for each of the first :data:`SPECIALIZED_SHAPES` shapes a process uses and
    once for any other (a lock keeps concurrent first queries to one compile)."""
    with _COMPILE_LOCK:
        if (d, m) in _SPECIALIZED or len(_SPECIALIZED) < SPECIALIZED_SHAPES:
            _SPECIALIZED.add((d, m))
            return _compile_bounds(d, m, indexed)
        return _compile_bounds(None, None, indexed)


_COMPILE_LOCK = threading.Lock()
SPECIALIZED_SHAPES = 8  # representative shapes (d x m) compiled with d and m as constants, per process
_SPECIALIZED: set[tuple[int, int]] = set()


@lru_cache(maxsize=None)
def _compile_bounds(d: int | None, m: int | None, indexed: bool = False) -> Callable[..., None]:
    """The bound's kernel (:func:`_bounds_ir`, ``d`` and ``m`` constants when given) compiled for this CPU,
    as a ctypes function: arguments
    ``(columns, n, d, m, queries, p, weights, scales, out, rows)``, pointers to ``N x d x m`` int8, ``p x d``
    float32 (``p`` a multiple of :data:`BOUND_CENTROIDS`), ``p`` float32, ``N`` float32 (the scales), ``n``
    float32 (the bounds) and, when ``indexed``, ``n`` int64 image indices (else ignored: images ``0..n-1``).
    ctypes releases the GIL while it runs."""
    import llvmlite.binding as llvm

    pointer, size = ctypes.c_void_p, ctypes.c_int64
    return _jit(_bounds_ir(llvm.get_process_triple(), d, m, indexed), "representative_bounds",
                pointer, size, size, size, pointer, size, pointer, pointer, pointer, pointer)


def _packed_kernel(groups: int, blocks: int) -> Callable[..., None]:
    """The VNNI bound's kernel (:func:`_packed_bounds_ir`) for ``groups`` x ``blocks`` packed representatives,
    specialized like :func:`_bounds_kernel`."""
    with _COMPILE_LOCK:
        if ("packed", groups, blocks) in _SPECIALIZED or len(_SPECIALIZED) < SPECIALIZED_SHAPES:
            _SPECIALIZED.add(("packed", groups, blocks))
            return _compile_packed(groups, blocks)
        return _compile_packed(None, None)


@lru_cache(maxsize=None)
def _compile_packed(groups: int | None, blocks: int | None) -> Callable[..., None]:
    """:func:`_packed_bounds_ir` compiled for this CPU, as a ctypes function: arguments ``(data, n, groups,
    blocks, words, p, corrections, weights, scales, out)``, pointers to ``N x groups x 16 blocks x 4`` uint8,
    ``p x groups`` int32 (each group's four int8 query coordinates), ``p`` int32, ``p`` float32, ``N`` float32 and
    ``n`` float32 (``p`` a multiple of :data:`BOUND_CENTROIDS`)."""
    import llvmlite.binding as llvm

    pointer, size = ctypes.c_void_p, ctypes.c_int64
    return _jit(_packed_bounds_ir(llvm.get_process_triple(), groups, blocks), "packed_bounds",
                pointer, size, size, size, pointer, size, pointer, pointer, pointer, pointer)


@lru_cache(maxsize=None)
def _maxima_kernel(element: str = "int8") -> Callable[..., None]:
    """The codes' kernel (:func:`_maxima_ir`) for ``element`` (``int8`` or ``float16``) compiled for this CPU,
    once per process, as a ctypes function: arguments ``(addresses, n, r, d, stride, frames, t, scratch, out)``:
    ``n`` int64 addresses of images of ``r`` rows ``stride`` elements apart (their first ``d`` read), ``d x t``
    float32 (``t`` a multiple of :data:`MAXIMA_LANES`), :data:`MAXIMA_REGIONS` ``x d`` float32 and ``n x t``
    float32."""
    import llvmlite.binding as llvm

    pointer, size = ctypes.c_void_p, ctypes.c_int64
    with _COMPILE_LOCK:
        return _jit(_maxima_ir(llvm.get_process_triple(), element), "region_maxima", pointer, size, size, size, size,
                    pointer, size, pointer, pointer)


@lru_cache(maxsize=None)
def _maxima_vnni_kernel() -> Callable[..., None]:
    """:func:`_maxima_vnni_ir` compiled for this CPU, once per process, as a ctypes function: arguments
    ``(addresses, n, r, d, stride, frames, vectors, out)``: ``n`` int64 addresses of images of ``r`` int8 rows
    ``stride`` bytes apart (their first ``d`` read, ``d`` a multiple of 4), the packed query (``d/4 x vectors
    x 64`` bytes) and ``n x 16 vectors`` int32."""
    import llvmlite.binding as llvm

    pointer, size = ctypes.c_void_p, ctypes.c_int64
    with _COMPILE_LOCK:
        return _jit(_maxima_vnni_ir(llvm.get_process_triple()), "region_maxima_vnni", pointer, size, size, size, size,
                    pointer, size, pointer)


def _jit(text: str, name: str, *argtypes) -> Callable[..., None]:  # noqa: ANN002 - ctypes types
    """LLVM IR ``text`` optimized and compiled for this CPU; its function ``name`` as a ctypes function
    returning nothing (ctypes releases the GIL while it runs)."""
    import llvmlite.binding as llvm

    machine = _host_machine()
    module = llvm.parse_assembly(text)
    module.verify()
    passes = llvm.create_pass_builder(machine, llvm.create_pipeline_tuning_options(speed_level=3))
    passes.getModulePassManager().run(module, passes)
    engine = llvm.create_mcjit_compiler(module, machine)
    engine.finalize_object()
    _COMPILED.append(engine)  # the machine code lives as long as its engine
    return ctypes.CFUNCTYPE(None, *argtypes)(engine.get_function_address(name))


_COMPILED: list = []


def _host_machine():  # noqa: ANN202 - an llvmlite TargetMachine
    """An LLVM target machine for this CPU, its vector instructions included (``get_host_cpu_features``
    cannot tell them on some hosts; then the CPU name alone, which LLVM maps to the same features)."""
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    try:
        features = llvm.get_host_cpu_features().flatten()
    except RuntimeError:
        features = ""
    return llvm.Target.from_default_triple().create_target_machine(cpu=llvm.get_host_cpu_name(), features=features, opt=3)


def _bounds_ir(triple: str, d_constant: int | None = None, m_constant: int | None = None, indexed: bool = False) -> str:
    """LLVM IR of the bound: for each image ``i`` and each group of four query centroids ``q_c``, each
    block of :data:`BOUND_LANES` representatives accumulates its ``4 x 16`` dot products over the ``d``
    dimensions in four vectors (one fused multiply-add per centroid and dimension, the block's int8 row
    converted once); four more vectors keep the maxima over blocks, and ``out[i] = scale_i sum_c w_c max(best_c)``.
    A last partial block reads the last representative in its missing lanes (the max is unchanged).

    With ``d_constant`` and ``m_constant`` the function ignores its ``d`` and ``m`` arguments and LLVM unrolls
    the loops over dimensions and blocks: no loop counters, partial-block tests or spilled pointers per image
    (1.4-1.9x on 16 x 32 and 32 x 32 representatives, docs/benchmarks.md, section 8, "Two passes").
    ``indexed``: image ``i`` of the loop is image ``rows[i]`` of ``columns`` and ``scales``."""
    import llvmlite.ir as ir

    f32, i64, i32 = ir.FloatType(), ir.IntType(64), ir.IntType(32)
    lanes = ir.VectorType(f32, BOUND_LANES)
    module = ir.Module(name="vgs_kernels")
    module.triple = triple
    fma = ir.Function(module, ir.FunctionType(lanes, [lanes] * 3), name=f"llvm.fma.v{BOUND_LANES}f32")
    maxnum = ir.Function(module, ir.FunctionType(lanes, [lanes] * 2), name=f"llvm.maxnum.v{BOUND_LANES}f32")
    reduce_max = ir.Function(module, ir.FunctionType(f32, [lanes]), name=f"llvm.vector.reduce.fmax.v{BOUND_LANES}f32")
    function = ir.Function(module, ir.FunctionType(ir.VoidType(), [
        ir.IntType(8).as_pointer(), i64, i64, i64, f32.as_pointer(), i64, f32.as_pointer(), f32.as_pointer(), f32.as_pointer(),
        i64.as_pointer()]), name="representative_bounds")
    columns, n, d, m, queries, p, weights, scales, out, rows = function.args
    b = ir.IRBuilder(function.append_basic_block("entry"))
    const = lambda value: ir.Constant(i64, value)  # noqa: E731
    if d_constant is not None and m_constant is not None:
        d, m = const(d_constant), const(m_constant)
    loop = _LoopBuilder(b, function)

    def block_row(image: ir.Value, k: ir.Value, s0: ir.Value, full: bool) -> ir.Value:
        """The block's int8 row ``k`` as 16 floats (a partial block repeats representative ``m - 1``)."""
        row = b.gep(columns, [b.add(image, b.add(b.mul(k, m), s0))])
        if full:
            return b.sitofp(b.load(b.bitcast(row, ir.VectorType(ir.IntType(8), BOUND_LANES).as_pointer()), align=1), lanes)
        vector, last = ir.Constant(lanes, ir.Undefined), b.sub(b.sub(m, s0), const(1))
        for u in range(BOUND_LANES):
            lane = b.select(b.icmp_signed("<", const(u), last), const(u), last)
            vector = b.insert_element(vector, b.sitofp(b.load(b.gep(row, [lane])), f32), ir.Constant(i32, u))
        return vector

    def block(image: ir.Value, group: ir.Value, s0: ir.Value, full: bool) -> list[ir.Value]:
        """The four centroids' dot products with one block of representatives: 4 vectors of 16."""
        def dimension(k: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
            x = block_row(image, k, s0, full)
            return [b.call(fma, [x, _splat(b, b.load(b.gep(queries, [b.add(b.mul(b.add(group, const(c)), d), k)])), BOUND_LANES), acc[c]])
                    for c in range(BOUND_CENTROIDS)]
        return loop.range("k", const(0), d, const(1), [ir.Constant(lanes, [0.0] * BOUND_LANES)] * BOUND_CENTROIDS, dimension)

    def group_maxima(source: ir.Value, group: ir.Value) -> list[ir.Value]:
        image = b.mul(b.mul(source, d), m)

        def representative_block(s0: ir.Value, best: list[ir.Value]) -> list[ir.Value]:
            full = b.icmp_signed("<=", b.add(s0, const(BOUND_LANES)), m)
            acc = loop.branch(full, lambda: block(image, group, s0, True), lambda: block(image, group, s0, False))
            return [b.call(maxnum, [best[c], acc[c]], fastmath=("nnan",)) for c in range(BOUND_CENTROIDS)]
        best = loop.range("s", const(0), m, const(BOUND_LANES),
                          [ir.Constant(lanes, [float("-inf")] * BOUND_LANES)] * BOUND_CENTROIDS, representative_block)
        return [b.call(reduce_max, [best[c]], fastmath=("nnan",)) for c in range(BOUND_CENTROIDS)]

    source_of = (lambda i: b.load(b.gep(rows, [i]))) if indexed else (lambda i: i)  # the image's row in columns and scales
    _weighted_bounds(loop, n, p, weights, scales, out, source_of, group_maxima)
    b.ret_void()
    return str(module)


def _weighted_bounds(loop: "_LoopBuilder", n, p, weights, scales, out, source_of: Callable, group_maxima: Callable) -> None:  # noqa: ANN001 - llvmlite values
    """The loops both bound kernels share: for each image ``i`` (row ``source_of(i)`` of the table and the
    scales) and each group of :data:`BOUND_CENTROIDS` query centroids, ``group_maxima(source, group)`` emits
    the group's maxima (float32 scalars); ``out[i] = scale_source * sum_c w_c max_c``, summed in centroid
    order (so the two kernels' floats agree bit for bit)."""
    import llvmlite.ir as ir

    b, f32 = loop.b, ir.FloatType()
    const = lambda value: ir.Constant(ir.IntType(64), value)  # noqa: E731

    def image_bound(i: ir.Value, _: list) -> list:
        source = source_of(i)

        def centroid_group(group: ir.Value, total: list[ir.Value]) -> list[ir.Value]:
            for c, best in enumerate(group_maxima(source, group)):
                total = [b.fadd(total[0], b.fmul(b.load(b.gep(weights, [b.add(group, const(c))])), best))]
            return total
        total = loop.range("c", const(0), p, const(BOUND_CENTROIDS), [ir.Constant(f32, 0.0)], centroid_group)
        b.store(b.fmul(total[0], b.load(b.gep(scales, [source]))), b.gep(out, [i]))
        return []
    loop.range("i", const(0), n, const(1), [], image_bound)


def _packed_bounds_ir(triple: str, groups_constant: int | None = None, blocks_constant: int | None = None) -> str:
    """LLVM IR of the bound on :class:`PackedRepresentatives` with AVX-512 VNNI: for each image, each group of
    four query centroids and each block of :data:`BOUND_LANES` representatives, one ``vpdpbusd`` per centroid
    and group of four coordinates adds the 16 representatives' four products to 16 int32 sums (the query's
    word broadcast to every lane); the sums' maxima over blocks stay int32, and ``out[i] = scale_i sum_c w_c
    (max_c - 128 sum_k q_ck)``, the float operations in the order of :func:`_bounds_ir` (the same bits).
    Integer sums are exact (at most :data:`EXACT_TERMS` x 255 x 128 in magnitude).  With constants the loops
    over groups and blocks unroll, as in :func:`_bounds_ir`."""
    import llvmlite.ir as ir

    f32, i64, i32 = ir.FloatType(), ir.IntType(64), ir.IntType(32)
    lanes = ir.VectorType(i32, BOUND_LANES)
    module = ir.Module(name="vgs_packed_bounds")
    module.triple = triple
    # <16 x i32> operands: older LLVM's signature, which newer LLVM (64 x i8) upgrades on parsing
    dot = ir.Function(module, ir.FunctionType(lanes, [lanes] * 3), name="llvm.x86.avx512.vpdpbusd.512")
    smax = ir.Function(module, ir.FunctionType(lanes, [lanes] * 2), name=f"llvm.smax.v{BOUND_LANES}i32")
    reduce_max = ir.Function(module, ir.FunctionType(i32, [lanes]), name=f"llvm.vector.reduce.smax.v{BOUND_LANES}i32")
    function = ir.Function(module, ir.FunctionType(ir.VoidType(), [
        ir.IntType(8).as_pointer(), i64, i64, i64, i32.as_pointer(), i64, i32.as_pointer(), f32.as_pointer(),
        f32.as_pointer(), f32.as_pointer()]), name="packed_bounds")
    data, n, groups, blocks, words, p, corrections, weights, scales, out = function.args
    b = ir.IRBuilder(function.append_basic_block("entry"))
    const = lambda value: ir.Constant(i64, value)  # noqa: E731
    if groups_constant is not None and blocks_constant is not None:
        groups, blocks = const(groups_constant), const(blocks_constant)
    loop = _LoopBuilder(b, function)
    vector_bytes = const(4 * BOUND_LANES)

    def group_maxima(i: ir.Value, group: ir.Value) -> list[ir.Value]:
        image = b.mul(b.mul(b.mul(i, groups), blocks), vector_bytes)

        def representative_block(v: ir.Value, best: list[ir.Value]) -> list[ir.Value]:
            def coordinate_group(g: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
                at = b.add(image, b.mul(b.add(b.mul(g, blocks), v), vector_bytes))
                x = b.load(b.bitcast(b.gep(data, [at]), lanes.as_pointer()), align=1)
                return [b.call(dot, [acc[c], x, _splat(b, b.load(b.gep(words, [b.add(b.mul(b.add(group, const(c)), groups), g)])), BOUND_LANES)])
                        for c in range(BOUND_CENTROIDS)]
            acc = loop.range("g", const(0), groups, const(1), [ir.Constant(lanes, [0] * BOUND_LANES)] * BOUND_CENTROIDS, coordinate_group)
            return [b.call(smax, [best[c], acc[c]]) for c in range(BOUND_CENTROIDS)]
        best = loop.range("v", const(0), blocks, const(1), [ir.Constant(lanes, [-2 ** 31] * BOUND_LANES)] * BOUND_CENTROIDS,
                          representative_block)
        corrections_ = [b.load(b.gep(corrections, [b.add(group, const(c))])) for c in range(BOUND_CENTROIDS)]
        return [b.sitofp(b.sub(b.call(reduce_max, [best[c]]), corrections_[c]), f32) for c in range(BOUND_CENTROIDS)]

    _weighted_bounds(loop, n, p, weights, scales, out, lambda i: i, group_maxima)
    b.ret_void()
    return str(module)


class _LoopBuilder:
    """Structured control flow for :func:`_bounds_ir`: counted loops with loop-carried values, and if/else
    joining values."""

    def __init__(self, builder, function) -> None:
        self.b, self.function = builder, function

    def range(self, name: str, start, stop, step, carried: list, body: Callable[..., list]) -> list:
        """``for v in range(start, stop, step)``, ``carried = body(v, carried)``; returns the final values."""
        b, before = self.b, self.b.block
        head, inside, after = (self.function.append_basic_block(f"{name}_{part}") for part in ("head", "body", "exit"))
        b.branch(head)
        b.position_at_end(head)
        counter = b.phi(start.type, name)
        counter.add_incoming(start, before)
        values = []
        for initial in carried:
            value = b.phi(initial.type)
            value.add_incoming(initial, before)
            values.append(value)
        b.cbranch(b.icmp_signed("<", counter, stop), inside, after)
        b.position_at_end(inside)
        updated = body(counter, values)
        counter.add_incoming(b.add(counter, step), b.block)
        for value, new in zip(values, updated):
            value.add_incoming(new, b.block)
        b.branch(head)
        b.position_at_end(after)
        return values

    def branch(self, condition, then: Callable[[], list], otherwise: Callable[[], list]) -> list:
        """``then() if condition else otherwise()``, each emitting its own code; their values joined."""
        b = self.b
        first, second, join = (self.function.append_basic_block(name) for name in ("then", "else", "join"))
        b.cbranch(condition, first, second)
        results = []
        for block, make in ((first, then), (second, otherwise)):
            b.position_at_end(block)
            results.append((make(), b.block))
            b.branch(join)
        b.position_at_end(join)
        joined = []
        for index, value in enumerate(results[0][0]):
            phi = b.phi(value.type)
            for values, end in results:
                phi.add_incoming(values[index], end)
            joined.append(phi)
        return joined


def _maxima_ir(triple: str, element: str = "int8") -> str:
    """LLVM IR of the codes' maxima, the frames as the vector lanes: for each image, each block of
    :data:`MAXIMA_REGIONS` regions (``element``: ``int8`` codes or ``float16`` regions) is converted to
    float32 once (``scratch``); then for each group of 24 frames (three vectors; then pairs, a single vector
    only for 8 frames) the ``4 x 24`` dot products accumulate over the ``d`` dimensions in twelve vectors (one
    broadcast region value and three fused multiply-adds per region and dimension: enough independent sums to
    hide their latency; 19-24 frames 1.1x faster than pairs and a single vector) and are folded into the
    image's running maxima, ``out[i]``.  No horizontal sums: numba's compile, vectorized
    along the dimensions, needed four per frame and block.  A last partial block repeats the last region.
    Each image is found through its address (``addresses[i]``, rows ``stride`` elements apart, the first
    ``d`` read), so the images are read where they are stored, and the next image's rows are prefetched."""
    import llvmlite.ir as ir

    f32, i64 = ir.FloatType(), ir.IntType(64)
    lanes = ir.VectorType(f32, MAXIMA_LANES)
    lanes_ptr = lanes.as_pointer()
    module = ir.Module(name=f"vgs_maxima_{element}")
    module.triple = triple
    item = {"int8": ir.IntType(8), "float16": ir.HalfType()}[element]
    def to_float(value: ir.Value, kind: ir.Type) -> ir.Value:
        """int8 or float16 (scalar or vector) -> float32 of the same shape."""
        return b.sitofp(value, kind) if element == "int8" else b.fpext(value, kind)
    fma = ir.Function(module, ir.FunctionType(lanes, [lanes] * 3), name=f"llvm.fma.v{MAXIMA_LANES}f32")
    maxnum = ir.Function(module, ir.FunctionType(lanes, [lanes] * 2), name=f"llvm.maxnum.v{MAXIMA_LANES}f32")
    function = ir.Function(module, ir.FunctionType(ir.VoidType(), [
        i64.as_pointer(), i64, i64, i64, i64, f32.as_pointer(), i64, f32.as_pointer(), f32.as_pointer()]), name="region_maxima")
    addresses, n, r, d, stride, frames, t, scratch, out = function.args
    b = ir.IRBuilder(function.append_basic_block("entry"))
    const = lambda value: ir.Constant(i64, value)  # noqa: E731
    loop = _LoopBuilder(b, function)

    def vector_at(base: ir.Value, offset: ir.Value) -> ir.Value:
        return b.bitcast(b.gep(base, [offset]), lanes_ptr)

    def frame_group(row: ir.Value, g: ir.Value, width: int) -> None:
        """Frames ``g .. g + 8 width`` against the block in ``scratch``, maxima into ``out[row + g ...]``."""
        def dimension(k: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
            q = [b.load(vector_at(frames, b.add(b.add(b.mul(k, t), g), const(MAXIMA_LANES * v))), align=4) for v in range(width)]
            updated = []
            for u in range(MAXIMA_REGIONS):
                x = _splat(b, b.load(b.gep(scratch, [b.add(b.mul(const(u), d), k)])), MAXIMA_LANES)
                updated += [b.call(fma, [x, q[v], acc[u * width + v]]) for v in range(width)]
            return updated
        acc = loop.range("k", const(0), d, const(1), [ir.Constant(lanes, [0.0] * MAXIMA_LANES)] * (MAXIMA_REGIONS * width), dimension)
        for v in range(width):
            target = vector_at(out, b.add(b.add(row, g), const(MAXIMA_LANES * v)))
            best = b.load(target, align=4)
            for u in range(MAXIMA_REGIONS):
                best = b.call(maxnum, [best, acc[u * width + v]], fastmath=("nnan",))
            b.store(best, target, align=4)

    def convert_region(source: ir.Value, u: int) -> None:
        """The first ``d`` elements of region row ``source`` (a pointer) as float32 into block row ``u`` of ``scratch``."""
        def eight(k: ir.Value, _: list) -> list:
            x = b.load(b.bitcast(b.gep(source, [k]), ir.VectorType(item, MAXIMA_LANES).as_pointer()), align=1)
            b.store(to_float(x, lanes), vector_at(scratch, b.add(b.mul(const(u), d), k)), align=4)
            return []

        def one(k: ir.Value, _: list) -> list:
            b.store(to_float(b.load(b.gep(source, [k])), f32), b.gep(scratch, [b.add(b.mul(const(u), d), k)]))
            return []
        loop.range("c8", const(0), b.sub(d, const(MAXIMA_LANES - 1)), const(MAXIMA_LANES), [], eight)
        loop.range("c1", b.and_(d, const(-MAXIMA_LANES)), d, const(1), [], one)

    i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
    size = const(1 if element == "int8" else 2)

    def image(i: ir.Value, _: list) -> list:
        base, row = b.inttoptr(b.load(b.gep(addresses, [i])), item.as_pointer()), b.mul(i, t)
        following = b.add(i, const(1))
        _prefetch_image(loop, addresses, b.select(b.icmp_signed("<", following, n), following, i), r, b.mul(stride, size), b.mul(d, size))

        def start_maxima(f: ir.Value, _: list) -> list:
            b.store(ir.Constant(f32, float("-inf")), b.gep(out, [b.add(row, f)]))
            return []

        def three_vectors(g: ir.Value, _: list) -> list:
            frame_group(row, g, 3)
            return []

        def pair_of_vectors(g: ir.Value, _: list) -> list:
            frame_group(row, g, 2)
            return []

        def last_vector() -> list:
            frame_group(row, b.sub(t, const(MAXIMA_LANES)), 1)
            return []

        def region_block(r0: ir.Value, _: list) -> list:
            for u in range(MAXIMA_REGIONS):
                region = b.add(r0, const(u))
                region = b.select(b.icmp_signed("<", region, r), region, b.sub(r, const(1)))
                convert_region(b.gep(base, [b.mul(region, stride)]), u)
            loop.range("g3", const(0), in_threes, const(3 * MAXIMA_LANES), [], three_vectors)
            loop.range("g", in_threes, b.sub(t, const(2 * MAXIMA_LANES - 1)), const(2 * MAXIMA_LANES), [], pair_of_vectors)
            loop.branch(b.icmp_signed("!=", b.and_(b.sub(t, in_threes), const(2 * MAXIMA_LANES - 1)), const(0)), last_vector, lambda: [])
            return []
        loop.range("t", const(0), t, const(1), [], start_maxima)
        loop.range("r", const(0), r, const(MAXIMA_REGIONS), [], region_block)
        return []

    # The t / 8 frame vectors in groups of three (twelve accumulators: the fused multiply-adds' latency is
    # hidden), the rest in pairs, a single vector only when there is one: 4 = 2 + 2, 7 = 3 + 2 + 2.
    vectors = b.udiv(t, const(MAXIMA_LANES))
    uneven = b.and_(b.icmp_signed("==", b.urem(vectors, const(3)), const(1)), b.icmp_signed(">=", vectors, const(4)))
    in_threes = b.mul(b.udiv(b.select(uneven, b.sub(vectors, const(4)), vectors), const(3)), const(3 * MAXIMA_LANES))
    loop.range("i", const(0), n, const(1), [], image)
    b.ret_void()
    return str(module)


def _prefetch_image(loop: "_LoopBuilder", addresses, j, r, row_bytes, read_bytes) -> None:  # noqa: ANN001 - llvmlite values
    """Every cache line of image ``j``'s ``r`` rows (``row_bytes`` apart from ``addresses[j]``, the first
    ``read_bytes`` of each) requested ahead of use: the images are scattered over memory-mapped files, and
    the hardware prefetcher cannot guess the next one (3,000 images' leading 64 code coordinates read in
    place: 22.6 against 24.6 ms)."""
    import llvmlite.ir as ir

    b, i8p, i32, i64 = loop.b, ir.IntType(8).as_pointer(), ir.IntType(32), ir.IntType(64)
    name = "llvm.prefetch.p0"
    module = b.module
    fetch = module.globals.get(name) or ir.Function(module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), name=name)
    start = b.inttoptr(b.load(b.gep(addresses, [j])), i8p)

    def one_row(rr: ir.Value, _: list) -> list:
        line0 = b.gep(start, [b.mul(rr, row_bytes)])

        def one_line(c: ir.Value, _: list) -> list:
            b.call(fetch, [b.gep(line0, [c]), ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
            return []
        loop.range("pl", ir.Constant(i64, 0), read_bytes, ir.Constant(i64, 64), [], one_line)
        return []
    loop.range("pr", ir.Constant(i64, 0), r, ir.Constant(i64, 1), [], one_row)


def _maxima_vnni_ir(triple: str) -> str:
    """LLVM IR of the codes' maxima with AVX-512 VNNI, the frames as the 16 int32 lanes: the query is packed
    as words of four coordinates offset by 128 (``frames``: ``d/4 x V x 16 x 4`` uint8 for ``V`` vectors of
    16 frames); for each block of :data:`MAXIMA_REGIONS` regions and each frame vector, one ``vpdpbusd`` per
    region and group of four coordinates adds ``<q_t + 128, c_r>`` to each frame's lane (the region's word
    broadcast), and a second one with a vector of ones adds ``sum c_r``; ``<q_t, c_r>`` is the first minus
    128 times the second, exact in int32.  The running maxima are int32 (``out``, ``n x 16 V``).  Images are
    read in place through their addresses, the next one prefetched, as in :func:`_maxima_ir`."""
    import llvmlite.ir as ir

    i8, i32, i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
    lanes = ir.VectorType(i32, BOUND_LANES)
    module = ir.Module(name="vgs_maxima_vnni")
    module.triple = triple
    dot = ir.Function(module, ir.FunctionType(lanes, [lanes] * 3), name="llvm.x86.avx512.vpdpbusd.512")
    smax = ir.Function(module, ir.FunctionType(lanes, [lanes] * 2), name=f"llvm.smax.v{BOUND_LANES}i32")
    function = ir.Function(module, ir.FunctionType(ir.VoidType(), [
        i64.as_pointer(), i64, i64, i64, i64, i8.as_pointer(), i64, i32.as_pointer()]), name="region_maxima_vnni")
    addresses, n, r, d, stride, frames, vectors, out = function.args
    b = ir.IRBuilder(function.append_basic_block("entry"))
    const = lambda value: ir.Constant(i64, value)  # noqa: E731
    loop = _LoopBuilder(b, function)
    ones, zeros = ir.Constant(lanes, [0x01010101] * BOUND_LANES), ir.Constant(lanes, [0] * BOUND_LANES)
    lanes_ptr = lanes.as_pointer()

    def image(i: ir.Value, _: list) -> list:
        base, row = b.inttoptr(b.load(b.gep(addresses, [i])), i8.as_pointer()), b.mul(b.mul(i, vectors), const(BOUND_LANES))
        following = b.add(i, const(1))
        _prefetch_image(loop, addresses, b.select(b.icmp_signed("<", following, n), following, i), r, stride, d)

        def start_maxima(v: ir.Value, _: list) -> list:
            b.store(ir.Constant(lanes, [-2 ** 31] * BOUND_LANES), b.bitcast(b.gep(out, [b.add(row, b.mul(v, const(BOUND_LANES)))]), lanes_ptr), align=4)
            return []

        def region_block(r0: ir.Value, _: list) -> list:
            rows = []
            for u in range(MAXIMA_REGIONS):  # a last partial block repeats the last region
                region = b.add(r0, const(u))
                rows.append(b.gep(base, [b.mul(b.select(b.icmp_signed("<", region, r), region, b.sub(r, const(1))), stride)]))

            def frame_vector(v: ir.Value, _: list) -> list:
                def coordinate_group(g: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
                    q = b.load(b.bitcast(b.gep(frames, [b.mul(b.add(b.mul(g, vectors), v), const(4 * BOUND_LANES))]), lanes_ptr), align=1)
                    updated = []
                    for u in range(MAXIMA_REGIONS):
                        word = _splat(b, b.load(b.bitcast(b.gep(rows[u], [b.mul(g, const(4))]), i32.as_pointer()), align=1), BOUND_LANES)
                        updated += [b.call(dot, [acc[2 * u], q, word]), b.call(dot, [acc[2 * u + 1], ones, word])]
                    return updated
                acc = loop.range("g", const(0), b.udiv(d, const(4)), const(1), [zeros] * (2 * MAXIMA_REGIONS), coordinate_group)
                target = b.bitcast(b.gep(out, [b.add(row, b.mul(v, const(BOUND_LANES)))]), lanes_ptr)
                best = b.load(target, align=4)
                for u in range(MAXIMA_REGIONS):
                    best = b.call(smax, [best, b.sub(acc[2 * u], b.shl(acc[2 * u + 1], ir.Constant(lanes, [7] * BOUND_LANES)))])
                b.store(best, target, align=4)
                return []
            loop.range("v", const(0), vectors, const(1), [], frame_vector)
            return []
        loop.range("t", const(0), vectors, const(1), [], start_maxima)
        loop.range("r", const(0), r, const(MAXIMA_REGIONS), [], region_block)
        return []

    loop.range("i", const(0), n, const(1), [], image)
    b.ret_void()
    return str(module)


def _splat(b, value, lanes: int):  # noqa: ANN001, ANN202 - llvmlite builder and values
    """``value`` in every lane of a ``lanes``-wide vector."""
    import llvmlite.ir as ir

    i32 = ir.IntType(32)
    one = b.insert_element(ir.Constant(ir.VectorType(value.type, lanes), ir.Undefined), value, ir.Constant(i32, 0))
    return b.shuffle_vector(one, ir.Constant(ir.VectorType(value.type, lanes), ir.Undefined), ir.Constant(ir.VectorType(i32, lanes), [0] * lanes))


__all__ = ["EXACT_TERMS", "PackedRepresentatives", "StoredArrays", "StoredRows", "float16_regions", "prepared_representatives",
           "representative_bounds", "region_maxima", "has_vnni"]
