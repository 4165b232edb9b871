"""The centroid stage's image side, variant by variant, on a real gallery (issue 15; docs/benchmarks.md,
section 8, "The scenes gallery at 100k").

    python benchmarks/centroid_variants.py depths INDEX TRUTH.npy --variants means8x64,fps16x64,fps32x32 --queries 40
    python benchmarks/centroid_variants.py stage INDEX TRUTH.npy --variants 48/24/8,32/32/4 --candidates 1000,2000

``depths``: how deep each ranking must go to hold each query's exhaustive top-10 (TRUTH: bench_scale.py
--truth), for image sides ``meansMxD`` (M k-means means of the regions, as the stage kept before) and
``fpsMxD`` (M farthest-point representative regions, vgs.centroids.representatives), both on the first D
principal coordinates of the index's codec, in float32, against 8 frame centroids.  ``stage``: the stage as
``vgs search`` runs it (int8, codes, exact re-rank), with ``m`` representatives, ``d`` dimensions and ``p``
frame centroids (``m/d/p``), side by side in one process: p50/p95 ms and agreement@10 (1 thread).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vgs.centroids as stage  # noqa: E402
import vgs.search as search  # noqa: E402
from bench_scale import run_stage  # noqa: E402


def depths(index: search.SearchIndex, truth: np.ndarray, variants: list[str], queries: int) -> None:
    codec = index.region_search().codec
    if codec is None:
        sys.exit("depths: the index needs its int8 codes (bench_scale.py builds them)")
    basis = torch.from_numpy(codec.basis)  # the codec's principal rows
    widest = max(int(v[len("fps"):].split("x")[0]) for v in variants if v.startswith("fps")) if any(
        v.startswith("fps") for v in variants) else 1
    fps_parts, mean_parts = [], {}
    for regions in index.image_regions:
        r = torch.from_numpy(np.asarray(regions[:], dtype=np.float32))  # n x R x D
        picks = stage.representatives(r, widest)
        fps_parts.append((r.gather(1, picks[..., None].expand(-1, -1, r.shape[2])) @ basis.T).half())
        for v in variants:
            if v.startswith("means"):
                m = int(v[len("means"):].split("x")[0])
                mean_parts.setdefault(m, []).append((stage.kmeans(r, m)[0] @ basis.T).half())
    tables = {"fps": torch.cat(fps_parts)} | {f"means{m}": torch.cat(p) for m, p in mean_parts.items()}
    every = np.arange(index.image_count)
    print(f"{'image side':>12}  depth p50    p95    max  within 1,000  within 2,000", flush=True)
    for v in variants:
        kind, size = ("fps", v[3:]) if v.startswith("fps") else (v.split("x")[0], v.split("x")[1])
        m, d = (int(size.split("x")[0]), int(size.split("x")[1])) if kind == "fps" else (None, int(size))
        table = (tables["fps"][:, :m] if kind == "fps" else tables[kind])[..., :d].float()
        found = []
        with torch.no_grad():
            for q in range(queries):
                bounds = stage.lower_bounds(table, index.captions_of([q]).frames.float(), p=8, basis=basis[:d]).numpy()
                rank = np.empty(len(bounds), dtype=np.int64)
                rank[np.argsort(-bounds, kind="stable")] = every
                found.append(int(rank[truth[q]].max()) + 1)
        d_ = np.asarray(found)
        print(f"{v:>12}  {np.median(d_):9.0f} {np.percentile(d_, 95):6.0f} {d_.max():6d}  {np.mean(d_ <= 1000):12.0%}  "
              f"{np.mean(d_ <= 2000):12.0%}", flush=True)


def stages(folder: Path, truth: np.ndarray, variants: list[str], candidates: list[int], queries: int) -> None:
    lower_bounds = stage.lower_bounds
    rows = [list(map(int, r)) for r in truth]
    for variant in variants:
        m, d, p = (int(x) for x in variant.split("/"))
        search.REPRESENTATIVES = m
        search.PROJECTED_DIMS = d
        stage.lower_bounds = functools.partial(lower_bounds, p=p)
        index = search.SearchIndex(folder)
        spoken = [index.captions_of([i]) for i in range(min(queries, len(rows)))]
        start = time.perf_counter()
        index.image_representatives()
        built = time.perf_counter() - start
        for count in candidates:
            got = run_stage(index, spoken, rows, "centroids", count)
            print(f"m={m} d={d} p={p} candidates={count}: p50 {got['p50']:.1f} ms, p95 {got['p95']:.1f} ms, "
                  f"agreement@10 {got['agreement']:.3f}, overlap {got['overlap']:.3f} (table built in {built:.0f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("depths", "stage"))
    parser.add_argument("index", type=Path)
    parser.add_argument("truth", type=Path, help="the queries' exhaustive top-10s (bench_scale.py --truth)")
    parser.add_argument("--variants", required=True)
    parser.add_argument("--candidates", default="1000,2000")
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1 if args.mode == "stage" else 2)
    truth = np.load(args.truth, allow_pickle=False)
    variants = [v for v in args.variants.split(",") if v]
    if args.mode == "depths":
        depths(search.SearchIndex(args.index), truth, variants, min(args.queries, len(truth)))
    else:
        stages(args.index, truth, variants, [int(c) for c in args.candidates.split(",") if c], args.queries)


if __name__ == "__main__":
    main()
