"""The centroid first stage: a cheap lower bound of MISA from a few of each image's regions and from
k-means centroids of the query's frames.

MISA scores image ``i`` against frames ``a_1..a_T`` as ``S_i = mean_t max_r <x_ir, a_t>``.  Keep ``m`` of
the image's ``R`` regions, its *representatives* ``x_s`` (``s`` in ``K_i``), and group the query's ``T``
frames into ``p`` clusters with centroids ``q_1..q_p`` (each the mean of its frames) holding shares
``w_1..w_p`` of the frames.  Then

    L_i = sum_j w_j max_{s in K_i} <x_is, q_j>  <=  S_i

because a subset's best region is at most the image's best (``max_{s in K} <= max_r``), and a frame
centroid's best region is at most the mean of its frames' bests (``max_r mean_t <x_r, a_t> <=
mean_t max_r <x_r, a_t>``).  With every region kept and one cluster per frame ``L_i = S_i`` exactly.

**Which regions.**  Farthest-point picks (:func:`representatives`): first the region least like the
image's mean, then repeatedly the region least like every region picked so far.  Real regions, not
means: an earlier version kept 8 k-means centroids of the regions, whose means blur a small object into
its background.  On the 100k built-in scenes gallery (10 x 10 regions, small shapes on plain
backgrounds) that ranking needed a median depth of about 2,700 to hold the exhaustive top-10 (p95
23,000), and the stage agreed with exhaustive MISA on 38.5% of top-10s; 32 farthest-point picks agree on
97.5% (docs/benchmarks.md, section 8, "The scenes gallery at 100k").  Only
the picks' indices are stored (``chunk-NNNNN.representatives.npy``, ``n x m`` uint8 or uint16: a few
dozen bytes per image); their vectors are read from the regions once, when the index loads.

**Projected and in int8.**  In memory the stage keeps each representative's first :data:`PROJECTED_DIMS`
principal coordinates (``P x``; ``P`` fitted on representatives sampled across the index,
:func:`vgs.codecs.principal_basis`) as :class:`Int8Representatives`, int8 with one scale per image, and
:func:`lower_bounds` computes ``L`` on ``P x`` and ``P q`` with the int8 kernel of
:func:`vgs.kernels.representative_bounds` (exact integer products, the max over an image's
representatives taken on them: one scale per image keeps it exact).  Projection and rounding make ``L``
an approximation, no longer a bound: a ranking
proxy.  :meth:`vgs.search.SearchIndex.search_audio` takes the best ``candidates`` by it, narrows them by
MISA on the int8 region codes when the index has them, and scores those exactly.  ``L`` costs ``N m p d``
multiply-adds: 32 x 4 x 32 against MISA's 100 x ~20 x 256 on the scenes, about 1/125 of it.

**Two passes.**  Over a large index, :func:`candidates` first ranks every image by ``L`` on its first
:data:`COARSE_DIMS` principal coordinates only (:attr:`Int8Representatives.lead`, a contiguous copy: half
the multiply-adds and bytes; packed for ``vpdpbusd`` on CPUs with AVX-512 VNNI, :mod:`vgs.kernels`), keeps the best :data:`COARSE_DEPTH` times ``count`` and ranks those by the full
``L``.  On the built-in scenes (10,000 images, 200 spoken queries, counts of 100 to 400) the two passes
returned the one pass's candidates exactly for every query (docs/benchmarks.md, section 8, "Two passes").
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numpy as np
import torch

from .codecs import symmetric_int8
from .errors import VGSError
from .kernels import PackedRepresentatives, prepared_representatives, representative_bounds

REPRESENTATIVES = 32  # regions kept per image (all of them when an image has fewer)
FRAME_CENTROIDS = 4  # per spoken query
ITERATIONS = 8
PROJECTED_DIMS = 32  # principal coordinates the stage keeps
BASIS_SAMPLE = 65536  # representatives the principal basis is fitted on, at most
# Images per float product in the exact (float) bound: keeps the n x m x p products in the core's cache
BOUND_CHUNK = 2048
# With int8 region codes, the stage's candidates are narrowed by MISA on the codes to this many before
# the exact re-rank (in an 80-query probe on 39,680 Flickr8k photos the codes' top 50 of 2,000 still
# held every exhaustive top-10; on 100k scenes the codes held them within 91).
CODE_RERANK_DEPTH = 100
# Before that, MISA on the codes' first CODE_LEAD_DIMS (principal) coordinates narrows the candidates to
# CODE_LEAD_FACTOR x CODE_RERANK_DEPTH.  On the real 100k galleries (200 spoken queries, 3,000 candidates)
# 32 gave the same agreement@10 as 64 (Flickr8k 99.5%, scenes 96.5%) at 0.89-0.94x the stage's time; in
# the 32-coordinate ranking the Flickr8k top-10s sat at depth p95 47, max 110 of the 400 kept (64: 13 / 18;
# 24: p95 410, too shallow), docs/benchmarks.md, section 8, "Leading 32 coordinates".
CODE_LEAD_DIMS = 32
CODE_LEAD_FACTOR = 4
# The first of the stage's two passes: every image's bound on its first COARSE_DIMS principal coordinates;
# the best COARSE_DEPTH x count go on to the full bound.
COARSE_DIMS = 16
COARSE_DEPTH = 4


def kmeans(vectors: torch.Tensor, m: int, iterations: int = ITERATIONS) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched k-means by inner product: ``B x n x D`` -> centroids ``B x m x D`` and shares ``B x m``.

    Deterministic: the first centroids are ``m`` evenly spaced vectors; each step assigns every vector
    to its highest-inner-product centroid and moves each centroid to its members' mean (a centroid
    that lost its members stays).  ``m >= n`` keeps every vector as its own centroid (shares ``1/n``,
    padded with zero-share copies of the last vector up to ``m``).  In numpy: a spoken query's 4 x 18
    frames take 45 us a step against 270 in torch, whose per-op cost dominates arrays this small.
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
    points = vectors.detach().numpy()
    centroids = points[:, np.linspace(0, n - 1, m).round().astype(np.int64)]
    for _ in range(iterations):
        centroids, _ = _update(points, centroids)
    centroids, counts = _update(points, centroids)  # the shares are this last partition's
    return torch.from_numpy(centroids), torch.from_numpy(counts / n)


def _update(vectors: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One k-means step: each of ``B x n x D`` vectors to its best of ``B x m x D`` centroids; the members'
    means (``B x m x D``; a centroid with no members stays) and the member counts (``B x m``), float32."""
    nearest = (vectors @ centroids.transpose(0, 2, 1)).argmax(-1)  # B x n
    members = (nearest[..., None] == np.arange(centroids.shape[1])).astype(np.float32)  # B x n x m
    counts = members.sum(1)
    means = (members.transpose(0, 2, 1) @ vectors) / np.maximum(counts, 1)[..., None]
    return np.where(counts[..., None] > 0, means, centroids).astype(np.float32), counts


def representatives(regions: torch.Tensor, m: int = REPRESENTATIVES) -> torch.Tensor:
    """``N x R x D`` image regions -> the indices of ``min(m, R)`` of them per image, ``N x min(m, R)`` (int64),
    in pick order: farthest-point picks by inner product (the region least like the image's mean region,
    then each time the region whose best inner product with the picks so far is lowest).  All ``R``
    regions, in order, when ``m >= R``."""
    if regions.ndim != 3 or regions.shape[1] == 0:
        raise VGSError(f"representatives: expected N x R x D regions with R >= 1, got shape {tuple(regions.shape)}")
    n, r, _ = regions.shape
    if m >= r:
        return torch.arange(r).expand(n, r).clone()
    regions, rows = regions.float(), torch.arange(n)
    picks = torch.empty(n, m, dtype=torch.long)
    picks[:, 0] = torch.einsum("nrd,nd->nr", regions, regions.mean(1)).argmin(1)
    nearest = torch.full((n, r), -torch.inf)  # each region's best inner product with the picks so far
    for j in range(1, m + 1):
        nearest = torch.maximum(nearest, torch.einsum("nrd,nd->nr", regions, regions[rows, picks[:, j - 1]]))
        nearest[rows, picks[:, j - 1]] = torch.inf  # never picked twice
        if j < m:
            picks[:, j] = nearest.argmin(1)
    return picks


def project(vectors: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``N x m x D`` vectors and a ``d x D`` orthonormal basis -> ``N x m x d`` coordinates (float32)."""
    return (vectors.float().reshape(-1, vectors.shape[-1]) @ basis.T).reshape(*vectors.shape[:2], len(basis))


@dataclass(frozen=True)
class Int8Representatives:
    """The stage's image side as the index holds it in memory: ``columns`` ``N x d x m`` int8 (image ``i``'s
    ``m`` representatives as the columns of ``columns[i]``, the layout the bound's kernel reads) and one
    float32 scale per image (``scales``, ``N``); image ``i``'s representatives are ``values[i] * scales[i]``."""

    columns: torch.Tensor
    scales: torch.Tensor

    @classmethod
    def quantize(cls, vectors: torch.Tensor) -> "Int8Representatives":
        """``N x m x d`` float vectors -> int8, symmetric, each image scaled by its largest coordinate."""
        values, scales = symmetric_int8(vectors.float(), (1, 2))
        return cls.from_values(values, scales.flatten())

    @classmethod
    def from_values(cls, values: torch.Tensor, scales: torch.Tensor) -> "Int8Representatives":
        """From ``N x m x d`` int8 rows and ``N`` scales."""
        return cls(values.transpose(1, 2).contiguous(), scales)

    @classmethod
    def cat(cls, parts: "list[Int8Representatives]", m: int, d: int) -> "Int8Representatives":
        """Concatenated in order (``0 x d x m`` when ``parts`` is empty)."""
        if not parts:
            return cls(torch.zeros(0, d, m, dtype=torch.int8), torch.zeros(0))
        return cls(torch.cat([p.columns for p in parts]), torch.cat([p.scales for p in parts]))

    def __len__(self) -> int:
        return len(self.columns)

    @property
    def values(self) -> torch.Tensor:
        """``N x m x d`` int8 (a view of ``columns``)."""
        return self.columns.transpose(1, 2)

    @property
    def shape(self) -> torch.Size:
        """``N x m x d``."""
        return self.values.shape

    def dequantize(self) -> torch.Tensor:
        """``N x m x d`` float32."""
        return self.values.float() * self.scales[:, None, None]

    @cached_property
    def lead(self) -> torch.Tensor | PackedRepresentatives:
        """The first :data:`COARSE_DIMS` rows of ``columns`` (the leading principal coordinates, ``N x
        COARSE_DIMS x m``) as their own copy, built on first use, in the layout of this CPU's fastest bound
        (:func:`vgs.kernels.prepared_representatives`: packed for VNNI, else contiguous int8).  The float
        kernel reads them this way 1.6x faster than all ``d`` rows; read in place, skipping the other rows,
        they were slower than all of them (section 8, "Two passes")."""
        return prepared_representatives(self.columns[:, :COARSE_DIMS])


def lower_bounds(image_side: torch.Tensor | Int8Representatives, frames: torch.Tensor, p: int = FRAME_CENTROIDS,
                 chunk: int = BOUND_CHUNK, basis: torch.Tensor | None = None) -> torch.Tensor:
    """``L`` for every image: ``N x m x D`` representative regions and one query's ``T x D`` frames -> ``N``
    (float32).

    With a ``d x D`` ``basis`` the image side is given projected (``N x m x d``, :func:`project`) and the
    query's frame centroids are projected the same way: the approximate ``L`` of the module docstring.
    Float vectors give the exact bound; :class:`Int8Representatives` its int8 approximation (the query's
    ``p`` centroids quantized one scale each).  Chunked over images, so memory stays at ``chunk x m x p``
    scores.
    """
    queries, shares = _query_side(frames, p, basis)
    if isinstance(image_side, Int8Representatives):
        return _int8_bounds(image_side, *_int8_query(queries, shares))
    out = []
    for c0 in range(0, len(image_side), chunk):
        part = image_side[c0: c0 + chunk].float()  # n x m x D
        best = (part.reshape(-1, part.shape[-1]) @ queries.T).reshape(len(part), part.shape[1], -1).amax(1)  # n x p
        out.append(best @ shares)
    return torch.cat(out) if out else torch.zeros(0)


def _query_side(frames: torch.Tensor, p: int, basis: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``T x D`` frames -> their ``p`` k-means centroids (``p x D``, or ``p x d`` projected on a ``d x D`` basis)
    and shares (``p``)."""
    queries, shares = kmeans(frames[None], min(p, len(frames)))
    queries, shares = queries[0], shares[0]  # p x D, p
    return (queries if basis is None else queries @ basis.T), shares


def _int8_query(queries: torch.Tensor, shares: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``p x d`` float query centroids and their ``p`` shares -> ``p x d`` int8 codes and ``p`` weights (the
    shares times each centroid's scale)."""
    query_codes, query_scales = symmetric_int8(queries, 1)  # p x d int8, p x 1
    return query_codes, shares * query_scales.flatten()


def _int8_bounds(table: Int8Representatives, query_codes: torch.Tensor, weights: torch.Tensor,
                 rows: np.ndarray | None = None) -> torch.Tensor:
    """``L`` from int8 representatives and the query's int8 centroids and weights (:func:`_int8_query`) -> ``N``
    (or ``n``: of the images ``rows`` only, read in place)."""
    return representative_bounds(table.columns, query_codes, weights, table.scales, rows)


def _int8_best(table: Int8Representatives, query_codes: torch.Tensor, weights: torch.Tensor, count: int) -> np.ndarray:
    """The ``count`` images of highest ``L``, ascending; in two passes (the module docstring) when the table
    has more than :data:`COARSE_DIMS` dimensions and more than :data:`COARSE_DEPTH` x ``count`` images."""
    n, d, _ = table.columns.shape
    if d <= COARSE_DIMS or n <= COARSE_DEPTH * count:
        return _best(_int8_bounds(table, query_codes, weights).numpy(), count)
    kept = _best(_lead_bounds(table, query_codes, weights).numpy(), COARSE_DEPTH * count)
    return kept[_best(_int8_bounds(table, query_codes, weights, kept).numpy(), count)]


def _lead_bounds(table: Int8Representatives, query_codes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The first pass's ``L``: on the first :data:`COARSE_DIMS` coordinates of the table and the query -> ``N``."""
    return representative_bounds(table.lead, query_codes[:, :COARSE_DIMS].contiguous(), weights, table.scales)


def lead_bounds(table: Int8Representatives, frames: torch.Tensor, basis: torch.Tensor | None = None) -> torch.Tensor:
    """The ranking of :func:`candidates`' first pass for one query's ``T x D`` frames (``basis`` as in
    :func:`lower_bounds`) -> ``N``: for benchmarks that ask how deep it must go."""
    return _lead_bounds(table, *_int8_query(*_query_side(frames, FRAME_CENTROIDS, basis)))


def candidates(image_side: torch.Tensor | Int8Representatives, frames: torch.Tensor, count: int, basis: torch.Tensor | None = None,
               coarse_scores: Callable[[np.ndarray], np.ndarray] | None = None, depth: int = CODE_RERANK_DEPTH,
               lead_scores: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """The stage's images worth scoring exactly for one caption's ``T x D`` frames, in index order.

    The best ``count`` of the ``N`` images by :func:`lower_bounds` (``image_side`` and ``basis``
    as there; int8 representatives in two passes over a large index, the module docstring); with
    ``coarse_scores`` (image ids -> scores, e.g. MISA on int8 codes), narrowed to the best ``depth`` of
    those, so that the full-precision regions are read for ``depth`` images only.  ``lead_scores`` (a
    cheaper approximation of ``coarse_scores``, e.g. MISA on the codes' leading coordinates) first
    narrows them to :data:`CODE_LEAD_FACTOR` x ``depth``.
    """
    if isinstance(image_side, Int8Representatives):
        ids = _int8_best(image_side, *_int8_query(*_query_side(frames, FRAME_CENTROIDS, basis)), count)
    else:
        ids = _best(lower_bounds(image_side, frames, basis=basis).numpy(), count)
    if lead_scores is not None and len(ids) > CODE_LEAD_FACTOR * depth:
        ids = narrowed(ids, lead_scores(ids), CODE_LEAD_FACTOR * depth)
    if coarse_scores is not None and len(ids) > depth:
        ids = narrowed(ids, coarse_scores(ids), depth)
    return ids


def narrowed(ids: np.ndarray, scores: np.ndarray, keep: int) -> np.ndarray:
    """The ``keep`` of ``ids`` with the highest ``scores`` (ties: the earlier first), in ascending order."""
    return np.sort(ids[np.argsort(-scores, kind="stable")[:keep]])


def _best(bounds: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` largest of ``N`` bounds, ascending.  numpy, not ``torch.topk``: one thread
    and no OpenMP region, whose spinning threads would slow the next kernel (:mod:`vgs.kernels`)."""
    n = len(bounds)
    if count >= n:
        return np.arange(n)
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.argpartition(bounds, n - count)[n - count:])


__all__ = ["REPRESENTATIVES", "FRAME_CENTROIDS", "PROJECTED_DIMS", "BASIS_SAMPLE", "CODE_RERANK_DEPTH", "CODE_LEAD_DIMS",
           "CODE_LEAD_FACTOR", "COARSE_DIMS",
           "COARSE_DEPTH", "Int8Representatives",
           "kmeans", "representatives", "project", "lower_bounds", "lead_bounds", "candidates", "narrowed"]
