"""The centroid stage's image side, variant by variant, on a real gallery (issue 15; docs/benchmarks.md,
section 8, "The scenes gallery at 100k").

    python benchmarks/centroid_variants.py depths INDEX TRUTH.npy --variants means8x64,fps16x64,fps32x32 --queries 40
    python benchmarks/centroid_variants.py stage INDEX TRUTH.npy --variants 48/24/8,32/32/4 --candidates 1000,2000
    python benchmarks/centroid_variants.py profile INDEX TRUTH.npy --queries 60
    python benchmarks/centroid_variants.py leads INDEX TRUTH.npy --variants 64,32 --candidates 3000
    python benchmarks/centroid_variants.py copy INDEX TRUTH.npy --candidates 3000
    python benchmarks/centroid_variants.py ivf INDEX TRUTH.npy --queries 60

``depths``: how deep each ranking must go to hold each query's exhaustive top-10 (TRUTH: bench_scale.py
--truth), for image sides ``meansMxD`` (M k-means means of the regions, as the stage kept before) and
``fpsMxD`` (M farthest-point representative regions, vgs.centroids.representatives), both on the first D
principal coordinates of the index's codec, in float32, against 8 frame centroids.  ``stage``: the stage as
``vgs search`` runs it (int8, codes, exact re-rank), with ``m`` representatives, ``d`` dimensions and ``p``
frame centroids (``m/d/p``), side by side in one process: p50/p95 ms and agreement@10 (1 thread).
``profile``: the default stage's four steps timed (the bound and its top ``candidates``, MISA on their int8
codes' leading coordinates, then on all of them, the exact re-rank), after a warm-up pass, each query on 1 and on 2 torch threads back to back (the
order alternated), in one process.  ``leads``: the codes' first pass on each of ``--variants`` leading
coordinates, side by side in one process (:func:`leads`).  ``copy``: the default stage with the codes' leading
coordinates read from their own contiguous copy and in place, per query in one process (:func:`leading_copy`).  ``ivf``: a FAISS inverted
file (8-bit scalar quantizer) over every projected representative as a shortlist before the bound, against
the full bound timed in the same loop: whether the exhaustive top-10 stays inside the kept ``candidates``
(a lever measured and not kept; docs/benchmarks.md, "Where the centroid stage's time goes").
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vgs.centroids as stage  # noqa: E402
import vgs.search as search  # noqa: E402
from bench_scale import MODEL, run_stage  # noqa: E402


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
    rows = [list(map(int, r)) for r in truth]
    for variant in variants:
        m, d, p = (int(x) for x in variant.split("/"))
        search.REPRESENTATIVES = m
        search.PROJECTED_DIMS = d
        stage.FRAME_CENTROIDS = p  # read by stage.candidates at each call
        index = search.SearchIndex(folder)
        spoken = [index.captions_of([i]) for i in range(min(queries, len(rows)))]
        start = time.perf_counter()
        index.image_representatives()
        built = time.perf_counter() - start
        for count in candidates:
            got = run_stage(index, spoken, rows, "centroids", count)
            print(f"m={m} d={d} p={p} candidates={count}: p50 {got['p50']:.1f} ms, p95 {got['p95']:.1f} ms, "
                  f"agreement@10 {got['agreement']:.3f}, overlap {got['overlap']:.3f} (table built in {built:.0f} s)", flush=True)


def profile(index: search.SearchIndex, spoken: list[search.PackedFrames], count: int, rounds: int = 3) -> dict[int, list[list[float]]]:
    """Each query's four steps (and their total) in seconds, per thread count: ``{1: [...], 2: [...]}``."""
    table, basis, regions = index.image_representatives(), index.centroid_basis(), index.region_search()
    if regions.codes is None:
        sys.exit("profile: the index needs its int8 codes (bench_scale.py builds them)")
    scorer, lead_dims = search.EmbeddingScorer("misa"), regions.codec.leading(stage.CODE_LEAD_DIMS)
    depth = stage.CODE_RERANK_DEPTH

    def timed(frames: search.PackedFrames) -> list[float]:  # the four steps' seconds, then the total
        f = frames.frames.float()
        t = [time.perf_counter()]
        ids = stage.candidates(table, f, count, basis)  # the bound (in two passes over a large index) and its top
        t.append(time.perf_counter())
        if lead_dims is not None:  # as SearchIndex.centroid_candidates: the codes' leading coordinates first
            ids = stage.narrowed(ids, regions.code_scores(ids, f.numpy(), int8_query=True, dims=lead_dims), stage.CODE_LEAD_FACTOR * depth)
        t.append(time.perf_counter())
        kept = stage.narrowed(ids, regions.code_scores(ids, f.numpy(), int8_query=True), depth)
        t.append(time.perf_counter())
        search._chunked_scores(scorer, index, kept, frames)
        t.append(time.perf_counter())
        return list(np.diff(t)) + [t[-1] - t[0]]

    for frames in spoken:  # warm-up: the codes and regions paged in
        timed(frames)
    got: dict[int, list[list[float]]] = {1: [], 2: []}
    before = torch.get_num_threads()
    try:
        for r in range(rounds):  # each query on 1 and on 2 threads back to back, the order alternated
            for q, frames in enumerate(spoken):
                for threads in ((1, 2) if (q + r) % 2 == 0 else (2, 1)):
                    torch.set_num_threads(threads)
                    got[threads].append(timed(frames))
    finally:
        torch.set_num_threads(before)
    names = ("bound and top", f"codes' first {lead_dims} coordinates", "codes", "re-rank", "total")
    for threads, rows in got.items():
        print(f"{threads} thread(s): " + ", ".join(f"{n} {np.median([row[i] for row in rows]) * 1000:.1f}"
                                                 for i, n in enumerate(names)) + " ms (p50)", flush=True)
    ratios = [a[-1] / b[-1] for a, b in zip(got[1], got[2])]
    print(f"per-query total, 1 thread / 2 threads: median {np.median(ratios):.2f}x over {len(ratios)} pairs", flush=True)
    return got


def leads(index: search.SearchIndex, spoken: list[search.PackedFrames], truth: np.ndarray, widths: list[int],
          count: int, rounds: int = 2) -> None:
    """The codes' first pass on ``widths`` leading coordinates (``vgs.centroids.CODE_LEAD_DIMS``), side by side in
    one process (whole passes over the queries, the order alternated): p50/p95 ms and agreement@10, then how
    deep each exhaustive top-10 sits in that ranking of the ``count`` candidates."""
    rows, default = [list(map(int, r)) for r in truth[: len(spoken)]], stage.CODE_LEAD_DIMS
    regions, table, basis = index.region_search(), index.image_representatives(), index.centroid_basis()
    got: dict[int, list[dict]] = {w: [] for w in widths}
    try:
        for r in range(rounds):
            for width in widths if r % 2 == 0 else widths[::-1]:
                stage.CODE_LEAD_DIMS = width  # read by SearchIndex.centroid_candidates at each call
                got[width].append(run_stage(index, spoken, rows, "centroids", count))
    finally:
        stage.CODE_LEAD_DIMS = default
    for width in widths:
        deepest = []
        for frames, top in zip(spoken, rows):
            f = frames.frames.float()
            ids = stage.candidates(table, f, count, basis)
            order = ids[np.argsort(-regions.code_scores(ids, f.numpy(), int8_query=True, dims=width), kind="stable")]
            where = {int(i): p for p, i in enumerate(order)}
            deepest.append(max(where.get(i, count) for i in top))  # count: not among the candidates at all
        d = np.array(deepest)
        held = d[d < count]
        print(f"{width} coordinates: p50 {np.median([g['p50'] for g in got[width]]):.1f} ms, p95 "
              f"{np.median([g['p95'] for g in got[width]]):.1f} ms, agreement@10 {got[width][0]['agreement']:.3f}; "
              f"top-10 depth p50 {np.median(d):.0f}, p95 {np.percentile(d, 95):.0f}, max among held "
              f"{held.max() if len(held) else 0}, beyond {stage.CODE_LEAD_FACTOR * stage.CODE_RERANK_DEPTH} "
              f"{int((d >= stage.CODE_LEAD_FACTOR * stage.CODE_RERANK_DEPTH).sum())} of {len(d)}", flush=True)


def leading_copy(index: search.SearchIndex, spoken: list[search.PackedFrames], truth: np.ndarray, count: int,
                 rounds: int = 2) -> dict[str, list[float]]:
    """The default stage (``SearchIndex.search_audio``, ``count`` candidates) per query with the codes' leading
    coordinates read from their own contiguous copy (:meth:`vgs.kernels.StoredArrays.leading`) and in place
    (``RegionSearch.max_bytes`` set below the copy's size), back to back in one process, the order
    alternated: p50/p95 ms of each, the median per-query ratio, agreement@10 of each (which must match)."""
    regions, rows = index.region_search(), [set(map(int, r)) for r in truth[: len(spoken)]]
    budget = regions.max_bytes
    settings = {"own copy": budget, "in place": 0}
    got: dict[str, list[float]] = {name: [] for name in settings}
    same: dict[str, list[bool]] = {name: [] for name in settings}
    try:
        for name, limit in settings.items():  # warm-up: the copy made, the codes and regions paged in
            regions.max_bytes = limit
            index.search_audio(MODEL, spoken[0], k=10, candidates=count, first_stage="centroids")
        for r in range(rounds):
            for q, (frames, top) in enumerate(zip(spoken, rows)):
                for name in (list(settings) if (q + r) % 2 == 0 else list(settings)[::-1]):
                    regions.max_bytes = settings[name]
                    start = time.perf_counter()
                    hits = index.search_audio(MODEL, frames, k=10, candidates=count, first_stage="centroids")
                    got[name].append(time.perf_counter() - start)
                    same[name].append({h.index for h in hits} == top)
    finally:
        regions.max_bytes = budget
    for name, times in got.items():
        print(f"{name}: p50 {np.median(times) * 1000:.1f} ms, p95 {np.percentile(times, 95) * 1000:.1f} ms, "
              f"agreement@10 {np.mean(same[name][: len(spoken)]):.3f}", flush=True)
    ratios = [a / b for a, b in zip(got["own copy"], got["in place"])]
    print(f"per query, own copy / in place: median {np.median(ratios):.2f}x over {len(ratios)} pairs", flush=True)
    return got


def ivf(index: search.SearchIndex, spoken: list[search.PackedFrames], truth: np.ndarray, count: int) -> dict[str, list[tuple[bool, float, int]]]:
    """Per shortlist (and the full bound): for each query, whether its exhaustive top-10 is inside the kept
    ``count``, the seconds, and the images the shortlist held."""
    import faiss

    faiss.omp_set_num_threads(1)
    table, basis = index.image_representatives(), index.centroid_basis()
    n, m, d = table.shape
    vectors = np.ascontiguousarray(table.dequantize().reshape(-1, d).numpy())
    nlist = int(4 * np.sqrt(n * m))
    start = time.perf_counter()
    lists = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(d), d, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    lists.train(vectors[np.random.default_rng(0).choice(len(vectors), min(len(vectors), 40 * nlist), replace=False)])
    lists.add(vectors)
    print(f"inverted file: {nlist} lists over {len(vectors)} representatives, built in {time.perf_counter() - start:.0f} s", flush=True)
    results: dict[str, list[tuple[bool, float, int]]] = {}
    for q in range(min(len(spoken), len(truth))):
        frames = spoken[q].frames.float()
        answers = set(truth[q].tolist())
        start = time.perf_counter()
        full = set(torch.topk(stage.lower_bounds(table, frames, basis=basis), min(count, n)).indices.tolist())
        results.setdefault("full bound", []).append((answers <= full, time.perf_counter() - start, n))
        centroids, _ = stage.kmeans(frames[None], min(stage.FRAME_CENTROIDS, len(frames)))
        query = np.ascontiguousarray((centroids[0] @ basis.T).numpy())
        for nprobe, k in ((16, 2048), (16, 8192), (64, 8192), (256, 8192), (64, 32768), (256, 32768)):
            start = time.perf_counter()
            lists.nprobe = nprobe
            _, found = lists.search(query, k)
            owners = np.unique(found[found >= 0] // m)
            bounds = stage.lower_bounds(stage.Int8Representatives(table.columns[owners], table.scales[owners]), frames, basis=basis)
            kept = set(owners[torch.topk(bounds, min(count, len(owners))).indices.numpy()].tolist())
            results.setdefault(f"ivf nprobe={nprobe} K={k}", []).append((answers <= kept, time.perf_counter() - start, len(owners)))
    base = np.median([r[1] for r in results["full bound"]])
    for name, rows in results.items():
        print(f"{name:>26}: top-10 inside the kept {count} {np.mean([r[0] for r in rows]):.0%}, "
              f"{np.median([r[1] for r in rows]) * 1000:.1f} ms p50 ({np.median([r[1] for r in rows]) / base:.2f}x the full bound), "
              f"shortlist p50 {np.median([r[2] for r in rows]):.0f} images", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("depths", "stage", "profile", "leads", "copy", "ivf"))
    parser.add_argument("index", type=Path)
    parser.add_argument("truth", type=Path, help="the queries' exhaustive top-10s (bench_scale.py --truth)")
    parser.add_argument("--variants", default="", help="depths and stage: the variants to compare")
    parser.add_argument("--candidates", default="1000,2000")
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1 if args.mode in ("stage", "leads", "copy", "ivf") else 2)
    truth = np.load(args.truth, allow_pickle=False)
    variants = [v for v in args.variants.split(",") if v]
    if args.mode in ("depths", "stage", "leads") and not variants:
        parser.error(f"{args.mode}: --variants is required")
    if args.mode == "depths":
        depths(search.SearchIndex(args.index), truth, variants, min(args.queries, len(truth)))
    elif args.mode == "stage":
        stages(args.index, truth, variants, [int(c) for c in args.candidates.split(",") if c], args.queries)
    else:
        index = search.SearchIndex(args.index)
        spoken = [index.captions_of([i]) for i in range(min(args.queries, index.caption_count, len(truth)))]
        count = int(args.candidates.split(",")[-1])
        if args.mode == "profile":
            profile(index, spoken, count)
        elif args.mode == "leads":
            leads(index, spoken, truth, [int(v) for v in variants], count)
        elif args.mode == "copy":
            leading_copy(index, spoken, truth, count)
        else:
            ivf(index, spoken, truth, count)


if __name__ == "__main__":
    main()
