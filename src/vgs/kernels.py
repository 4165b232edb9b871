"""The int8 products of the search stages, fast on any x86 CPU.

Both stages that score int8 vectors (the centroid bound, :mod:`vgs.centroids`, and MISA on int8 region
codes, :meth:`vgs.codecs.RegionCodec.misa`) need "the best of a group of int8 rows against a few int8
query vectors".  ``torch._int_mm`` does that fast only where oneDNN has int8 instructions (AVX-512 VNNI
or AMX): on AVX2 CPUs it falls back to a reference loop, about 0.7 G multiply-adds a second per core,
20-28x slower than the float32 kernels here (docs/benchmarks.md, section 8, "int8 products on AVX2").

The kernels multiply in float32 on integer values: every product is at most ``127^2`` and every sum of
up to 1,024 of them stays below ``2^24``, so float32 holds each sum exactly in any order and the results
equal ``torch._int_mm``'s to the bit, whichever kernel a machine runs.

- :func:`representative_bounds` is LLVM IR written with ``llvmlite`` (the compiler library under numba,
  so already installed) and compiled for this CPU on first use: 16 representatives a vector and four
  query centroids at a time, the accumulators in registers.  numba's own compile of the same loops was
  left scalar by LLVM's vectorizer (it cannot prove the accumulators do not alias the table): the
  explicit vectors are 3.1x faster on one AVX2 core (17.5 against 54.5 ms over 100,000 images of 32 x 32).
- :func:`region_maxima` is numba (``torch._int_mm`` where it has int8 instructions): LLVM vectorizes its
  128-dimension dot products well.

Both release the GIL, and a call splits its images into ``torch.get_num_threads()`` contiguous parts run
side by side (1.4-1.9x on 2 AVX2 cores when the second core is free), so ``torch.set_num_threads``
governs them as it governs torch.
"""

from __future__ import annotations

import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Callable

import numpy as np
import torch

EXACT_TERMS = 1024  # products per sum that float32 holds exactly (1,024 x 127^2 < 2^24)
BOUND_LANES = 16  # representatives per vector in the bound's kernel
BOUND_CENTROIDS = 4  # query centroids per pass over an image's representatives


def int8_instructions() -> bool:
    """Whether ``torch._int_mm`` runs on int8 matrix instructions here (AVX-512 VNNI or AMX)."""
    probe = getattr(torch.cpu, "_is_vnni_supported", None)
    return bool(probe is not None and probe())


def representative_bounds(columns: torch.Tensor, query_codes: torch.Tensor, weights: torch.Tensor,
                          image_scales: torch.Tensor | None = None) -> torch.Tensor:
    """The centroid bound: ``N x d x m`` int8 representatives stored as columns (image ``i``'s ``m``
    representatives are ``columns[i, :, s]``), ``p x d`` int8 query centroids, their ``p`` float weights and
    optionally ``N`` image scales ``c_i`` -> ``N`` float32, ``c_i sum_j w_j max_s <x_is, q_j>``.

    The scales are applied in the kernel, not by a torch op over the ``N`` values: a torch op that large
    runs on torch's OpenMP threads, which then spin for milliseconds and share a core with the next
    kernel's second thread (the bound over 100,000 images on 2 threads: 11 ms alone, 15-19 ms right after
    a 100,000-element torch multiply or any torch product).  With one thread it makes no difference."""
    if columns.dtype != torch.int8 or columns.ndim != 3:
        raise ValueError(f"the bound: expected N x d x m int8 representatives, got {columns.dtype} of shape {tuple(columns.shape)}")
    n, d, m = columns.shape
    _check_terms(d)
    if m == 0:
        raise ValueError("the bound needs at least one representative per image")
    if query_codes.ndim != 2 or query_codes.shape[1] != d or len(weights) != len(query_codes):
        raise ValueError(f"the bound: expected p x {d} query centroids and p weights for representatives of {d} "
                         f"dimensions, got {tuple(query_codes.shape)} and {len(weights)}")
    out = np.empty(n, dtype=np.float32)
    if n == 0:
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
    kernel = _bounds_kernel(d, m)
    _in_parts(n, lambda a, b: kernel(table[a:b].ctypes.data, b - a, d, m, queries.ctypes.data, len(queries),
                                     weights_.ctypes.data, scales[a:b].ctypes.data, out[a:b].ctypes.data))
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
    _in_parts(n, lambda a, b: _maxima_kernel()(codes[a:b], frames, out[a:b]))
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


def _bounds_kernel(d: int, m: int) -> Callable[..., None]:
    """The bound's kernel for ``d x m`` representatives, compiled once per process for each of the first
    :data:`SPECIALIZED_SHAPES` shapes a process uses and once for any other (a lock keeps concurrent
    first queries to one compile)."""
    with _COMPILE_LOCK:
        if (d, m) in _SPECIALIZED or len(_SPECIALIZED) < SPECIALIZED_SHAPES:
            _SPECIALIZED.add((d, m))
            return _compile_bounds(d, m)
        return _compile_bounds(None, None)


_COMPILE_LOCK = threading.Lock()
SPECIALIZED_SHAPES = 8  # representative shapes (d x m) compiled with d and m as constants, per process
_SPECIALIZED: set[tuple[int, int]] = set()


@lru_cache(maxsize=None)
def _compile_bounds(d: int | None, m: int | None) -> Callable[..., None]:
    """The bound's kernel (:func:`_bounds_ir`, ``d`` and ``m`` constants when given) compiled for this CPU,
    as a ctypes function: arguments
    ``(columns, n, d, m, queries, p, weights, scales, out)``, pointers to ``n x d x m`` int8, ``p x d`` float32
    (``p`` a multiple of :data:`BOUND_CENTROIDS`), ``p`` float32 and ``n`` float32 twice.  ctypes releases the GIL
    while it runs."""
    import llvmlite.binding as llvm

    machine = _host_machine()
    module = llvm.parse_assembly(_bounds_ir(llvm.get_process_triple(), d, m))
    module.verify()
    passes = llvm.create_pass_builder(machine, llvm.create_pipeline_tuning_options(speed_level=3))
    passes.getModulePassManager().run(module, passes)
    engine = llvm.create_mcjit_compiler(module, machine)
    engine.finalize_object()
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    kernel = ctypes.CFUNCTYPE(None, pointer, size, size, size, pointer, size, pointer, pointer, pointer)(
        engine.get_function_address("representative_bounds"))
    _COMPILED.append(engine)  # the machine code lives as long as its engine
    return kernel


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


def _bounds_ir(triple: str, d_constant: int | None = None, m_constant: int | None = None) -> str:
    """LLVM IR of the bound: for each image ``i`` and each group of four query centroids ``q_c``, each
    block of :data:`BOUND_LANES` representatives accumulates its ``4 x 16`` dot products over the ``d``
    dimensions in four vectors (one fused multiply-add per centroid and dimension, the block's int8 row
    converted once); four more vectors keep the maxima over blocks, and ``out[i] = scale_i sum_c w_c max(best_c)``.
    A last partial block reads the last representative in its missing lanes (the max is unchanged).

    With ``d_constant`` and ``m_constant`` the function ignores its ``d`` and ``m`` arguments and LLVM unrolls
    the loops over dimensions and blocks: no loop counters, partial-block tests or spilled pointers per image
    (1.4-1.9x on 16 x 32 and 32 x 32 representatives, docs/benchmarks.md, section 8, "Two passes")."""
    import llvmlite.ir as ir

    f32, i64, i32 = ir.FloatType(), ir.IntType(64), ir.IntType(32)
    lanes = ir.VectorType(f32, BOUND_LANES)
    module = ir.Module(name="vgs_kernels")
    module.triple = triple
    fma = ir.Function(module, ir.FunctionType(lanes, [lanes] * 3), name=f"llvm.fma.v{BOUND_LANES}f32")
    maxnum = ir.Function(module, ir.FunctionType(lanes, [lanes] * 2), name=f"llvm.maxnum.v{BOUND_LANES}f32")
    reduce_max = ir.Function(module, ir.FunctionType(f32, [lanes]), name=f"llvm.vector.reduce.fmax.v{BOUND_LANES}f32")
    function = ir.Function(module, ir.FunctionType(ir.VoidType(), [
        ir.IntType(8).as_pointer(), i64, i64, i64, f32.as_pointer(), i64, f32.as_pointer(), f32.as_pointer(), f32.as_pointer()]),
        name="representative_bounds")
    columns, n, d, m, queries, p, weights, scales, out = function.args
    b = ir.IRBuilder(function.append_basic_block("entry"))
    const = lambda value: ir.Constant(i64, value)  # noqa: E731
    if d_constant is not None and m_constant is not None:
        d, m = const(d_constant), const(m_constant)
    loop = _LoopBuilder(b, function)

    def splat(value: ir.Value) -> ir.Value:
        one = b.insert_element(ir.Constant(lanes, ir.Undefined), value, ir.Constant(i32, 0))
        return b.shuffle_vector(one, ir.Constant(lanes, ir.Undefined), ir.Constant(ir.VectorType(i32, BOUND_LANES), [0] * BOUND_LANES))

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
            return [b.call(fma, [x, splat(b.load(b.gep(queries, [b.add(b.mul(b.add(group, const(c)), d), k)]))), acc[c]])
                    for c in range(BOUND_CENTROIDS)]
        return loop.range("k", const(0), d, const(1), [ir.Constant(lanes, [0.0] * BOUND_LANES)] * BOUND_CENTROIDS, dimension)

    def image_bound(i: ir.Value, _: list) -> list:
        image = b.mul(b.mul(i, d), m)

        def centroid_group(group: ir.Value, total: list[ir.Value]) -> list[ir.Value]:
            def representative_block(s0: ir.Value, best: list[ir.Value]) -> list[ir.Value]:
                full = b.icmp_signed("<=", b.add(s0, const(BOUND_LANES)), m)
                acc = loop.branch(full, lambda: block(image, group, s0, True), lambda: block(image, group, s0, False))
                return [b.call(maxnum, [best[c], acc[c]], fastmath=("nnan",)) for c in range(BOUND_CENTROIDS)]
            best = loop.range("s", const(0), m, const(BOUND_LANES),
                              [ir.Constant(lanes, [float("-inf")] * BOUND_LANES)] * BOUND_CENTROIDS, representative_block)
            for c in range(BOUND_CENTROIDS):
                weight = b.load(b.gep(weights, [b.add(group, const(c))]))
                total = [b.fadd(total[0], b.fmul(weight, b.call(reduce_max, [best[c]], fastmath=("nnan",))))]
            return total
        total = loop.range("g", const(0), p, const(BOUND_CENTROIDS), [ir.Constant(f32, 0.0)], centroid_group)
        b.store(b.fmul(total[0], b.load(b.gep(scales, [i]))), b.gep(out, [i]))
        return []

    loop.range("i", const(0), n, const(1), [], image_bound)
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


@lru_cache(maxsize=1)
def _maxima_kernel() -> Callable:
    """numba's compile of :func:`region_maxima`'s loops, once per process (cached on disk where the package
    folder is writable)."""
    from numba import njit

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

    return maxima


__all__ = ["EXACT_TERMS", "int8_instructions", "representative_bounds", "region_maxima"]
