"""An exact first stage for MISA voice search: every region in one inner-product index, plus the threshold algorithm.

MISA scores image ``i`` against a caption's frames ``a_1..a_T`` as ``S_i = mean_t max_r <x_ir, a_t>``.
:class:`RegionIndex` holds one vector per region of every image (``image * R + r`` is its id) in a FAISS
inner-product index, stored so that the inner product it returns is an **upper bound** on the region's
true score (equal to it when the regions are held at full precision; see :mod:`vgs.codecs` for the
compressed, bounded form).  For every query frame ``t`` it fetches the ``K`` best regions gallery-wide,
sorted, and :func:`threshold_topk` turns them into image bounds:

* if image ``i`` has a fetched region for frame ``t``, its first (largest) fetched bound is an upper
  bound of ``max_r <x_ir, a_t>`` (exactly that max at full precision); otherwise every region of ``i`` is
  bounded by ``tau_t``, the last value fetched for ``t``;
* so ``UB_i = mean_t max(fetched_it, tau_t)``, and an image never fetched is bounded by ``mean_t tau_t``.

Candidates are scored exactly (a callback: MISA on the stored regions) in decreasing order of ``UB``
until the k-th best exact score ``theta`` beats every remaining bound; if the unfetched images'
bound ``mean_t tau_t`` is not beaten, ``K`` grows (x4) and the search repeats, and when ``K`` would
exceed ``max_fetch`` every not-yet-scored image is scored exactly (chunked).  Either way the result is
the exact MISA top-k; ties are broken by the lower image index, as a stable sort of the exhaustive
scores does.  The guarantee needs an exhaustive region index (``kind="flat"``); with ``kind="ivf"``
the fetched lists are approximate and so is the result (its agreement is measured by the benchmark).

Only MISA has this structure (``sima``/``sisa`` searches use the pooled first stage).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from .errors import VGSError
from .kernels import StoredArrays

if TYPE_CHECKING:
    from .codecs import RegionCodec

FIRST_STAGES = ("exact", "centroids", "compact", "ivf", "pooled")  # centroids: vgs.centroids; pooled: vgs.search
MAX_FETCH = 1 << 16  # per-frame fetch beyond which scoring every remaining image exactly is cheaper
MAX_INDEX_BYTES = 8 * 2**30  # the largest in-memory region index built (100k images x 49 x 512 fp32 is 9.3 GiB)
FETCH_K = 4096  # first per-frame fetch: on real Flickr8k embeddings (1,000 images) it settles 30 of 30 queries
# after scoring 64 images exactly; 1,024 needed a median 128 and up to 977


@dataclass
class TopK:
    """The result of :func:`threshold_topk`: ``ids`` (``k``) and ``scores`` (``k``), best first, and what it cost."""

    ids: np.ndarray
    scores: np.ndarray
    stats: dict = field(default_factory=dict)


class RegionIndex:
    """A FAISS inner-product index over ``n x R`` region vectors (ids ``image * R + r``).

    ``vectors`` added must already be in the index's space (``d`` dims; see :meth:`query`):
    for full-precision regions that is the regions themselves, for a bounded codec the decoded
    code plus its error columns (:meth:`vgs.codecs.RegionCodec.index_vectors`).
    """

    def __init__(self, dim: int, regions_per_image: int, kind: str = "flat", nlist: int = 0, nprobe: int = 0):
        import faiss

        if kind not in ("flat", "ivf"):
            raise VGSError(f"region index kind: expected flat or ivf, got {kind!r}")
        if not 1 <= regions_per_image <= 1 << 20:
            raise VGSError(f"regions per image: expected 1..{1 << 20}, got {regions_per_image}")
        self.dim, self.regions_per_image, self.kind = dim, regions_per_image, kind
        faiss.cvar.distance_compute_blas_threshold = 1  # a query's ~10-100 frames: one BLAS product, not 100x slower scans
        if kind == "flat":
            self.index = faiss.IndexFlatIP(dim)
        else:
            self._quantizer = faiss.IndexFlatIP(dim)  # kept referenced: the IVF index does not own it
            self.index = faiss.IndexIVFFlat(self._quantizer, dim, max(1, nlist), faiss.METRIC_INNER_PRODUCT)
            self.index.nprobe = max(1, nprobe or nlist // 16)

    @property
    def exact(self) -> bool:
        """Whether fetched lists are exhaustive (the threshold bound then holds)."""
        return self.kind == "flat"

    @property
    def images(self) -> int:
        return int(self.index.ntotal) // self.regions_per_image

    def train(self, sample: np.ndarray) -> None:
        """IVF only: learn the coarse centroids from a ``m x d`` sample."""
        if not self.index.is_trained:
            self.index.train(np.ascontiguousarray(sample, dtype=np.float32))

    def add(self, vectors: np.ndarray) -> None:
        """Add ``n x R x d`` vectors (the next ``n`` images)."""
        if vectors.ndim != 3 or vectors.shape[1:] != (self.regions_per_image, self.dim):
            raise VGSError(f"region vectors: expected n x {self.regions_per_image} x {self.dim}, got {tuple(vectors.shape)}")
        self.index.add(np.ascontiguousarray(vectors.reshape(-1, self.dim), dtype=np.float32))

    def fetch(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-``k`` regions of each of ``T`` query vectors (``T x d``, in the index's space).

        Returns (``T x k`` bounds, best first; ``T x k`` image ids, -1 where fewer exist;
        ``T`` tails: the bound on every region not returned, ``-inf`` when all were).
        """
        total = int(self.index.ntotal)
        k = max(1, min(k, total))
        bounds, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        owners = np.where(ids >= 0, ids // self.regions_per_image, -1)
        if k >= total and self.exact:
            tails = np.full(len(queries), -np.inf, dtype=np.float32)
        else:
            tails = bounds[:, -1].copy()
        return bounds, owners, tails


def image_bounds(bounds: np.ndarray, owners: np.ndarray, tails: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """From fetched lists to per-image MISA upper bounds.

    Args:
        bounds: ``T x K`` fetched region bounds, each row sorted best first.
        owners: ``T x K`` image of each fetched region (-1: none).
        tails: ``T`` bound of every unfetched region per frame.
    Returns:
        (``U`` images seen, ``U`` their bounds ``mean_t max(best fetched, tail_t)``, the bound of any unseen image).
    """
    valid = owners >= 0
    seen, inverse = np.unique(owners[valid], return_inverse=True)
    best = np.repeat(tails[:, None], len(seen), axis=1).astype(np.float64)
    rows = np.nonzero(valid)[0]
    np.maximum.at(best, (rows, inverse), bounds[valid].astype(np.float64))
    unseen = float(np.mean(tails.astype(np.float64))) if len(tails) else -np.inf
    return seen, best.mean(0), unseen


def threshold_topk(fetch: Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray]],
                   score: Callable[[np.ndarray], np.ndarray], images: int, k: int, fetch_k: int = 256,
                   max_fetch: int = MAX_FETCH, tolerance: float = 1e-4, batch: int = 64) -> TopK:
    """Exact top-``k`` images by MISA with early stopping (the threshold algorithm; see the module docstring).

    Args:
        fetch: ``K -> (T x K bounds, T x K image ids, T tails)`` (:meth:`RegionIndex.fetch` for one query).
        score: image ids (``m``, ascending) -> their exact scores (``m``).
        images: gallery size ``N``; k: results wanted (more than ``N`` returns all ``N``).
        fetch_k: first per-frame fetch; max_fetch: the largest before scoring all the rest.
        tolerance: bounds within ``tolerance * max(1, |theta|)`` of ``theta`` are not trusted to
            separate (float rounding differs between FAISS and the exact kernel).
    Returns:
        :class:`TopK`: ids and exact scores, best first (ties: lower id first); stats: fetch size,
        images scored, rounds, whether it fell back to scoring everything.
    """
    if images < 0 or k < 1:
        raise VGSError(f"threshold_topk: expected images >= 0 and k >= 1, got {images} and {k}")
    k = min(k, images)
    scored_ids: list[np.ndarray] = []
    scored_vals: list[np.ndarray] = []
    done = np.zeros(images, dtype=bool)
    stats = {"fetch_k": 0, "scored": 0, "rounds": 0, "fallback": False}

    def run(ids: np.ndarray) -> None:
        ids = np.sort(ids[~done[ids]])
        if len(ids):
            scored_ids.append(ids)
            scored_vals.append(np.asarray(score(ids), dtype=np.float64))
            done[ids] = True

    def theta() -> float:
        if sum(len(v) for v in scored_vals) < k:
            return -np.inf
        vals = np.concatenate(scored_vals)
        return float(np.partition(vals, len(vals) - k)[len(vals) - k])

    def margin(t: float) -> float:
        return tolerance * max(1.0, abs(t)) if np.isfinite(t) else 0.0

    if k == 0:
        return TopK(np.zeros(0, np.int64), np.zeros(0), stats)
    fetch_k = max(1, fetch_k)
    while True:
        stats["rounds"] += 1
        stats["fetch_k"] = fetch_k
        bounds, owners, tails = fetch(fetch_k)
        seen, upper, unseen = image_bounds(bounds, owners, tails)
        order = np.argsort(-upper, kind="stable")
        seen, upper = seen[order], upper[order]
        pos = 0
        while pos < len(seen):
            t = theta()
            if upper[pos] < t - margin(t):
                break
            stop = pos + batch
            if np.isfinite(t):  # everything not yet separated from theta, in one go
                stop = max(stop, int(np.searchsorted(-upper, -(t - margin(t)), side="right")))
            run(seen[pos:stop])
            pos = stop
        t = theta()
        if unseen < t - margin(t) or done.all():
            break
        exhaustive_fetch = bounds.shape[1] >= fetch_k and np.isneginf(tails).all()
        if fetch_k * 4 > max_fetch or exhaustive_fetch:
            stats["fallback"] = True
            run(np.nonzero(~done)[0])
            break
        fetch_k *= 4
    ids = np.concatenate(scored_ids)
    vals = np.concatenate(scored_vals)
    best = np.lexsort((ids, -vals))[:k]
    stats["scored"] = int(done.sum())
    return TopK(ids[best].astype(np.int64), vals[best], stats)


# ----------------------------------------------------------------------------- an index folder's region search


class RegionSearch:
    """The region-level first stages of one index folder (built lazily, kept in memory).

    ``regions``: the image chunks' ``n x R x D`` region arrays (memory-mapped), in index order;
    ``codes``: their codes when the index has a codec (:func:`vgs.codecs.build_codes`), else None.
    The ``exact`` and ``ivf`` stages index the full-precision regions (``4 R D`` bytes per image in
    memory, refused above ``max_bytes``); ``compact`` indexes the decoded codes (``4 R (d + 2)``).  The
    codes' leading coordinates are copied contiguous (:meth:`code_scores`) while the copy fits in ``max_bytes``.
    (The codes' error columns also make an exact stage over the codes possible, see
    :mod:`vgs.codecs`, but on real embeddings PCA's residual bound is too loose to prune.)
    """

    def __init__(self, regions: list[np.ndarray], codec: "RegionCodec | None" = None,
                 codes: "list[tuple[np.ndarray, np.ndarray]] | None" = None, chunk: int = 1024,
                 max_bytes: int = MAX_INDEX_BYTES):
        self.regions, self.codec, self.codes, self.chunk, self.max_bytes = regions, codec, codes, chunk, max_bytes
        self.count = sum(len(r) for r in regions)
        self.regions_per_image = int(regions[0].shape[1]) if regions else 1
        self._indexes: dict[str, RegionIndex] = {}

    def _vectors(self, codes: bool) -> Iterator[np.ndarray]:
        """The region index's vectors, ``c x R x d'`` blocks in image order (bounded memory while building)."""
        if codes:
            for codes, errors in self.codes:
                for c0 in range(0, len(codes), self.chunk):
                    yield self.codec.index_vectors(np.asarray(codes[c0: c0 + self.chunk]), np.asarray(errors[c0: c0 + self.chunk]))
        else:
            for part in self.regions:
                for c0 in range(0, len(part), self.chunk):
                    yield np.asarray(part[c0: c0 + self.chunk], dtype=np.float32)

    def index_bytes(self, kind: str = "flat") -> int:
        """Memory the region index of ``kind`` takes (float32 vectors)."""
        dim = self.codec.index_dim if kind == "codes" and self.codec is not None else int(self.regions[0].shape[2]) if self.regions else 0
        return 4 * self.count * self.regions_per_image * dim

    def index(self, kind: str = "flat") -> RegionIndex:
        """The region index of a kind, built on first use: ``flat`` (exact) or ``ivf`` (approximate) over the
        full-precision regions, ``codes`` (flat) over the decoded codes and their error norms."""
        if kind not in self._indexes:
            codes = kind == "codes"
            dim = self.codec.index_dim if codes else int(self.regions[0].shape[2])
            total = self.count * self.regions_per_image
            if self.index_bytes(kind) > self.max_bytes:
                raise VGSError(f"region index: {self.count} images x {self.regions_per_image} regions x {dim} floats need "
                               f"{4 * total * dim / 2**30:.1f} GiB, over the {self.max_bytes / 2**30:.1f} GiB allowed; "
                               "use --first-stage compact or pooled")
            nlist = max(1, int(np.sqrt(total))) if kind == "ivf" else 0
            index = RegionIndex(dim, self.regions_per_image, "ivf" if kind == "ivf" else "flat", nlist=nlist,
                                nprobe=max(8, nlist // 16))
            if kind == "ivf":
                blocks, have = [], 0
                for block in self._vectors(codes):  # a training sample from the first blocks (images are in no special order)
                    blocks.append(block.reshape(-1, dim))
                    have += len(blocks[-1])
                    if have >= 40 * nlist:
                        break
                index.train(np.concatenate(blocks)[: 64 * nlist])
            for block in self._vectors(codes):
                index.add(block)
            self._indexes[kind] = index
        return self._indexes[kind]


    def code_scores(self, ids: np.ndarray, frames: np.ndarray, int8_query: bool = False, dims: int | None = None) -> np.ndarray:
        """MISA of images ``ids`` on their decoded codes (the compact stage's final scores; with ``int8_query``
        an approximation, :meth:`vgs.codecs.RegionCodec.misa`); ``dims``: on the codes' first ``dims``
        coordinates only, and only those are read: from their own contiguous copy
        (:meth:`vgs.kernels.StoredArrays.leading`, made on first use) while it fits in ``max_bytes``."""
        dims = self.codec.checked_dims(dims)
        stored = self._stored_codes
        if dims < self.codec.dim and stored.leading_bytes(dims) <= self.max_bytes:
            stored = stored.leading(dims)
        return self.codec.misa(stored.rows(ids, dims), frames, int8_query=int8_query, dims=dims)

    @cached_property
    def _stored_codes(self) -> StoredArrays:
        """The codes' chunks as the kernels read them in place."""
        return StoredArrays([codes for codes, _ in self.codes])

    def search(self, frames: np.ndarray, k: int, mode: str, exact_scores: Callable[[np.ndarray], np.ndarray],
               fetch_k: int = FETCH_K) -> TopK:
        """Top-``k`` images for one caption's ``T x D`` frames.

        ``exact``: the threshold algorithm on the flat region index, final scores from
        ``exact_scores`` (MISA on the stored regions): the exhaustive MISA top-k.
        ``compact``: the same on the decoded codes only (needs codes): the exact top-k of MISA on the
        codes, which approximates the full-precision one.  ``ivf``: ``exact`` with an IVF region
        index (approximate fetches; no guarantee).
        """
        compact = mode == "compact"
        if compact and (self.codec is None or self.codes is None):
            raise VGSError("first stage 'compact': this index has no region codes; build them with `vgs index ... --codes DIM`")
        if mode not in ("exact", "compact", "ivf"):
            raise VGSError(f"first stage: expected one of {', '.join(FIRST_STAGES)}, got {mode!r}")
        index = self.index({"exact": "flat", "ivf": "ivf", "compact": "codes"}[mode])
        # compact: the error columns get weight 0, so the index returns the decoded codes' own scores
        query = self.codec.query_vectors(frames, bounded=False) if compact else np.ascontiguousarray(frames, dtype=np.float32)
        score = (lambda ids: self.code_scores(ids, frames)) if compact else exact_scores
        return threshold_topk(lambda kk: index.fetch(query, kk), score, self.count, k, fetch_k=fetch_k)
