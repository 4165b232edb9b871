"""The int8 kernels of the search stages give the exact integer products (numpy int64 as the reference)."""

import numpy as np
import pytest
import torch

from vgs import kernels


def _int8(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.integers(-127, 128, shape, dtype=np.int8)


def _vnni_or_skip() -> None:
    if not kernels.has_vnni():
        pytest.skip("this CPU has no AVX-512 VNNI")


@pytest.fixture(params=["float32", "vnni"])
def int8_kernel(request, monkeypatch) -> str:  # noqa: ANN001
    """Runs a test with each int8 kernel: the float32 one on every CPU, the VNNI one where the CPU has it."""
    if request.param == "vnni":
        _vnni_or_skip()
    else:
        monkeypatch.setattr(kernels, "has_vnni", lambda: False)
    return request.param


def _reference_maxima(rows: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``n x g x d`` and ``p x d`` int8 -> ``n x p`` int64: max over the group of the exact integer products
    (numpy in int64: ``torch._int_mm`` returned garbage for d = 1 on a VNNI CPU, torch 2.14, when its second
    operand was a transposed 1 x p view, strides (1, 1), that numpy calls contiguous)."""
    n, g, d = rows.shape
    products = rows.reshape(n * g, d).astype(np.int64) @ query.T.astype(np.int64)
    return products.reshape(n, g, len(query)).max(1)


@pytest.mark.parametrize("n,m,d,p", [(1, 1, 8, 1), (37, 32, 32, 4), (5, 7, 24, 3), (300, 9, 64, 2), (0, 32, 32, 4),
                                     (4, 16, 16, 4), (20, 17, 32, 5), (9, 33, 8, 8), (3, 48, 1, 6)])
def test_representative_bounds_are_the_exact_integer_maxima(n, m, d, p):
    rng = np.random.default_rng(n + m + d + p)
    rows, query = _int8(rng, n, m, d), _int8(rng, p, d)
    columns = torch.from_numpy(np.ascontiguousarray(rows.transpose(0, 2, 1)))
    maxima = _reference_maxima(rows, query)
    for j in range(p):  # one-hot weights read each centroid's maximum alone: equal to the integer
        weights = torch.zeros(p)
        weights[j] = 1.0
        got = kernels.representative_bounds(columns, torch.from_numpy(query), weights).numpy()
        np.testing.assert_array_equal(got.astype(np.int64), maxima[:, j])
    weights = torch.rand(p, generator=torch.Generator().manual_seed(0))
    got = kernels.representative_bounds(columns, torch.from_numpy(query), weights)
    torch.testing.assert_close(got, torch.from_numpy(maxima).float() @ weights, rtol=1e-6, atol=1e-3)
    picked = rng.integers(0, max(n, 1), size=2 * n + 1) if n else np.zeros(0, dtype=np.int64)  # unsorted, repeated
    in_place = kernels.representative_bounds(columns, torch.from_numpy(query), weights, rows=picked)
    np.testing.assert_array_equal(in_place.numpy(), got.numpy()[picked])  # the same sums, read in place


def test_region_maxima_take_the_whole_int8_range(int8_kernel):
    """-128 too (an unsigned 0 once the VNNI kernel offsets the query), d a multiple of 4 and not."""
    rng = np.random.default_rng(11)
    for d in (16, 12, 7):
        codes, query = rng.integers(-128, 128, (9, 6, d), dtype=np.int8), rng.integers(-128, 128, (17, d), dtype=np.int8)
        codes[0, 0], query[0] = -128, -128
        np.testing.assert_array_equal(kernels.region_maxima(codes, query).astype(np.int64), _reference_maxima(codes, query))
        halves = query[:3].astype(np.float32) + 0.5  # a float query: float products, never cast to int8
        np.testing.assert_allclose(kernels.region_maxima(codes, halves), (codes.astype(np.float32) @ halves.T).max(1), rtol=1e-6)


@pytest.mark.parametrize("n,r,d,t", [(1, 1, 8, 1), (40, 49, 128, 22), (7, 3, 16, 5), (0, 49, 128, 4), (3, 5, 13, 16), (2, 6, 24, 33),
                                     (3, 5, 13, 29), (2, 4, 8, 50), (2, 7, 16, 72), (3, 4, 1, 6)])  # 1-9 vectors of frames; d = 1
def test_region_maxima_are_the_exact_integer_maxima(n, r, d, t, int8_kernel):
    rng = np.random.default_rng(n * r + d + t)
    codes, query = _int8(rng, n, r, d), _int8(rng, t, d)
    got = kernels.region_maxima(codes, query)
    assert got.shape == (n, t) and got.dtype == np.float32
    np.testing.assert_array_equal(got.astype(np.int64), _reference_maxima(codes, query))


def test_the_largest_exact_sums_stay_exact(int8_kernel):
    d = kernels.EXACT_TERMS
    codes = np.full((2, 3, d), 127, dtype=np.int8)
    codes[1] = -127
    query = np.full((2, d), 127, dtype=np.int8)
    query[1, 1::2] = -126  # sums that are not round numbers
    np.testing.assert_array_equal(kernels.region_maxima(codes, query).astype(np.int64), _reference_maxima(codes, query))
    columns = torch.from_numpy(np.ascontiguousarray(codes.transpose(0, 2, 1)))
    got = kernels.representative_bounds(columns, torch.from_numpy(query), torch.tensor([1.0, 0.0]))
    assert got.tolist() == [127 * 127 * d, -127 * 127 * d]


def test_codes_that_are_not_int8_or_a_query_of_another_width_are_refused():
    with pytest.raises(ValueError, match="expected n x R x d int8 codes or float16 regions"):
        kernels.region_maxima(np.zeros((2, 3, 8), dtype=np.int16), np.zeros((1, 8), dtype=np.int8))
    with pytest.raises(ValueError, match=r"\(1, 7\)"):
        kernels.region_maxima(np.zeros((2, 3, 8), dtype=np.int8), np.zeros((1, 7), dtype=np.int8))


@pytest.mark.parametrize("n,r,d,t", [(1, 1, 8, 1), (7, 100, 256, 19), (3, 5, 13, 16), (2, 49, 64, 33), (0, 4, 8, 2), (300, 9, 24, 9)])
def test_region_maxima_of_float16_regions_in_float32(n, r, d, t):
    if not kernels.float16_regions():
        pytest.skip("no F16C on this CPU")
    rng = np.random.default_rng(n + r + d + t)
    regions, query = rng.standard_normal((n, r, d)).astype(np.float16), rng.standard_normal((t, d)).astype(np.float32)
    got = kernels.region_maxima(regions, query)
    assert got.shape == (n, t) and got.dtype == np.float32
    reference = np.einsum("nrd,td->nrt", regions.astype(np.float64), query.astype(np.float64)).max(1) if n else np.zeros((0, t))
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-4 * np.sqrt(d))


def test_float16_regions_without_f16c_are_refused(monkeypatch):
    monkeypatch.setattr(kernels, "float16_regions", lambda: False)
    with pytest.raises(ValueError, match="F16C"):
        kernels.region_maxima(np.zeros((1, 2, 8), dtype=np.float16), np.zeros((1, 8), dtype=np.float32))


def test_too_many_dimensions_are_refused():
    with pytest.raises(ValueError, match="at most 1024"):
        kernels.region_maxima(np.zeros((1, 1, 1025), dtype=np.int8), np.zeros((1, 1025), dtype=np.int8))


@pytest.mark.parametrize("threads", [1, 3])
def test_parts_on_several_threads_give_the_same_integers(threads, int8_kernel):
    before = torch.get_num_threads()
    rng = np.random.default_rng(threads)
    codes, query, rows = _int8(rng, 1001, 5, 16), _int8(rng, 3, 16), _int8(rng, 1001, 8, 16)
    columns = torch.from_numpy(np.ascontiguousarray(rows.transpose(0, 2, 1)))
    try:
        torch.set_num_threads(threads)
        maxima = kernels.region_maxima(codes, query)
        bounds = kernels.representative_bounds(columns, torch.from_numpy(query), torch.tensor([1.0, 0.0, 0.0]))
        picked = rng.integers(0, 1001, size=900)  # the in-place reads, in parts too
        in_place = kernels.representative_bounds(columns, torch.from_numpy(query), torch.tensor([1.0, 0.0, 0.0]), rows=picked)
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(maxima.astype(np.int64), _reference_maxima(codes, query))
    np.testing.assert_array_equal(bounds.numpy().astype(np.int64), _reference_maxima(rows, query)[:, 0])
    np.testing.assert_array_equal(in_place.numpy().astype(np.int64), _reference_maxima(rows, query)[picked, 0])


def test_the_benchmark_runs_and_finds_the_same_integers() -> None:
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_int8_kernels.py"
    done = subprocess.run([sys.executable, str(script), "--quick", "--repeats", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith("RESULT bound_speedup=")
    against_torch, _, against_float = done.stdout.partition("codes' MISA")  # the VNNI table follows, on CPUs with VNNI
    rows = [line for line in against_torch.splitlines() if line.strip().startswith(("bound,", "codes,", "in place,"))]
    assert len(rows) == 7 and all(float(row.split()[-1]) < 1e-6 for row in rows)
    vnni_rows = [line for line in against_float.splitlines() if line.strip().startswith(("codes,", "in place,"))]
    assert len(vnni_rows) == (6 if kernels.has_vnni() else 0) and ("same bits: True" in done.stdout) == kernels.has_vnni()


def test_the_bound_refuses_images_without_representatives_and_mismatched_queries():
    with pytest.raises(ValueError, match="at least one representative"):
        kernels.representative_bounds(torch.zeros(3, 8, 0, dtype=torch.int8), torch.zeros(1, 8, dtype=torch.int8), torch.ones(1))
    with pytest.raises(ValueError, match="expected p x 8 query centroids"):
        kernels.representative_bounds(torch.zeros(3, 8, 4, dtype=torch.int8), torch.zeros(2, 16, dtype=torch.int8), torch.ones(2))
    with pytest.raises(ValueError, match="int8 representatives, got torch.int16"):
        kernels.representative_bounds(torch.zeros(3, 8, 4, dtype=torch.int16), torch.zeros(2, 8, dtype=torch.int8), torch.ones(2))
    with pytest.raises(ValueError, match="and p weights"):
        kernels.representative_bounds(torch.zeros(3, 8, 4, dtype=torch.int8), torch.zeros(2, 8, dtype=torch.int8), torch.ones(3))


def test_the_bound_takes_each_images_scale():
    rng = np.random.default_rng(5)
    rows, query = _int8(rng, 300, 32, 16), _int8(rng, 4, 16)
    columns = torch.from_numpy(np.ascontiguousarray(rows.transpose(0, 2, 1)))
    weights, scales = torch.rand(4), torch.rand(300) + 0.5
    plain = kernels.representative_bounds(columns, torch.from_numpy(query), weights)
    torch.testing.assert_close(kernels.representative_bounds(columns, torch.from_numpy(query), weights, scales), plain * scales)
    with pytest.raises(ValueError, match="image scales: expected 300"):
        kernels.representative_bounds(columns, torch.from_numpy(query), weights, torch.ones(299))
    picked = np.array([299, 0, 17, 17, 5])
    np.testing.assert_array_equal(kernels.representative_bounds(columns, torch.from_numpy(query), weights, scales, picked).numpy(),
                                  kernels.representative_bounds(columns, torch.from_numpy(query), weights, scales).numpy()[picked])
    for bad in (np.array([300]), np.array([-1]), np.zeros((2, 2), dtype=np.int64)):
        with pytest.raises(ValueError, match="image indices in 0..299"):
            kernels.representative_bounds(columns, torch.from_numpy(query), weights, scales, bad)


@pytest.mark.parametrize("n,d,m", [(3, 16, 32), (2, 5, 7), (4, 1, 17), (1, 8, 48), (0, 16, 32)])
def test_packing_for_vnni_keeps_every_representative_as_words_of_four(n, d, m):
    """Runs on every CPU (numpy only): coordinate ``4g + j`` of representative ``s`` is byte ``j`` of word
    ``[g, s]``, offset by 128; padded coordinates are 0 (128), padded representatives repeat the last."""
    rng = np.random.default_rng(n + d + m)
    columns = torch.from_numpy(rng.integers(-128, 128, (n, d, m), dtype=np.int8))
    packed = kernels.PackedRepresentatives.of(columns)
    groups, width = -(-d // 4), -(-m // kernels.BOUND_LANES) * kernels.BOUND_LANES
    assert packed.data.shape == (n, groups, width, 4) and packed.shape == (n, d, m) and len(packed) == n
    assert torch.equal(packed.unpacked(), columns)
    full = np.zeros((n, groups * 4, width), dtype=np.int16)
    full[:, :d, :m] = columns.numpy()
    full[:, :d, m:] = columns.numpy()[:, :, m - 1: m]
    expected = (full + 128).reshape(n, groups, 4, width).transpose(0, 1, 3, 2)
    np.testing.assert_array_equal(packed.data, expected)


@pytest.mark.parametrize("n,m,d,p", [(1, 1, 8, 1), (37, 32, 32, 4), (5, 7, 24, 3), (300, 9, 64, 2), (4, 16, 16, 4),
                                     (20, 17, 32, 5), (9, 33, 8, 8), (3, 48, 1, 6), (1001, 32, 16, 4), (0, 32, 16, 4)])
@pytest.mark.parametrize("threads", [1, 2])
def test_the_vnni_bound_equals_the_float_kernel_bit_for_bit(n, m, d, p, threads):
    _vnni_or_skip()
    rng = np.random.default_rng(n * m + d + p)
    rows, query = rng.integers(-128, 128, (n, m, d), dtype=np.int8), _int8(rng, p, d)  # -128 too: unsigned 0
    columns = torch.from_numpy(np.ascontiguousarray(rows.transpose(0, 2, 1)))
    weights, scales = torch.rand(p) - 0.3, torch.rand(n) + 0.5
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        packed = kernels.representative_bounds(kernels.PackedRepresentatives.of(columns), torch.from_numpy(query), weights, scales)
        plain = kernels.representative_bounds(columns, torch.from_numpy(query), weights, scales)
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(packed.numpy(), plain.numpy())
    if n:
        for j in range(p):  # one-hot weights: each centroid's exact integer maximum
            one_hot = torch.zeros(p)
            one_hot[j] = 1.0
            got = kernels.representative_bounds(kernels.PackedRepresentatives.of(columns), torch.from_numpy(query), one_hot)
            np.testing.assert_array_equal(got.numpy().astype(np.int64), _reference_maxima(rows, query)[:, j])


def test_the_vnni_bound_stays_exact_at_the_largest_sums():
    _vnni_or_skip()
    d = kernels.EXACT_TERMS
    rows = np.full((2, 3, d), 127, dtype=np.int8)
    rows[1] = -127
    query = np.full((2, d), 127, dtype=np.int8)
    query[1, 1::2] = -126
    columns = torch.from_numpy(np.ascontiguousarray(rows.transpose(0, 2, 1)))
    for j in range(2):
        got = kernels.representative_bounds(kernels.PackedRepresentatives.of(columns), torch.from_numpy(query), torch.eye(2)[j])
        np.testing.assert_array_equal(got.numpy().astype(np.int64), _reference_maxima(rows, query)[:, j])


def test_packed_representatives_refuse_rows_bad_queries_and_bad_tables():
    packed = kernels.PackedRepresentatives.of(torch.zeros(3, 8, 4, dtype=torch.int8))
    with pytest.raises(ValueError, match="read whole, not by rows"):
        kernels.representative_bounds(packed, torch.zeros(1, 8, dtype=torch.int8), torch.ones(1), rows=np.array([0]))
    with pytest.raises(ValueError, match="expected p x 8 int8 query centroids"):
        kernels.representative_bounds(packed, torch.zeros(2, 16, dtype=torch.int8), torch.ones(2))
    with pytest.raises(ValueError, match="and p weights"):
        kernels.representative_bounds(packed, torch.zeros(2, 8, dtype=torch.int8), torch.ones(3))
    with pytest.raises(ValueError, match="image scales: expected 3"):
        kernels.representative_bounds(packed, torch.zeros(1, 8, dtype=torch.int8), torch.ones(1), torch.ones(2))
    for bad in (torch.zeros(3, 8, 0, dtype=torch.int8), torch.zeros(3, 8, 4, dtype=torch.int16), torch.zeros(8, 4, dtype=torch.int8)):
        with pytest.raises(ValueError, match="packing: expected N x d x m int8"):
            kernels.PackedRepresentatives.of(bad)


def test_prepared_representatives_follow_the_cpu(monkeypatch):
    """Packed where the CPU has VNNI, the contiguous columns elsewhere; VGS_NO_VNNI=1 says no."""
    probe = kernels.has_vnni.__wrapped__  # the CPU check itself, uncached
    columns = torch.from_numpy(_int8(np.random.default_rng(3), 5, 32, 16)).transpose(1, 2)  # 5 x 16 x 32, not contiguous
    monkeypatch.setattr(kernels, "has_vnni", lambda: False)
    plain = kernels.prepared_representatives(columns)
    assert isinstance(plain, torch.Tensor) and plain.is_contiguous() and torch.equal(plain, columns)
    monkeypatch.setattr(kernels, "has_vnni", lambda: True)
    packed = kernels.prepared_representatives(columns)
    assert isinstance(packed, kernels.PackedRepresentatives) and torch.equal(packed.unpacked(), columns)
    monkeypatch.setenv("VGS_NO_VNNI", "1")
    assert probe() is False


def test_the_bound_compiles_where_llvm_cannot_list_the_cpu_features(monkeypatch):
    import llvmlite.binding as llvm

    def unknown():
        raise RuntimeError("failed to get host cpu features")

    monkeypatch.setattr(llvm, "get_host_cpu_features", unknown)
    monkeypatch.setattr(kernels, "_compile_bounds", kernels._compile_bounds.__wrapped__)  # a fresh compile
    rng = np.random.default_rng(7)
    rows, query = _int8(rng, 40, 17, 24), _int8(rng, 1, 24)
    columns = torch.from_numpy(np.ascontiguousarray(rows.transpose(0, 2, 1)))
    got = kernels.representative_bounds(columns, torch.from_numpy(query), torch.ones(1))
    np.testing.assert_array_equal(got.numpy().astype(np.int64), _reference_maxima(rows, query)[:, 0])


@pytest.mark.parametrize("dtype", [np.int8, np.float16])
def test_rows_read_in_place_across_parts_equal_the_gathered_rows(dtype, int8_kernel):
    """Images scattered over several chunk arrays, unsorted and repeated, on their leading coordinates:
    the kernel reads them where they are and gives the maxima of a gathered copy."""
    if dtype == np.float16 and not kernels.float16_regions():
        pytest.skip("no F16C on this CPU")
    rng = np.random.default_rng(7)
    parts = [(_int8(rng, n, 6, 40) if dtype == np.int8 else rng.standard_normal((n, 6, 40)).astype(np.float16)) for n in (5, 1, 0, 9)]
    arrays = kernels.StoredArrays(parts)
    ids, dims = np.array([14, 0, 5, 7, 14, 3]), 24
    rows = arrays.rows(ids, dims)
    gathered = np.concatenate(parts)[ids][:, :, :dims]
    assert rows.shape == (6, 6, dims) and np.array_equal(rows.gather(), gathered)
    query = _int8(rng, 9, dims) if dtype == np.int8 else rng.standard_normal((9, dims)).astype(np.float32)
    np.testing.assert_array_equal(kernels.region_maxima(rows, query), kernels.region_maxima(np.ascontiguousarray(gathered), query))


def test_leading_coordinates_copied_once_contiguous_and_equal():
    rng = np.random.default_rng(3)
    parts = [_int8(rng, n, 6, 40) for n in (5, 0, 9)]
    arrays = kernels.StoredArrays(parts)
    lead = arrays.leading(24)
    assert arrays.leading(24) is lead and arrays.leading(40) is arrays  # kept; every coordinate is the arrays
    assert lead.width == 24 and lead.nbytes == arrays.leading_bytes(24) == 14 * 6 * 24
    assert all(p.flags.c_contiguous for p in lead.parts)
    assert all(np.array_equal(a, p[:, :, :24]) for a, p in zip(lead.parts, parts))
    ids, query = np.array([13, 0, 4, 5, 13]), _int8(rng, 9, 24)
    np.testing.assert_array_equal(kernels.region_maxima(lead.rows(ids), query), kernels.region_maxima(arrays.rows(ids, 24), query))
    for dims in (0, 41):
        with pytest.raises(ValueError, match="1..40 leading dims"):
            arrays.leading(dims)


def test_stored_rows_refuse_bad_ids_dims_and_parts():
    parts = [np.zeros((3, 2, 8), dtype=np.int8), np.zeros((2, 2, 8), dtype=np.int8)]
    arrays = kernels.StoredArrays(parts)
    with pytest.raises(ValueError, match=r"ids in 0\.\.4"):
        arrays.rows(np.array([5]))
    with pytest.raises(ValueError, match="1..8 dims"):
        arrays.rows(np.array([0]), 9)
    with pytest.raises(ValueError, match="C-contiguous images"):
        kernels.StoredArrays([parts[0], np.zeros((2, 3, 8), dtype=np.int8)])
    with pytest.raises(ValueError, match="C-contiguous images"):
        kernels.StoredArrays([np.zeros((4, 8, 2), dtype=np.int8).transpose(0, 2, 1)])
