"""The centroid first stage: a cheap lower bound of MISA from k-means centroids of regions and of frames.

MISA scores image ``i`` against frames ``a_1..a_T`` as ``S_i = mean_t max_r <x_ir, a_t>``.  Group the
image's ``R`` regions into ``m`` clusters with centroids ``c_1..c_m`` (each the mean of its members), and
the query's ``T`` frames into ``p`` clusters with centroids ``q_1..q_p`` holding shares ``w_1..w_p`` of
the frames.  Then

    L_i = sum_j w_j max_k <c_k, q_j>  <=  S_i

because a centroid's inner product is at most its best member's (``<c_k, q> <= max_r <x_ir, q>``), and a
frame centroid's best region is at most the mean of its frames' bests (``max_r mean_t <x_r, a_t> <=
mean_t max_r <x_r, a_t>``).  With one cluster per region and per frame ``L_i = S_i`` exactly.

``L`` costs ``N m p D`` multiply-adds against MISA's ``N R T D`` (8 x 8 against 49 x ~25 on Flickr8k:
about 19x less), and needs ``m`` vectors per image in memory, not ``R``.  It is a ranking proxy, not a
certificate: :meth:`vgs.search.SearchIndex.search_audio` takes the best ``candidates`` by ``L`` and
scores those exactly.  Measured against exhaustive MISA in docs/benchmarks.md (section 8).

**Projected.**  When the index has a PCA codec (:mod:`vgs.codecs`, written by ``vgs index`` by default),
the stage computes ``L`` on the centroids' first :data:`PROJECTED_DIMS` principal coordinates (``P c``
and ``P q``, ``P`` the codec's top rows): 8x fewer multiply-adds and bytes than ``D = 512``.  The
projected ``L`` is an approximation, no longer a bound; on 39,680 real Flickr8k images its top 2,000
held every exhaustive top-10 of 80 spoken queries, as the full-dimension ``L`` did.

**In int8.**  The index holds the image side as :class:`Int8Centroids` (one scale per image) and
:func:`lower_bounds` computes ``L`` with an int8 x int8 -> int32 product (``torch._int_mm``) against the
query centroids quantized per centroid: 4x fewer bytes to stream per query than float32, and the
max over an image's centroids taken on the integers (one scale per image keeps it exact).  With the
code narrowing also in int8, the whole stage took 28.6 ms against 63.1 ms in float32 at 100,000 images
and 117 against 466 ms at 1,000,000 (1 thread, docs/benchmarks.md, section 8); on 7,000 real Flickr8k
photos its ranking held the exhaustive top-10s at the float32 ranking's depths.  Still a ranking proxy,
like the projected ``L``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .codecs import symmetric_int8
from .errors import VGSError

REGION_CENTROIDS = 8  # per image: stored beside the regions (``chunk-NNNNN.centroids.npy``)
FRAME_CENTROIDS = 8  # per spoken query
ITERATIONS = 8
PROJECTED_DIMS = 64  # principal coordinates the stage keeps when the index has a PCA codec
# With int8 region codes, the stage's candidates are narrowed by MISA on the codes to this many before
# the exact re-rank (in an 80-query probe on 39,680 Flickr8k photos the codes' top 50 of 2,000 still
# held every exhaustive top-10).
CODE_RERANK_DEPTH = 100


def kmeans(vectors: torch.Tensor, m: int, iterations: int = ITERATIONS) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched k-means by inner product: ``B x n x D`` -> centroids ``B x m x D`` and shares ``B x m``.

    Deterministic: the first centroids are ``m`` evenly spaced vectors; each step assigns every vector
    to its highest-inner-product centroid and moves each centroid to its members' mean (a centroid
    that lost its members stays).  ``m >= n`` keeps every vector as its own centroid (shares ``1/n``,
    padded with zero-share copies of the last vector up to ``m``).
    """
    if vectors.ndim != 3 or vectors.shape[1] == 0:
        raise VGSError(f"k-means: expected B x n x D vectors with n >= 1, got shape {tuple(vectors.shape)}")
    if not 1 <= m <= 4096:
        raise VGSError(f"k-means: expected 1..4096 centroids, got {m}")
    vectors = vectors.float()
    b, n, _ = vectors.shape
    if m >= n:
        pad = vectors[:, -1:].expand(b, m - n, -1)
        shares = torch.cat([torch.full((b, n), 1.0 / n), torch.zeros(b, m - n)], dim=1)
        return torch.cat([vectors, pad], dim=1), shares
    centroids = vectors[:, torch.linspace(0, n - 1, m).round().long()].clone()
    for _ in range(iterations):
        centroids, _ = _update(vectors, centroids)
    centroids, counts = _update(vectors, centroids)  # the shares are this last partition's
    return centroids, counts / n


def _update(vectors: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One k-means step: each of ``B x n x D`` vectors to its best of ``B x m x D`` centroids; the members'
    means (``B x m x D``; a centroid with no members stays) and the member counts (``B x m``)."""
    members = torch.nn.functional.one_hot(torch.einsum("bnd,bmd->bnm", vectors, centroids).argmax(-1),
                                          centroids.shape[1]).float()
    counts = members.sum(1)
    means = torch.einsum("bnm,bnd->bmd", members, vectors) / counts.clamp_min(1)[..., None]
    return torch.where(counts[..., None] > 0, means, centroids), counts


def region_centroids(regions: torch.Tensor, m: int = REGION_CENTROIDS) -> torch.Tensor:
    """``N x R x D`` image regions -> ``N x m`` centroids ``N x m x D`` (float32); each the mean of its regions."""
    return kmeans(regions, m)[0]


def project(centroids: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``N x m x D`` centroids and a ``d x D`` orthonormal basis -> ``N x m x d`` coordinates (float32)."""
    return (centroids.float().reshape(-1, centroids.shape[-1]) @ basis.T).reshape(*centroids.shape[:2], len(basis))


@dataclass(frozen=True)
class Int8Centroids:
    """The stage's image side as the index holds it in memory: ``values`` ``N x m x d`` int8 and one float32
    scale per image (``scales``, ``N``); image ``i``'s centroids are ``values[i] * scales[i]``."""

    values: torch.Tensor
    scales: torch.Tensor

    @classmethod
    def quantize(cls, centroids: torch.Tensor) -> "Int8Centroids":
        """``N x m x d`` float centroids -> int8, symmetric, each image scaled by its largest coordinate."""
        values, scales = symmetric_int8(centroids.float(), (1, 2))
        return cls(values, scales.flatten())

    @classmethod
    def cat(cls, parts: "list[Int8Centroids]", m: int, d: int) -> "Int8Centroids":
        """Concatenated in order (``0 x m x d`` when ``parts`` is empty)."""
        if not parts:
            return cls(torch.zeros(0, m, d, dtype=torch.int8), torch.zeros(0))
        return cls(torch.cat([p.values for p in parts]), torch.cat([p.scales for p in parts]))

    def __len__(self) -> int:
        return len(self.values)

    @property
    def shape(self) -> torch.Size:
        return self.values.shape

    def dequantize(self) -> torch.Tensor:
        """``N x m x d`` float32."""
        return self.values.float() * self.scales[:, None, None]


def lower_bounds(image_centroids: torch.Tensor | Int8Centroids, frames: torch.Tensor, p: int = FRAME_CENTROIDS,
                 chunk: int = 16384, basis: torch.Tensor | None = None) -> torch.Tensor:
    """``L`` for every image: ``N x m x D`` centroids and one query's ``T x D`` frames -> ``N`` (float32).

    With a ``d x D`` ``basis`` the image centroids are given projected (``N x m x d``, :func:`project`)
    and the query's centroids are projected the same way: the approximate ``L`` of the module docstring.
    Float centroids give the exact bound; :class:`Int8Centroids` its int8 approximation (the query's
    ``p`` centroids quantized one scale each).  Chunked over images, so memory stays at ``chunk x m x p``
    scores.
    """
    queries, shares = kmeans(frames[None], min(p, len(frames)))
    queries, shares = queries[0], shares[0]  # p x D, p
    if basis is not None:
        queries = queries @ basis.T  # p x d
    if isinstance(image_centroids, Int8Centroids):
        return _int8_bounds(image_centroids, queries, shares, chunk)
    out = []
    for c0 in range(0, len(image_centroids), chunk):
        part = image_centroids[c0: c0 + chunk].float()  # n x m x D
        best = (part.reshape(-1, part.shape[-1]) @ queries.T).reshape(len(part), part.shape[1], -1).amax(1)  # n x p
        out.append(best @ shares)
    return torch.cat(out) if out else torch.zeros(0)


def _int8_bounds(table: Int8Centroids, queries: torch.Tensor, shares: torch.Tensor, chunk: int) -> torch.Tensor:
    """``L`` from int8 image centroids and ``p x d`` float query centroids with their ``p`` shares -> ``N``."""
    n, m, d = table.values.shape
    query_codes, query_scales = symmetric_int8(queries, 1)  # p x d int8, p x 1
    query_codes, weights = query_codes.T.contiguous(), shares * query_scales.flatten()  # d x p, p
    flat = table.values.reshape(n * m, d)
    out = torch.empty(n)
    for c0 in range(0, n, chunk):
        products = torch._int_mm(flat[c0 * m: (c0 + chunk) * m], query_codes)  # n' m x p int32
        out[c0: c0 + chunk] = _best_centroid(products.view(-1, m * len(weights)), m).float() @ weights
    return out * table.scales


def _best_centroid(products: torch.Tensor, m: int) -> torch.Tensor:
    """``n x (m p)`` products, ``m`` centroids of ``p`` each per row -> ``n x p``, the max over centroids.

    Halved pairwise while ``m`` is even: contiguous element-wise maxima, about 1.7x faster than a strided
    ``amax`` on these shapes (8 x 8, 1 thread)."""
    p = products.shape[1] // m
    while m > 1 and m % 2 == 0:
        m //= 2
        products = torch.maximum(products[:, : m * p], products[:, m * p:])
    return products if m == 1 else products.view(len(products), m, p).amax(1)


def candidates(image_centroids: torch.Tensor | Int8Centroids, frames: torch.Tensor, count: int, basis: torch.Tensor | None = None,
               coarse_scores: Callable[[np.ndarray], np.ndarray] | None = None, depth: int = CODE_RERANK_DEPTH) -> np.ndarray:
    """The stage's images worth scoring exactly for one caption's ``T x D`` frames, in index order.

    The best ``count`` of the ``N`` images by :func:`lower_bounds` (``image_centroids`` and ``basis``
    as there); with ``coarse_scores`` (image ids -> scores, e.g. MISA on int8 codes), narrowed to the
    best ``depth`` of those, so that the full-precision regions are read for ``depth`` images only.
    """
    bounds = lower_bounds(image_centroids, frames, basis=basis)
    ids = np.sort(torch.topk(bounds, min(count, len(bounds))).indices.numpy())
    if coarse_scores is not None and len(ids) > depth:
        ids = np.sort(ids[np.argsort(-coarse_scores(ids), kind="stable")[:depth]])
    return ids


__all__ = ["REGION_CENTROIDS", "FRAME_CENTROIDS", "PROJECTED_DIMS", "CODE_RERANK_DEPTH", "Int8Centroids", "kmeans",
           "region_centroids", "project", "lower_bounds", "candidates"]
