"""Compare first stages for two-stage search on a real index: how much of the exhaustive MISA top-10 they keep.

    python benchmarks/bench_first_stage.py INDEX_DIR [--queries 300] [--seed 0]

Queries are spoken captions already encoded in the index (``vgs index --captions``). For each, the
exhaustive MISA top-10 over all indexed images is compared with the top-C candidates of

* ``mean``: cosine of mean-pooled regions and mean-pooled frames (what ``SearchIndex`` uses);
* ``frames-K``: ColBERT-style: every query frame fetches its K nearest regions of all images
  (FAISS, exact), and images are ranked by the sum over frames of their best fetched region.

Prints the mean overlap and the share of queries whose whole top-10 is inside the candidates.
Ends with one ``RESULT`` line.
"""

from __future__ import annotations

import argparse

import faiss
import numpy as np
import torch
from torch.nn import functional as F

from vgs.search import SearchIndex

CANDIDATES = (20, 50, 100, 200)


def frame_votes(flat: faiss.Index, owner: np.ndarray, frames: np.ndarray, k: int, images: int) -> np.ndarray:
    """Per image: sum over query frames of the best similarity among the frame's K fetched regions."""
    sims, found = flat.search(frames, k)
    best = np.full((frames.shape[0], images), -np.inf, dtype=np.float32)
    rows = np.repeat(np.arange(frames.shape[0]), k)
    np.maximum.at(best, (rows, owner[found].ravel()), sims.ravel())
    return np.where(np.isfinite(best), best, 0.0).sum(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("index")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    index = SearchIndex(args.index)
    n = index.image_count
    regions = index.regions_of(np.arange(n)).float().flatten(2).transpose(1, 2).contiguous()  # n x R x D
    pooled_images = F.normalize(regions.mean(1), dim=-1)
    owner = np.repeat(np.arange(n), regions.shape[1])
    flat = faiss.IndexFlatIP(regions.shape[-1])
    flat.add(regions.reshape(-1, regions.shape[-1]).numpy())
    queries = np.random.default_rng(args.seed).choice(index.caption_count, min(args.queries, index.caption_count), replace=False)
    overlap: dict[tuple[str, int], list[float]] = {}
    for q in queries:
        frames = index.captions_of([int(q)]).frames.float()  # T x D
        exhaustive = torch.einsum("nrd,td->ntr", regions, frames).amax(-1).mean(-1)
        truth = set(torch.topk(exhaustive, 10).indices.tolist())
        rankings = {"mean": torch.argsort(-(pooled_images @ F.normalize(frames.mean(0), dim=-1))).numpy()}
        for k in (8, 32):
            rankings[f"frames-{k}"] = np.argsort(-frame_votes(flat, owner, frames.numpy(), k, n), kind="stable")
        for name, order in rankings.items():
            for c in CANDIDATES:
                overlap.setdefault((name, c), []).append(len(truth & set(order[:c].tolist())) / 10)
    print(f"index {args.index}: {n} images; {len(queries)} queries")
    print(f"{'first stage':<12} " + "  ".join(f"C={c:<4} overlap / all-10" for c in CANDIDATES))
    result = []
    for name in ("mean", "frames-8", "frames-32"):
        cells = []
        for c in CANDIDATES:
            v = np.array(overlap[(name, c)])
            cells.append(f"{v.mean():6.1%} / {np.mean(v == 1):6.1%}  ")
            result.append(f"overlap_{name.replace('-', '')}_c{c}={v.mean():.4g}")
        print(f"{name:<12} " + "  ".join(cells))
    print("RESULT " + " ".join(result))


if __name__ == "__main__":
    main()
