"""Compressed region embeddings with error bounds: PCA to ``d`` dims, then int8 with a per-dimension scale.

A region ``x`` (``D``) is stored as ``c = round(P x / s)`` (``d`` int8, ``P`` a ``d x D`` orthonormal basis
fitted on the index's regions, ``s`` a per-dimension scale) plus two float16 error norms, rounded up:
``e_in = ||P x - s * c||`` (quantization) and ``e_out = ||x - P^T P x||`` (what the basis misses; 0 when
``d == D``, where ``P`` is the identity).  For any query frame ``q``:

    <q, x> <= <P q, s * c> + ||P q|| e_in + ||q - P^T P q|| e_out        (Cauchy-Schwarz, twice)

which is one inner product of ``[s * c, e_in, e_out]`` with ``[P q, ||P q||, ||q - P^T P q||]``: the
region index (:class:`vgs.first_stage.RegionIndex`) holds those ``d + 2`` vectors and its results
are guaranteed upper bounds, so the threshold algorithm stays exact while the first stage reads
``d + 2`` floats per region instead of ``D``.  With the query's last two entries set to 0 the same
index gives the scores of the decoded codes themselves (the ``compact`` first stage, which never
reads the full regions: ``R * (d + 4)`` bytes per image).

Files (in the index folder): ``codec.json`` (kind, dims), ``codec-basis.npy`` (``d x D`` float32),
``codec-scale.npy`` (``d`` float32); per image chunk ``chunk-NNNNN.codes.npy`` (``n x R x d`` int8)
and ``chunk-NNNNN.errors.npy`` (``n x R x 2`` float16).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import VGSError
from .io import load_npy, save_npy, write_json
from .kernels import StoredArrays, StoredRows, region_maxima

CODEC_KIND = "pca-int8"
MAX_DIM = 16384


def _round_up_f16(values: np.ndarray) -> np.ndarray:
    """float16 values never below ``values`` (so stored error bounds stay bounds)."""
    half = values.astype(np.float16)
    low = half.astype(np.float32) < values
    half[low] = np.nextafter(half[low], np.float16(np.inf))
    return half


def symmetric_int8(values: torch.Tensor, dims: int | tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Float ``values`` -> int8 codes and scales with ``values ~ codes * scales``: one scale, the largest
    magnitude over ``dims`` / 127, per slice (``scales`` keeps ``dims`` as size-1 dimensions)."""
    scales = values.abs().amax(dim=dims, keepdim=True).clamp_min(1e-30) / 127
    return torch.round(values / scales).clamp(-127, 127).to(torch.int8), scales


REGION_PRECISIONS = ("float16", "int8")  # how an index stores its regions (``vgs index --regions``)


def quantize_regions(regions: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``n x R x D`` float regions -> their stored int8 form: ``n x R x D`` int8 codes and ``n x R`` float32
    scales, one per region (its largest magnitude / 127), so that ``regions ~ codes * scales[..., None]``."""
    codes, scales = symmetric_int8(regions.float(), -1)
    return codes.numpy(), scales[..., 0].numpy().astype(np.float32)


class Int8Regions:
    """One index chunk's regions stored as int8 (``vgs index --regions int8``): ``n x R x D`` int8 codes and
    ``n x R`` float32 scales, memory-mapped.  Reads like the ``n x R x D`` float array it stands for:
    ``len``, ``shape``, indexing on the first axis and ``np.asarray`` give float32 ``codes * scale``."""

    dtype = np.dtype(np.float32)
    ndim = 3

    def __init__(self, codes: np.ndarray, scales: np.ndarray):
        self.codes, self.scales = codes, scales

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.codes.shape)

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, key) -> np.ndarray:  # noqa: ANN001
        return self.codes[key].astype(np.float32) * self.scales[key][..., None]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:  # noqa: ANN001
        return self[:] if dtype is None else self[:].astype(dtype, copy=False)


def principal_basis(vectors: torch.Tensor, d: int) -> torch.Tensor:
    """``n x D`` vectors -> the ``min(d, D) x D`` orthonormal rows of largest ``E[<x, u>^2]`` (uncentred: what
    keeps inner products), the eigenvectors of ``X^T X``, the largest first; signs fixed for repeatability."""
    x = vectors.double()
    _, eigenvectors = torch.linalg.eigh(x.T @ x)  # ascending eigenvalues
    basis = eigenvectors.flip(1)[:, : min(d, x.shape[1])].T  # d x D
    signs = torch.sign(basis.gather(1, basis.abs().argmax(1, keepdim=True)))
    return (basis * signs).float()


@dataclass
class RegionCodec:
    """``basis``: ``d x D`` orthonormal rows (float32); ``scale``: ``d`` per-dimension int8 step (float32)."""

    basis: np.ndarray
    scale: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.basis.shape[0])

    @property
    def embed_dim(self) -> int:
        return int(self.basis.shape[1])

    @property
    def index_dim(self) -> int:
        """Dimensions of the region index's vectors: the code, then the two error norms."""
        return self.dim + 2

    @classmethod
    def fit(cls, sample: np.ndarray, dim: int) -> "RegionCodec":
        """Fit on ``m x D`` regions: the top-``dim`` right singular vectors (uncentered), or the identity
        when ``dim >= D``; per dimension, a step that maps the 99.99th percentile of ``|P x|`` to 127."""
        sample = np.asarray(sample, dtype=np.float32).reshape(-1, sample.shape[-1])
        d_full = sample.shape[1]
        if not 1 <= dim <= MAX_DIM or len(sample) == 0:
            raise VGSError(f"codec: expected 1 <= dim <= {MAX_DIM} and a non-empty sample, got dim {dim}, {len(sample)} regions")
        if dim >= d_full:
            basis = np.eye(d_full, dtype=np.float32)
        else:
            basis = principal_basis(torch.from_numpy(sample), dim).numpy()
        projected = np.abs(sample @ basis.T)
        top = np.quantile(projected, 0.9999, axis=0) if len(projected) > 1 else projected.max(0)
        return cls(basis, np.maximum(top / 127.0, 1e-8).astype(np.float32))

    # ------------------------------------------------------------------ coding

    def encode(self, regions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``n x R x D`` regions -> (``n x R x d`` int8 codes, ``n x R x 2`` float16 error norms, rounded up)."""
        x = np.asarray(regions, dtype=np.float32)
        y = x @ self.basis.T
        codes = np.clip(np.rint(y / self.scale), -127, 127).astype(np.int8)
        e_in = np.linalg.norm(y - codes * self.scale, axis=-1)
        e_out = np.linalg.norm(x - y @ self.basis, axis=-1) if self.dim < self.embed_dim else np.zeros_like(e_in)
        errors = np.stack([e_in, e_out], axis=-1) * (1 + 1e-3) + 1e-6  # float32 rounding of the norms themselves
        return codes, _round_up_f16(errors.astype(np.float32))

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """``... x d`` int8 codes -> ``... x d`` float32 projected regions ``s * c``."""
        return codes.astype(np.float32) * self.scale

    def index_vectors(self, codes: np.ndarray, errors: np.ndarray) -> np.ndarray:
        """``n x R x (d + 2)``: decoded codes and their error norms (what :class:`RegionIndex` holds)."""
        return np.concatenate([self.decode(codes), errors.astype(np.float32)], axis=-1)

    def query_vectors(self, frames: np.ndarray, bounded: bool = True) -> np.ndarray:
        """``T x D`` frames -> ``T x (d + 2)``: ``[P q, ||P q||, ||q - P^T P q||]`` (bounded) or ``[P q, 0, 0]``."""
        q = np.asarray(frames, dtype=np.float32)
        p = q @ self.basis.T
        out = np.zeros((len(q), self.dim + 2), dtype=np.float32)
        out[:, : self.dim] = p
        if bounded:
            out[:, self.dim] = np.linalg.norm(p, axis=1)
            out[:, self.dim + 1] = np.linalg.norm(q - p @ self.basis, axis=1) if self.dim < self.embed_dim else 0.0
        return out

    @property
    def principal(self) -> bool:
        """Whether the basis is principal directions, the largest first (else the identity: ``dim >= D``), so
        that the first ``k`` coordinates are the best ``k`` for inner products."""
        return self.dim < self.embed_dim

    def leading(self, k: int) -> int | None:
        """``k`` when the codes have more than ``k`` principal coordinates (a cheaper ranking on the first
        ``k`` is worth a pass), else None."""
        return k if self.principal and self.dim > k else None

    def checked_dims(self, dims: int | None) -> int:
        """``dims`` coordinates of the codes (all of them for None), refused outside ``1..dim``."""
        dims = self.dim if dims is None else dims
        if not 1 <= dims <= self.dim:
            raise VGSError(f"codes MISA: expected 1..{self.dim} dimensions, got {dims}")
        return dims

    def misa(self, codes: np.ndarray | StoredRows, frames: np.ndarray, chunk: int = 1024, int8_query: bool = False,
             dims: int | None = None) -> np.ndarray:
        """MISA of ``m x R x d`` codes against one caption's ``T x D`` frames on the decoded codes: ``m``.

        ``<s * c, P q> = <c, s * P q>``: the scale goes into the query, and each chunk is one
        ``(c R) x d`` by ``d x T`` product: 18 ms against 43 ms for decoding and a batched product per image
        (2,000 images of 49 x 128 codes, 22 frames, 1 thread).  ``int8_query``: the scaled query is
        quantized too (one scale per frame) and the product runs on integers
        (:func:`vgs.kernels.region_maxima`, 11x faster than ``torch._int_mm`` without VNNI and level with
        it or faster with VNNI); an approximation of these scores, for ranking candidates only.
        ``dims``: on the first ``dims`` coordinates only (``codes`` may hold just those, ``m x R x dims``).
        ``codes`` may be :class:`vgs.kernels.StoredRows`, which the int8 kernel reads in place (an index's
        chunk files, no gathered copy: 3,000 images' leading 64 coordinates took 11.9 ms to gather).
        """
        dims = self.checked_dims(dims)
        basis, scale = self.basis[:dims], self.scale[:dims]
        p = np.ascontiguousarray((np.asarray(frames, dtype=np.float32) @ basis.T).T * scale[:, None])  # dims x T
        if int8_query:
            query, frame_scales = symmetric_int8(torch.from_numpy(p), 0)  # d x T int8, 1 x T
            query, frame_scales = np.ascontiguousarray(query.numpy().T), frame_scales.numpy()  # T x d, 1 x T
            rows = codes if isinstance(codes, StoredRows) else StoredArrays.of(codes).rows(np.arange(len(codes)), dims)
            return (region_maxima(rows, query) * frame_scales).mean(1).astype(np.float64)  # n x T -> n
        codes = codes.gather() if isinstance(codes, StoredRows) else codes
        out = np.empty(len(codes), dtype=np.float64)
        for c0 in range(0, len(codes), chunk):
            part = np.ascontiguousarray(codes[c0: c0 + chunk, :, :dims])  # c x R x dims
            scores = part.reshape(-1, part.shape[-1]).astype(np.float32) @ p  # (c R) x T
            out[c0: c0 + chunk] = scores.reshape(len(part), part.shape[1], -1).max(axis=1).mean(axis=1)
        return out

    # ------------------------------------------------------------------ files

    def save(self, folder: Path) -> None:
        save_npy(folder / "codec-basis.npy", self.basis)
        save_npy(folder / "codec-scale.npy", self.scale)
        write_json(folder / "codec.json", {"kind": CODEC_KIND, "dim": self.dim, "embed_dim": self.embed_dim})

    @classmethod
    def load(cls, folder: Path, embed_dim: int) -> "RegionCodec | None":
        """The index's codec, checked against ``embed_dim``; None when the index has none."""
        path = folder / "codec.json"
        if not path.is_file():
            return None
        try:
            meta = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise VGSError(f"{path}: corrupt codec metadata ({str(exc)[:80]})") from exc
        dim = meta.get("dim") if isinstance(meta, dict) else None
        if not isinstance(meta, dict) or meta.get("kind") != CODEC_KIND or meta.get("embed_dim") != embed_dim \
                or not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= min(embed_dim, MAX_DIM):
            raise VGSError(f"{path}: expected kind {CODEC_KIND!r}, embed_dim {embed_dim} and dim 1..{embed_dim}")
        basis = load_npy(folder / "codec-basis.npy")
        scale = load_npy(folder / "codec-scale.npy")
        if basis.shape != (dim, embed_dim) or scale.shape != (dim,) or basis.dtype != np.float32 or scale.dtype != np.float32 \
                or not (np.isfinite(basis).all() and np.isfinite(scale).all() and (scale > 0).all()):
            raise VGSError(f"{folder / 'codec-basis.npy'}: expected a finite {dim} x {embed_dim} float32 basis and "
                           f"{dim} positive float32 scales")
        return cls(basis, scale)


def build_codes(folder: Path, chunk_names: list[str], regions: list[np.ndarray], dim: int,
                sample_regions: int = 50_000, block: int = 1024) -> RegionCodec:
    """Fit the index's codec (once: on a sample of up to ``sample_regions`` regions) and write the codes of
    every image chunk that lacks them (``images/chunk-NNNNN.{codes,errors}.npy``; resumable).

    ``regions``: each chunk's ``n x R x D`` regions (memory-mapped), in the order of ``chunk_names``.
    An existing codec is kept (its ``dim`` wins over ``dim``); a new one re-encodes every chunk.
    """
    if not regions:
        raise VGSError(f"{folder}: the index holds no images to encode")
    embed_dim = int(regions[0].shape[2])
    codec = RegionCodec.load(folder, embed_dim)
    fresh = codec is None
    if fresh:
        counts = np.array([len(r) for r in regions])
        rng = np.random.default_rng(0)
        per_image = int(regions[0].shape[1])
        picks = np.sort(rng.choice(int(counts.sum()), size=min(int(counts.sum()), max(1, sample_regions // per_image)), replace=False))
        offsets = np.cumsum(np.concatenate([[0], counts]))
        parts = []
        for c, part in enumerate(regions):
            local = picks[(picks >= offsets[c]) & (picks < offsets[c + 1])] - offsets[c]
            if len(local):
                parts.append(np.asarray(part[local], dtype=np.float32).reshape(-1, embed_dim))
        codec = RegionCodec.fit(np.concatenate(parts), min(dim, embed_dim))
    for name, part in zip(chunk_names, regions):
        codes_path, errors_path = folder / "images" / f"{name}.codes.npy", folder / "images" / f"{name}.errors.npy"
        if not fresh and codes_path.is_file() and errors_path.is_file():
            continue
        pieces = [codec.encode(np.asarray(part[c0: c0 + block], dtype=np.float32)) for c0 in range(0, len(part), block)]
        save_npy(errors_path, np.concatenate([p[1] for p in pieces]))
        save_npy(codes_path, np.concatenate([p[0] for p in pieces]))
    if fresh:
        codec.save(folder)  # last: an interrupted run re-encodes everything with a fresh fit
    return codec


def load_codes(folder: Path, chunk_names: list[str], counts: list[int], regions_per_image: int,
               codec: RegionCodec) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """Each chunk's (``n x R x d`` int8 codes, ``n x R x 2`` float16 errors), memory-mapped and checked;
    None when some chunk has none yet."""
    out = []
    for name, n in zip(chunk_names, counts):
        codes_path, errors_path = folder / "images" / f"{name}.codes.npy", folder / "images" / f"{name}.errors.npy"
        if not (codes_path.is_file() and errors_path.is_file()):
            return None
        codes, errors = load_npy(codes_path, mmap=True), load_npy(errors_path, mmap=True)
        if codes.shape != (n, regions_per_image, codec.dim) or codes.dtype != np.int8:
            raise VGSError(f"{codes_path}: expected {n} x {regions_per_image} x {codec.dim} int8 codes, "
                           f"got {tuple(codes.shape)} {codes.dtype}")
        if errors.shape != (n, regions_per_image, 2) or errors.dtype != np.float16:
            raise VGSError(f"{errors_path}: expected {n} x {regions_per_image} x 2 float16 error norms, "
                           f"got {tuple(errors.shape)} {errors.dtype}")
        out.append((codes.view(np.ndarray), errors.view(np.ndarray)))  # still mapped; plain views index faster
    return out
