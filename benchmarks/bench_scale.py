"""Voice search at scale (issue 15): agreement@10 with exhaustive MISA, latency and bytes per image of each first stage.

    python benchmarks/scale_data.py DATA_DIR RUN REAL_INDEX --images 1000 --captions 1000   # once: real encodings
    python benchmarks/bench_scale.py REAL_INDEX [--queries 200] [--sizes 10000] [--synthetic-queries 10]

REAL_INDEX is an ordinary index folder with spoken captions (``vgs index RUN --images ... --captions ...``
or ``scale_data.py``, which reads a data set's cached trunk outputs and log-mels): its regions and the
frames of its captions are a trained model's, and its captions are the queries (the first
``--queries``).  Every query's exhaustive MISA top-10 is the reference; for each first stage the
benchmark reports p50/p95 latency of ``SearchIndex.search_audio`` (query encoding excluded: see
bench_search.py), agreement@10 (share of queries whose top-10 set equals the exhaustive one) and
top-10 overlap.  Stages: ``exact`` (the default), ``pooled`` (500 candidates), ``compact`` (int8 PCA
codes, ``--codes`` dims: the codes are written into REAL_INDEX once) and, as a figure only, MISA on
FAISS product-quantization codes (``--pq`` bytes per region) decoded: what a PQ store would give.

``--sizes``: synthetic galleries (:func:`scale_data.synthetic_regions`: every image a real image's
region set with a third of its regions swapped for another real image's, plus noise shaped like the
real principal spectrum, renormalized to the real norms) written in the index layout, searched with
the real queries' frames.  Their agreement is NOT a trained model's on real photos.  ``--cascade-sizes``:
the centroid stage's latency alone on synthetic galleries held in memory (:func:`cascade_latency`; how
``p50_ms_1m`` is measured).  Threads: ``--threads`` (default 1)
(torch, FAISS); ends with one ``RESULT`` line whose keys say real or synthetic.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_share_line, machine_line, percentile, result_line, table  # noqa: E402
from scale_data import CHUNK, synthetic_regions  # noqa: E402

from vgs.kernels import StoredArrays  # noqa: E402
from vgs.io import load_npy, save_npy, write_json  # noqa: E402
from vgs.centroids import COARSE_DIMS, CODE_LEAD_DIMS, CODE_RERANK_DEPTH, Int8Representatives, candidates as centroid_candidates, lead_bounds, lower_bounds  # noqa: E402
from vgs.search import DEFAULT_CANDIDATES, INDEX_FORMAT, EmbeddingScorer, SearchIndex, write_image_chunk  # noqa: E402
from vgs.similarity import PackedFrames  # noqa: E402

MODEL = EmbeddingScorer("misa")


def label(n: int) -> str:
    if n % 1_000_000 == 0 and n:
        return f"{n // 1_000_000}m"
    return f"{n // 1000}k" if n % 1000 == 0 and n >= 1000 else str(n)


def run_stage(index: SearchIndex, queries: list[PackedFrames], truth: list[list[int]], stage: str, candidates: int = 500) -> dict:
    """p50/p95 ms, agreement@10 and overlap of one first stage (one warm-up query first)."""
    index.search_audio(MODEL, queries[0], k=10, first_stage=stage, candidates=candidates)
    times, same, overlap = [], [], []
    with torch.no_grad():
        for frames, full in zip(queries, truth):
            start = time.perf_counter()
            hits = [h.index for h in index.search_audio(MODEL, frames, k=10, first_stage=stage, candidates=candidates)]
            times.append(time.perf_counter() - start)
            same.append(set(hits) == set(full))
            overlap.append(len(set(hits) & set(full)) / 10)
    return {"p50": percentile(times, 50) * 1000, "p95": percentile(times, 95) * 1000,
            "agreement": float(np.mean(same)), "overlap": float(np.mean(overlap))}


def exhaustive(index: SearchIndex, queries: list[PackedFrames], cache: Path | None = None,
               timed: int | None = None) -> tuple[list[list[int]], list[float]]:
    """Each query's exhaustive MISA top-10, and the seconds the exhaustive search took per query.

    ``cache``: an ``.npy`` of earlier top-10s for the first queries of the same index; the missing ones
    are computed and the file extended (atomically).  ``timed``: time only that many queries one by one
    (``SearchIndex.search_audio(exhaustive=True)``, 7.6 s a query at 100k images on one thread) and
    score the rest all at once: one pass over the regions for every query (:func:`exhaustive_top10`)."""
    known = load_npy(cache) if cache is not None and cache.is_file() else np.zeros((0, 10), dtype=np.int64)
    if known.ndim != 2 or known.shape[1] != 10 or (len(known) and int(known.max()) >= index.image_count):
        raise SystemExit(f"{cache}: not the top-10s of this index's queries")
    truth, times = [list(map(int, row)) for row in known[: len(queries)]], []
    for frames in queries[len(truth):][: timed]:
        start = time.perf_counter()
        truth.append([h.index for h in index.search_audio(MODEL, frames, k=10, exhaustive=True)])
        times.append(time.perf_counter() - start)
    if len(truth) < len(queries):
        truth += exhaustive_top10(index, queries[len(truth):])
    if cache is not None and len(truth) > len(known):
        save_npy(cache, np.asarray(truth, dtype=np.int64))
    return truth, times


def exhaustive_top10(index: SearchIndex, queries: list[PackedFrames], chunk: int = 2048) -> list[list[int]]:
    """The exhaustive MISA top-10 of many queries in one pass over the gallery's regions: each chunk of
    images is scored against every query at once (``n x Q``), so the regions are read once, not once a
    query.  Ties go to the lower image index, as in ``search_audio``."""
    captions = PackedFrames.cat(queries)
    scores = np.empty((index.image_count, len(queries)), dtype=np.float32)
    for c0 in range(0, index.image_count, chunk):
        ids = np.arange(c0, min(c0 + chunk, index.image_count))
        scores[ids] = MODEL.scores(index.regions_of(ids), captions).numpy()
    every = np.arange(index.image_count)
    return [np.lexsort((every, -scores[:, q]))[:10].tolist() for q in range(len(queries))]


def pq_agreement(index: SearchIndex, queries: list[PackedFrames], truth: list[list[int]], m: int) -> dict:
    """Top-10 on FAISS PQ (``m`` bytes per region) decoded regions, against the exhaustive top-10."""
    import faiss

    regions = np.concatenate([np.asarray(r, dtype=np.float32) for r in index.image_regions])  # n x R x D
    n, r, d = regions.shape
    if d % m:
        return {"agreement": float("nan"), "overlap": float("nan"), "bytes": r * m}
    flat = regions.reshape(-1, d)
    pq = faiss.index_factory(d, f"PQ{m}", faiss.METRIC_INNER_PRODUCT)
    pq.train(flat[np.random.default_rng(0).choice(len(flat), min(len(flat), 20000), replace=False)])
    pq.add(flat)
    decoded = pq.reconstruct_n(0, pq.ntotal).reshape(n, r, d)
    same, overlap = [], []
    for frames, full in zip(queries, truth):
        scores = (decoded @ frames.frames.numpy().T).max(1).mean(1)
        top = np.lexsort((np.arange(n), -scores))[:10]
        same.append(set(top.tolist()) == set(full))
        overlap.append(len(set(top.tolist()) & set(full)) / 10)
    return {"agreement": float(np.mean(same)), "overlap": float(np.mean(overlap)), "bytes": r * m}


def stage_bytes(folder: Path) -> dict[str, float]:
    """Bytes per image on disk that each stage reads: exact (regions), compact (codes), pooled, centroids
    (regions for the final re-rank and the representatives' vectors, their indices, and the codes it
    narrows the candidates on).  Regions: the
    ``regions.npy`` files and, for an int8 index, their ``scales.npy``."""
    images = folder / "images"
    count = max(1, SearchIndex(folder).image_count)
    size = {kind: sum(p.stat().st_size for p in images.glob(f"*{kind}")) for kind in
            (".regions.npy", ".scales.npy", ".pooled.npy", ".representatives.npy", ".codes.npy", ".errors.npy", ".json")}
    size[".regions.npy"] += size.pop(".scales.npy")
    codec = sum(p.stat().st_size for p in folder.glob("codec*"))
    every = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and "captions" not in p.relative_to(folder).parts)
    return {"index": every / count,  # everything but the spoken captions: what `vgs index` of a photo folder writes
            "exact": (size[".regions.npy"] + size[".json"]) / count,
            "compact": (size[".codes.npy"] + size[".errors.npy"] + size[".json"] + codec) / count,
            "pooled": (size[".regions.npy"] + size[".pooled.npy"] + size[".json"]) / count,
            "centroids": (size[".regions.npy"] + size[".representatives.npy"] + size[".codes.npy"] + size[".errors.npy"]
                          + size[".json"] + codec) / count}


def cascade_gallery(index: SearchIndex, size: int, seed: int = 0) -> tuple[Int8Representatives, np.ndarray]:
    """``size`` synthetic images as the centroid stage holds them in memory: projected representatives
    (``size x m x d`` int8, one scale per image, :class:`vgs.centroids.Int8Representatives`) and int8 region
    codes (``size x R x d_code``).

    Drawn from the real index (which needs codes): each synthetic image is a random real image's
    projected representatives plus Gaussian noise of 0.35 of each coordinate's spread, and the same real
    image's codes with a random third of its regions taken from a second real image.
    """
    real_side = index.image_representatives().dequantize().numpy()  # n x m x d
    regions = index.region_search()
    if regions.codes is None:
        raise SystemExit("cascade latency: the real index needs int8 codes (bench_scale builds them with --stages centroids)")
    real_codes = np.concatenate([np.asarray(c) for c, _ in regions.codes])  # n x R x dc
    n = len(real_codes)
    rng = np.random.default_rng(seed)
    spread = real_side.reshape(-1, real_side.shape[-1]).std(0).astype(np.float32)
    parts = []
    codes = np.empty((size, *real_codes.shape[1:]), dtype=np.int8)
    for c0 in range(0, size, 65536):
        count = min(65536, size - c0)
        base, other = rng.integers(0, n, count), rng.integers(0, n, count)
        parts.append(Int8Representatives.quantize(torch.from_numpy(real_side[base] + 0.35 * spread * rng.standard_normal(
            (count, *real_side.shape[1:]), dtype=np.float32))))
        mix = rng.random((count, real_codes.shape[1])) < 1 / 3
        codes[c0: c0 + count] = np.where(mix[:, :, None], real_codes[other], real_codes[base])
    return Int8Representatives.cat(parts, *real_side.shape[1:]), codes


def cascade_latency(index: SearchIndex, queries: list[PackedFrames], size: int, candidates: int, seed: int = 0,
                    precision: str = "int8", gallery: tuple[Int8Representatives, np.ndarray] | None = None) -> dict:
    """p50/p95 ms of the centroid stage's cascade (:func:`vgs.centroids.candidates`, as
    :meth:`SearchIndex.centroid_candidates` calls it, then the exact re-rank) on ``size`` synthetic images
    (:func:`cascade_gallery`; pass ``gallery`` to time several precisions on one draw).

    Latency only: the stage's own :func:`vgs.centroids.candidates` (the bound over every image, the top
    ``candidates``, MISA on their codes' leading coordinates, then on all of them, the best ``CODE_RERANK_DEPTH``), then those scored on
    full-precision regions (here a real image's), so the cost is the stage's; the rankings are not a
    real model's.  ``precision="float32"`` runs the stage as it was before its int8 products (float32
    centroids, float code scores), for a side-by-side figure.
    """
    if precision not in ("int8", "float32"):
        raise SystemExit(f"cascade precision: expected int8 or float32, got {precision!r}")
    table, codes = gallery if gallery is not None else cascade_gallery(index, size, seed)
    held = table if precision == "int8" else table.dequantize()
    held_bytes = table.values.nbytes + table.scales.nbytes if precision == "int8" else held.nbytes
    int8_query, basis, regions = precision == "int8", index.centroid_basis(), index.region_search()
    stored = StoredArrays.of(codes)  # read in place by the kernel, as an index's chunks are
    dims = regions.codec.leading(CODE_LEAD_DIMS)  # as SearchIndex.centroid_candidates: the leading coordinates first,
    lead_codes = None if dims is None else stored.leading(dims)  # from their own copy, made here before the timed queries
    times = []
    with torch.no_grad():
        for q, frames in enumerate(queries):
            start = time.perf_counter()
            f = frames.frames.float()
            codec, query = regions.codec, f.numpy()
            lead = None
            if lead_codes is not None:
                lead = lambda ids: codec.misa(lead_codes.rows(ids), query, int8_query=int8_query, dims=dims)  # noqa: E731
            best = centroid_candidates(held, f, candidates, basis, lambda ids: codec.misa(stored.rows(ids), query, int8_query=int8_query),
                                       CODE_RERANK_DEPTH, lead)
            MODEL.scores(index.regions_of(best % index.image_count, as_stored=True), frames)
            if q:  # the first query warms up
                times.append(time.perf_counter() - start)
    return {"p50": percentile(times, 50) * 1000, "p95": percentile(times, 95) * 1000, "gib": (held_bytes + codes.nbytes + (lead_codes.nbytes if lead_codes is not None else 0)) / 2**30}


def bound_depths(index: SearchIndex, queries: list[PackedFrames], truth: list[list[int]]) -> dict[str, np.ndarray]:
    """For each query, how deep each ranking of the centroid stage must go to hold its exhaustive top-10:
    the centroid bound on float32 and on int8 representatives (both projected as the index projects them)
    and on the first pass's leading coordinates, and MISA on the int8 codes with the query in float32 and
    in int8, and on their leading coordinates (when the index has codes).
    ``{ranking: depths}`` (1-based)."""
    table, basis = index.image_representatives(), index.centroid_basis()
    float_table, regions = table.dequantize(), index.region_search()
    every = np.arange(index.image_count)
    rankings = {
        "bound float32": lambda f: lower_bounds(float_table, f, basis=basis).numpy(),
        "bound int8": lambda f: lower_bounds(table, f, basis=basis).numpy(),
    }
    if table.shape[2] > COARSE_DIMS:  # the bound's first pass, on its leading coordinates
        rankings[f"bound int8, first {COARSE_DIMS} dims"] = lambda f: lead_bounds(table, f, basis).numpy()
    if regions.codes is not None:
        rankings["codes, float32 query"] = lambda f: regions.code_scores(every, f.numpy())
        rankings["codes, int8 query"] = lambda f: regions.code_scores(every, f.numpy(), int8_query=True)
        if regions.codec.leading(CODE_LEAD_DIMS) is not None:
            rankings[f"codes, first {CODE_LEAD_DIMS} dims, int8 query"] = lambda f: regions.code_scores(
                every, f.numpy(), int8_query=True, dims=CODE_LEAD_DIMS)
    depths: dict[str, list[int]] = {name: [] for name in rankings}
    with torch.no_grad():
        for frames, full in zip(queries, truth):
            f = frames.frames.float()
            for name, scores in rankings.items():
                rank = np.empty(index.image_count, dtype=np.int64)
                rank[np.argsort(-scores(f), kind="stable")] = every
                depths[name].append(int(rank[full].max()) + 1)
    return {name: np.asarray(d) for name, d in depths.items()}


def write_synthetic(folder: Path, real: np.ndarray, count: int, grid: tuple[int, int]) -> None:
    """A synthetic index of ``count`` images drawn from ``real`` (``n x R x D``), in IndexWriter's layout."""
    meta = {"format": INDEX_FORMAT, "checkpoint": "synthetic", "checkpoint_sha256": "synthetic", "embed_dim": real.shape[2],
            "similarity": "misa", "image_chunks": [], "caption_chunks": [], "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    for c0 in range(0, count, CHUNK):
        regions = torch.from_numpy(synthetic_regions(real, c0, min(CHUNK, count - c0)))
        name = f"chunk-{len(meta['image_chunks']):05d}"
        write_image_chunk(folder, name, regions, [f"/synthetic/{i:07d}.jpg" for i in range(c0, c0 + len(regions))], grid)
        meta["image_chunks"].append(name)
    write_json(folder / "index.json", meta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("index", type=Path, help="a real index with spoken captions (scale_data.py or vgs index)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--codes", type=int, default=128)
    parser.add_argument("--pq", type=int, default=128)
    parser.add_argument("--sizes", default="10000", help="synthetic gallery sizes, comma-separated ('' for none)")
    parser.add_argument("--synthetic-queries", type=int, default=10)
    parser.add_argument("--stages", default="exact,centroids,pooled,compact", help="first stages; centroids and pooled "
                        "run once per --candidates value")
    parser.add_argument("--candidates", default="500", help="candidates re-ranked by the centroids and pooled stages, "
                        "comma-separated")
    parser.add_argument("--threads", type=int, default=1, help="torch and FAISS threads")
    parser.add_argument("--truth", type=Path, help="cache of the real queries' exhaustive top-10s (.npy): read, "
                        "extended and kept across runs")
    parser.add_argument("--cascade-sizes", default="", help="synthetic gallery sizes held in memory for the centroid "
                        "stage's latency, comma-separated (e.g. 100000,1000000; needs about 8.3 GiB per million images)")
    parser.add_argument("--timed-exhaustive", type=int, default=None, help="time this many exhaustive searches one by "
                        "one; the other queries' exhaustive top-10s are computed all at once (default: time all)")
    parser.add_argument("--depth-queries", type=int, default=None, help="queries for the depth table (default: all)")
    parser.add_argument("--cascade-precision", default="int8", help="int8 (the stage as the index runs it) and/or "
                        "float32 (as it was before its int8 products), comma-separated")
    args = parser.parse_args()
    import faiss

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    print(machine_line())
    index = SearchIndex(args.index)
    if not index.caption_count:
        sys.exit(f"{args.index}: no spoken captions to use as queries")
    if args.codes and ("compact" in args.stages or "centroids" in args.stages or args.cascade_sizes):
        index.build_codes(args.codes)  # once: kept in the folder (the centroid stage narrows its candidates on them)
        index = SearchIndex(args.index)
    queries = [index.captions_of([i]) for i in range(min(args.queries, index.caption_count))]
    stages = [s for s in args.stages.split(",") if s]
    truth, exhaustive_s = exhaustive(index, queries, args.truth, args.timed_exhaustive)
    results: dict[str, object] = {}
    rows = []
    real_n = label(index.image_count)
    counts = [int(c) for c in args.candidates.split(",") if c]
    runs = [(stage, c) for stage in stages for c in (counts if stage in ("centroids", "pooled") else [0])]
    for stage, c in runs:
        if stage == "exact" and index.region_search().index_bytes() > index.region_search().max_bytes:
            print(f"exact: skipped, its in-memory region index needs {index.region_search().index_bytes() / 2**30:.1f} GiB")
            continue
        got = run_stage(index, queries, truth, stage, c or 500)
        name = f"{stage}@{c}" if c else stage
        rows.append([name, f"{got['p50']:.1f}", f"{got['p95']:.1f}", f"{got['agreement']:.1%}", f"{got['overlap']:.1%}"])
        results[f"real_agreement10_{real_n}_{name}"] = got["agreement"]
        results[f"real_p50_ms_{real_n}_{name}"] = got["p50"]
        results[f"real_p95_ms_{real_n}_{name}"] = got["p95"]
        if index.image_count == 100_000 and name == f"centroids@{DEFAULT_CANDIDATES}":  # the default stage at 100k
            results.update(agreement10_100k=got["agreement"], p50_ms_100k=got["p50"], p95_ms_100k=got["p95"])
    if exhaustive_s:  # (none when every query's top-10 came from --truth)
        rows.append(["exhaustive", f"{percentile(exhaustive_s, 50) * 1000:.1f}", f"{percentile(exhaustive_s, 95) * 1000:.1f}", "100%", "100%"])
    sizes = stage_bytes(args.index)
    print(f"\nreal: {args.index}, {index.image_count} images (grid {index.grid}, D={index.meta['embed_dim']}, "
          f"{index.meta['region_precision']} regions), "
          f"{len(queries)} spoken queries; {args.threads} thread(s)")
    print(table(["first stage", "p50 ms", "p95 ms", "agreement@10", "top-10 overlap"], rows))
    if "centroids" in stages and args.depth_queries != 0:
        depth_rows = []
        for name, d in bound_depths(index, queries[: args.depth_queries], truth).items():
            depth_rows.append([name, f"{np.median(d):.0f}", f"{np.percentile(d, 95):.0f}", f"{d.max()}",
                               *(f"{np.mean(d <= c):.1%}" for c in (100, 500, 1000, 2000))])
            results[f"depth_p50_{name.replace(' ', '_').replace(',', '')}"] = float(np.median(d))
        print("\nhow deep each ranking must go to hold the exhaustive top-10 (real queries):")
        print(table(["ranking", "p50", "p95", "max", "within 100", "within 500", "within 1000", "within 2000"], depth_rows))
    pq = pq_agreement(index, queries, truth, args.pq) if args.pq else None
    print(f"bytes per image on disk: the whole index {sizes['index']:.0f} (captions excluded); read by: exact {sizes['exact']:.0f}, centroids {sizes['centroids']:.0f}, pooled {sizes['pooled']:.0f}, "
          f"compact (codes {args.codes} dims + errors + paths) {sizes['compact']:.0f}")
    if pq:
        print(f"PQ{args.pq} decoded (figure only, not a stage): {pq['bytes']} B of codes per image, agreement@10 "
              f"{pq['agreement']:.1%}, overlap {pq['overlap']:.1%}")
        results[f"real_pq{args.pq}_agreement10_{real_n}"] = pq["agreement"]
    # the key: the whole index folder (regions, codes, representatives, pooled vectors, FAISS files, paths)
    results["bytes_per_image"] = sizes["index"]
    results["bytes_per_image_exact"] = sizes["exact"]
    results["bytes_per_image_centroids"] = sizes["centroids"]
    real = np.concatenate([np.asarray(r, dtype=np.float32) for r in index.image_regions]) if args.sizes else None
    for size in [int(s) for s in args.sizes.split(",") if s]:
        folder = Path(tempfile.mkdtemp(prefix="vgs-scale-"))
        try:
            began = time.perf_counter()
            write_synthetic(folder, real, size, index.grid)
            synth = SearchIndex(folder)
            written = time.perf_counter() - began
            subset = queries[: args.synthetic_queries]
            s_truth, s_times = exhaustive(synth, subset)
            rows = []
            for stage in [s for s in stages if s != "compact"]:
                began = time.perf_counter()
                got = run_stage(synth, subset, s_truth, stage, counts[0] if counts else 500)
                rows.append([stage, f"{got['p50']:.1f}", f"{got['p95']:.1f}", f"{got['agreement']:.0%} of {len(subset)}",
                             f"{got['overlap']:.0%}", f"{time.perf_counter() - began:.0f}"])
                results[f"synthetic_agreement10_{label(size)}_{stage}"] = got["agreement"]
                results[f"synthetic_p50_ms_{label(size)}_{stage}"] = got["p50"]
                results[f"synthetic_p95_ms_{label(size)}_{stage}"] = got["p95"]
            rows.append(["exhaustive", f"{percentile(s_times, 50) * 1000:.1f}", f"{percentile(s_times, 95) * 1000:.1f}", "", "", ""])
            print(f"\nsynthetic (statistics of the real index), {size} images, written in {written:.0f} s; {len(subset)} real queries")
            print(table(["first stage", "p50 ms", "p95 ms", "agreement@10", "overlap", "stage total s"], rows))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    for size in [int(s) for s in args.cascade_sizes.split(",") if s]:
        gallery = cascade_gallery(index, size)  # drawn once, timed at every precision
        for precision in args.cascade_precision.split(","):
            got = cascade_latency(index, queries[: max(2, args.synthetic_queries)], size, counts[0] if counts else 2000,
                                  precision=precision, gallery=gallery)
            print(f"\ncentroid stage latency ({precision}), {size} synthetic images in memory ({got['gib']:.1f} GiB), "
                  f"{max(2, args.synthetic_queries) - 1} real queries, {args.threads} thread(s): p50 {got['p50']:.1f} ms, "
                  f"p95 {got['p95']:.1f} ms")
            tag = "" if precision == "int8" else f"_{precision}"
            results[f"synthetic_p50_ms_{label(size)}_centroids{tag}"] = got["p50"]
            results[f"synthetic_p95_ms_{label(size)}_centroids{tag}"] = got["p95"]
            if size == 1_000_000 and precision == "int8":  # the issue allows 1M to be measured on statistics-matched embeddings
                results["p50_ms_1m"] = got["p50"]
    # The keys: only what was measured (nan otherwise; see docs/benchmarks.md, section 8).
    for key in ("agreement10_100k", "p50_ms_100k", "p95_ms_100k", "p50_ms_1m"):
        results.setdefault(key, float("nan"))
    print(cpu_share_line())
    print(result_line(results))


if __name__ == "__main__":
    main()
