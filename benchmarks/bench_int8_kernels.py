"""Benchmark the search stages' int8 products (vgs.kernels) against ``torch._int_mm``, side by side.

    python benchmarks/bench_int8_kernels.py [--quick] [--repeats 7] [--threads 1]

The stage's shapes, per spoken query: the centroid bound over a 100,000-image gallery (32 representatives
of 32 int8 dimensions per image, 4 query centroids; ``vgs.kernels.representative_bounds``) and MISA on
the int8 codes of the 2,000 candidates it keeps (49 or 100 regions of 128 dimensions, about 22 frames;
``vgs.kernels.region_maxima``), on arrays in memory and as the search reads them: 2,000 of the gallery's
images read in place from its chunks (all 128 coordinates), and 3,000 on their 32 leading coordinates
(the search's first pass over the codes, from their contiguous copy).  The reference is what the library
ran before: one ``torch._int_mm`` per chunk (in place: on a gathered copy) and the max over each group.
The integers must agree exactly (the codes' ``diff`` is 0; the bound's weighted sums may differ by float32
rounding of their order).  Prints whether this CPU has VNNI: without it ``torch._int_mm`` is a reference
loop.  With VNNI it also times the bound's first pass (``--first-pass-images`` images of 16 x 32, the
search's ``Int8Representatives.lead``) packed for ``vpdpbusd`` against the float32 kernel, whose bounds
must be the same bits, and the codes' rows with the VNNI kernel against the float32 one (equal integers).  Ends with one ``RESULT`` line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_share_line, interleaved, machine_line, median, ratios, result_line, spread, table  # noqa: E402

from vgs import kernels  # noqa: E402
from vgs.kernels import StoredArrays, StoredRows  # noqa: E402

CHUNK = 2048  # images per torch._int_mm in the bound, as the library's torch path had it


def torch_bounds(rows: torch.Tensor, query: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``N x m x d`` int8, ``p x d`` int8, ``p`` weights -> ``N``: the old torch path of the bound."""
    n, m, d = rows.shape
    flat, q = rows.reshape(n * m, d), query.T.contiguous()
    out = torch.empty(n)
    for c0 in range(0, n, CHUNK):
        products = torch._int_mm(flat[c0 * m: (c0 + CHUNK) * m], q).view(-1, m, len(weights))
        out[c0: c0 + CHUNK] = products.amax(1).float() @ weights
    return out


def int8_instructions() -> bool:
    """Whether ``torch._int_mm`` runs on int8 instructions here (AVX-512 VNNI): without them it is a loop."""
    probe = getattr(torch.cpu, "_is_vnni_supported", None)
    return bool(probe is not None and probe())


def torch_maxima(codes: np.ndarray | StoredRows, query: np.ndarray) -> np.ndarray:
    """``n x R x d`` and ``T x d`` int8 -> ``n x T``: the old torch path of the codes' MISA, chunks of 1,024
    (stored rows: a gathered copy first, as that path had it)."""
    out = []
    codes = codes.gather() if isinstance(codes, StoredRows) else codes
    q = torch.from_numpy(query.T.copy())  # a fresh copy: strides _int_mm reads right even when d = 1
    for c0 in range(0, len(codes), 1024):
        part = codes[c0: c0 + 1024]
        products = torch._int_mm(torch.from_numpy(part.reshape(-1, part.shape[-1])), q)
        out.append(products.view(len(part), part.shape[1], -1).amax(1).float().numpy())
    return np.concatenate(out)


def maxima_case(name: str, codes: np.ndarray | StoredRows, frames: np.ndarray) -> tuple:
    """A row of the table: its name, the kernel's call and the reference's on the same codes and frames."""
    return name, lambda: kernels.region_maxima(codes, frames), lambda: torch_maxima(codes, frames)


def vnni_maxima(inputs: dict[str, tuple[str, np.ndarray | StoredRows, np.ndarray]], repeats: int) -> dict:
    """The codes' rows again (``{key: (name, codes, frames)}``), the VNNI kernel against the float32 one
    (``vnni=False``), interleaved; the integers must be equal."""
    rows_out, out = [], {}
    for key, (name, codes, frames) in inputs.items():
        calls = {"vnni": lambda: kernels.region_maxima(codes, frames),
                 "float": lambda: kernels.region_maxima(codes, frames, vnni=False)}
        if not np.array_equal(calls["vnni"](), calls["float"]()):
            raise SystemExit(f"{name}: the VNNI kernel's maxima differ from the float32 kernel's")
        times = interleaved(calls, repeats)
        speedup = median(ratios(times["float"], times["vnni"]))
        rows_out.append([name, spread(times["vnni"]), spread(times["float"]), f"{speedup:.2f}x"])
        out[f"{key}_vnni_speedup"] = speedup
    print(table(["codes' MISA", "VNNI kernel", "float32 kernel", "float32 / VNNI"], rows_out))
    return out


def after_torch_product(columns: torch.Tensor, query: torch.Tensor, weights: torch.Tensor, repeats: int) -> dict:
    """The bound alone, and right after a small torch product (4 x 256 by 256 x 32, the size of projecting a
    query's centroids): torch's OpenMP threads spin for milliseconds after one, and on more than one thread
    the kernel's pool thread then shares a core with a spinning one.  With 1 thread the two should match."""
    left, right = torch.randn(4, 256), torch.randn(256, 32)
    times = interleaved({"alone": lambda: kernels.representative_bounds(columns, query, weights),
                         "after": lambda: (left @ right, kernels.representative_bounds(columns, query, weights))}, repeats)
    print(f"bound on {torch.get_num_threads()} thread(s): alone {spread(times['alone'])}, "
          f"right after a torch product {spread(times['after'])} (torch's OpenMP threads spin after one)")
    return {"bound_alone_ms": median(times["alone"]) * 1000, "bound_after_torch_ms": median(times["after"]) * 1000}


def first_pass(images: int, repeats: int) -> dict:
    """The bound's first pass over ``images`` images of 16 x 32 int8 (4 centroids), packed for VNNI
    (:class:`vgs.kernels.PackedRepresentatives`) against the float32 kernel on the same columns,
    interleaved; the bounds must be equal bit for bit."""
    rng = np.random.default_rng(1)
    columns = torch.from_numpy(rng.integers(-127, 128, (images, 16, 32), dtype=np.int8))
    query, weights = torch.from_numpy(rng.integers(-127, 128, (4, 16), dtype=np.int8)), torch.tensor([0.4, 0.3, 0.2, 0.1])
    scales = torch.rand(images) + 0.5
    packed = kernels.PackedRepresentatives.of(columns)
    calls = {"packed": lambda: kernels.representative_bounds(packed, query, weights, scales),
             "float": lambda: kernels.representative_bounds(columns, query, weights, scales)}
    same = bool(np.array_equal(calls["packed"]().numpy(), calls["float"]().numpy()))
    times = interleaved(calls, repeats)
    speedup = median(ratios(times["float"], times["packed"]))
    print(f"first pass, {images:,} x 16 x 32: VNNI packed {spread(times['packed'])}, float32 kernel {spread(times['float'])}, "
          f"{speedup:.2f}x, same bits: {same}")
    if not same:
        raise SystemExit("the packed bound differs from the float32 kernel's")
    return {"first_pass_vnni_speedup": speedup, "first_pass_vnni_ms": median(times["packed"]) * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 images and 3 repeats")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the kernels split their images over as many)")
    parser.add_argument("--first-pass-images", type=int, default=None,
                        help="images in the VNNI first-pass row (default: the bound's; the harness's million: 1000000)")
    args = parser.parse_args()
    if args.first_pass_images is not None and not 1 <= args.first_pass_images <= 20_000_000:
        parser.error(f"--first-pass-images: expected 1..20,000,000 images (512 bytes each), got {args.first_pass_images}")
    torch.set_num_threads(args.threads)
    repeats, images = (3, 10_000) if args.quick else (args.repeats, 100_000)
    print(machine_line())
    print(f"int8 instructions for torch._int_mm (VNNI): {int8_instructions()}")
    rng = np.random.default_rng(0)
    rows = torch.from_numpy(rng.integers(-127, 128, (images, 32, 32), dtype=np.int8))
    columns = rows.transpose(1, 2).contiguous()
    query, weights = torch.from_numpy(rng.integers(-127, 128, (4, 32), dtype=np.int8)), torch.tensor([0.4, 0.3, 0.2, 0.1])
    cases = {"bound": (f"bound, {images:,} x 32 x 32, 4 centroids",
                       lambda: kernels.representative_bounds(columns, query, weights), lambda: torch_bounds(rows, query, weights))}
    maxima_inputs: dict[str, tuple] = {}  # the codes' rows: {key: (name, codes, frames)}
    for regions in (49, 100):
        codes, frames = rng.integers(-127, 128, (2000, regions, 128), dtype=np.int8), rng.integers(-127, 128, (22, 128), dtype=np.int8)
        maxima_inputs[f"codes{regions}"] = (f"codes, 2,000 x {regions} x 128, 22 frames", codes, frames)
    for regions in (49, 100):  # as the search reads them: in place from a gallery's chunks
        gallery = StoredArrays([rng.integers(-127, 128, (images // 5, regions, 128), dtype=np.int8) for _ in range(5)])
        frames = rng.integers(-127, 128, (22, 128), dtype=np.int8)
        maxima_inputs[f"inplace{regions}"] = (f"in place, 2,000 x {regions} x 128 of {images:,}",
                                              gallery.rows(np.sort(rng.choice(images, 2000, replace=False))), frames)
        maxima_inputs[f"lead{regions}"] = (f"in place, 3,000 x {regions} x 32 leading",
                                           gallery.leading(32).rows(np.sort(rng.choice(images, 3000, replace=False))),
                                           frames[:, :32].copy())
    cases.update({key: maxima_case(*case) for key, case in maxima_inputs.items()})
    rows_out, out = [], {}
    for key, (name, kernel, reference) in cases.items():
        got, want = np.asarray(kernel(), dtype=np.float64), np.asarray(reference(), dtype=np.float64)
        diff = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))  # the bound's weighted sums: float order
        times = interleaved({"kernel": kernel, "torch": reference}, repeats)
        speedup = median(ratios(times["torch"], times["kernel"]))
        rows_out.append([name, spread(times["kernel"]), spread(times["torch"]), f"{speedup:.2f}x", f"{diff:g}"])
        out[f"{key}_speedup"], out[f"{key}_ms"] = speedup, median(times["kernel"]) * 1000
    print(table(["product", "vgs.kernels", "torch._int_mm", "torch / kernel", "max diff / max"], rows_out))
    out.update(after_torch_product(columns, query, weights, repeats))
    if kernels.has_vnni():
        out.update(first_pass(args.first_pass_images or images, repeats))
        out.update(vnni_maxima(maxima_inputs, repeats))
    else:
        print("first pass in VNNI: this CPU has no AVX-512 VNNI (the float32 kernel runs)")
    print(cpu_share_line())
    print(result_line(out))


if __name__ == "__main__":
    main()
