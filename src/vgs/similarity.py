"""Matchmaps and the image/caption similarity scores built on them (paper Eq. 1).

For an image ``I`` (``D x H x W``, regions ``r = (i, j)``) and a caption ``A``
(``D x T``, of which ``L`` frames are real), the matchmap is
``M[r, t] = <I[:, r], A[:, t]>`` and

* ``misa``: ``mean_{t<L} max_r M[r, t]``  (max over image, sum/mean over audio)
* ``sima``: ``mean_r max_{t<L} M[r, t]``
* ``sisa``: ``mean_r mean_{t<L} M[r, t]``

:func:`similarity_matrix` scores ``N`` images against ``M`` captions, for both the
``B x B`` training matrix and ``N x M`` evaluation.  It never computes on padding:
the real frames of all captions are packed into one ``sum(L) x D`` matrix
(:class:`PackedFrames`) and each chunk of images is one dense matmul against a
chunk of it, followed by a max over regions and a segment mean over each
caption's frames.  Memory is bounded by ``chunk_bytes``, not by ``N x M``.  On CPU the
dense fp32 product runs as a 1x1 convolution (oneDNN) when there are enough frames, else
(and on GPU, in bf16) as one matmul.  float16 regions on CPU (a search index's, as stored) are
scored by :func:`vgs.kernels.region_maxima` in float32, with no converted copy of them.  On CPU,
MISA's backward is sparse (:class:`RegionMax`): each image/frame pair sends its gradient to its best
region only.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from .kernels import float16_regions, region_maxima

DEFAULT_CHUNK_BYTES = 128 * 2**20


@dataclass
class PackedFrames:
    """Real frames of ``M`` captions: ``frames`` is ``F x D``, ``owner`` ``F`` (caption index), ``lengths`` ``M``."""

    frames: torch.Tensor
    owner: torch.Tensor
    lengths: torch.Tensor

    @classmethod
    def from_padded(cls, audio: torch.Tensor, lengths: torch.Tensor) -> "PackedFrames":
        """``M x D x T`` padded frames with ``M`` lengths."""
        m, _, t = audio.shape
        lengths = lengths.to(audio.device).clamp(1, t)
        mask = torch.arange(t, device=audio.device)[None, :] < lengths[:, None]
        frames = audio.transpose(1, 2)[mask]
        owner = torch.repeat_interleave(torch.arange(m, device=audio.device), lengths)
        return cls(frames, owner, lengths)

    @classmethod
    def cat(cls, parts: "list[PackedFrames]") -> "PackedFrames":
        """The captions of ``parts``, one after another (on the first part's device)."""
        lengths = torch.cat([part.lengths for part in parts])
        owner = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)
        return cls(torch.cat([part.frames for part in parts]), owner, lengths)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "PackedFrames":
        """The same captions on ``device`` (frames cast to ``dtype`` when given)."""
        return PackedFrames(self.frames.to(device, dtype), self.owner.to(device), self.lengths.to(device))

    @property
    def count(self) -> int:
        return int(self.lengths.shape[0])

    def caption(self, index: int) -> torch.Tensor:
        """Caption ``index``'s frames, ``D x L``."""
        start = int(self.lengths[:index].sum())
        return self.frames[start: start + int(self.lengths[index])].T

    def select(self, indices: torch.Tensor) -> "PackedFrames":
        """A subset of captions, in the given order."""
        starts = torch.cumsum(self.lengths, 0) - self.lengths
        pieces = [self.frames[int(starts[i]): int(starts[i] + self.lengths[i])] for i in indices.tolist()]
        lengths = self.lengths[indices]
        owner = torch.repeat_interleave(torch.arange(len(indices), device=self.frames.device), lengths)
        return PackedFrames(torch.cat(pieces), owner, lengths)


def matchmap(image: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
    """``D x H x W`` image and ``D x T`` audio -> ``H x W x T`` matchmap."""
    return torch.einsum("dhw,dt->hwt", image, audio)


def similarity_matrix(images: torch.Tensor, audio: torch.Tensor | PackedFrames, lengths: torch.Tensor | None = None,
                      kind: str = "misa", chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> torch.Tensor:
    """Score every image against every caption.

    Args:
        images: ``N x D x H x W`` (or ``N x D x R``) region embeddings.
        audio: ``M x D x T`` padded frame embeddings (with ``lengths``), or :class:`PackedFrames`.
        lengths: ``M`` real frame counts; frames at ``t >= L`` never count.
        kind: ``misa``, ``sima`` or ``sisa``.
        chunk_bytes: bound on the temporary ``n x R x f`` score block.
    Returns:
        ``N x M`` float32 similarities (differentiable).
    """
    packed = audio if isinstance(audio, PackedFrames) else PackedFrames.from_padded(audio, lengths)
    regions = images.flatten(2)  # N x D x R
    float16_kernel = kind == "misa" and _float16_kernel(regions, packed.frames)
    if regions.dtype == torch.float16 and regions.device.type == "cpu" and not float16_kernel:
        regions = regions.float()  # CPU float16 products are slow and rounded: score in float32
    if kind == "sisa":
        sums = torch.zeros(packed.count, packed.frames.shape[1], device=packed.frames.device, dtype=packed.frames.dtype)
        audio_mean = sums.index_add(0, packed.owner, packed.frames) / packed.lengths[:, None].to(packed.frames.dtype)
        return (regions.mean(2) @ audio_mean.T).float()
    if kind not in ("misa", "sima"):
        raise ValueError(f"unknown similarity {kind!r}; expected misa, sima or sisa")
    n, d, r = regions.shape
    total = packed.frames.shape[0]
    # Scores are reduced in float32; oneDNN's 1x1 convolution writes them twice (its blocked layout, then plain).
    element = 8 if _onednn(regions, packed.frames) else 4
    frames_per_chunk = max(1, min(total, chunk_bytes // (element * r * max(1, min(n, 32)))))
    # The score block, and any copy of a chunk of regions, both stay within chunk_bytes.
    images_per_chunk = max(1, min(n, chunk_bytes // (element * r * frames_per_chunk), chunk_bytes // (element * r * d)))
    in_order = total < 2 or bool((packed.owner[1:] >= packed.owner[:-1]).all())  # frames grouped by caption
    if float16_kernel:
        return _misa_float16(regions, packed, chunk_bytes, in_order)
    reducer = _misa_rows if kind == "misa" else _sima_rows
    rows = [reducer(regions[i0: i0 + images_per_chunk], packed, frames_per_chunk, in_order) for i0 in range(0, n, images_per_chunk)]
    return torch.cat(rows)


def _onednn(regions: torch.Tensor, frames: torch.Tensor) -> bool:
    """fp32 on CPU with regions stored ``D x R`` (not channels-last): the 1x1-convolution path."""
    return (regions.device.type == "cpu" and regions.dtype == torch.float32 and frames.dtype == torch.float32
            and not (regions.stride(1) == 1 and regions.shape[1] > 1))


def _float16_kernel(regions: torch.Tensor, frames: torch.Tensor) -> bool:
    """float16 regions on CPU, real frames and nothing to differentiate: :func:`_misa_float16`'s case."""
    return (regions.device.type == "cpu" and regions.dtype == torch.float16 and frames.device.type == "cpu"
            and frames.shape[0] > 0 and not (torch.is_grad_enabled() and (regions.requires_grad or frames.requires_grad))
            and float16_regions())


def _misa_float16(regions: torch.Tensor, packed: PackedFrames, chunk_bytes: int, in_order: bool) -> torch.Tensor:
    """MISA of ``N x D x R`` float16 regions against packed frames -> ``N x M`` float32: each frame's best
    region by the float32 kernel reading float16 (4-8x the float32 path, which converts and copies the
    regions first, for a search's candidates), then each caption's mean.  A view of rows stored ``R x D``
    (channels last, as an index stores them) is read in place; other layouts are copied a chunk at a time."""
    rows = regions.transpose(1, 2)  # N x R x D
    frames = packed.frames.detach().float().numpy()  # F x D
    per_chunk = max(1, chunk_bytes // (4 * max(len(frames), rows.shape[1] * rows.shape[2] // 2)))  # maxima and copies
    out = []
    for i0 in range(0, len(rows), per_chunk):
        best = torch.from_numpy(region_maxima(rows[i0: i0 + per_chunk].contiguous().numpy(), frames))  # n_c x F
        sums = _add_segments(torch.zeros(len(best), packed.count), best, packed.owner, in_order)
        out.append(sums / packed.lengths[None, :].float())
    return torch.cat(out)


def _scores(chunk: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Every region of ``chunk`` (``n x D x R``) against every frame (``f x D``): ``n x f x R``, one dense product."""
    n_c, d, r = chunk.shape
    if _onednn(chunk, frames):
        if frames.shape[0] >= 64:
            # The same product as a 1x1 convolution: oneDNN runs it 1.2-2x faster than the BLAS matmul on some
            # CPUs (AMD Zen 4), reading the regions in their N x D x R layout without a copy.
            return F.conv1d(chunk, frames.unsqueeze(-1))
        return torch.matmul(frames, chunk)  # a few frames (search queries): batched, still without a copy
    block = chunk.transpose(1, 2).reshape(-1, d)  # (n_c * R) x D: a view for channels-last regions, else a copy
    return (frames @ block.T).view(-1, n_c, r).transpose(0, 1)  # written frame-major: see _scores_by_frame


class RegionMax(torch.autograd.Function):
    """``best[n, f] = max_r <chunk[n, :, r], frames[f]>`` (``n x D x R``, ``f x D`` -> ``n x f``), sparse backward.

    Autograd's ``amax`` would materialize an ``n x f x R`` gradient and run two dense products the size of
    the forward.  Only the best region of each (image, frame) receives gradient, so both gradients are
    products with an ``f x (n * R)`` matrix of ``n * f`` non-zeros: about half the time of a CPU training
    step's matchmap.  Exact ties split the gradient evenly, as ``amax`` does (identical regions, such as
    the flat background of an upsampled image, tie exactly; handing it all to the first would teach the
    model to point at the top-left corner).
    """

    @staticmethod
    def forward(ctx, chunk: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        scores = _scores_by_frame(chunk, frames)  # f x n x R
        best, where = scores.max(dim=2)  # f x n, and the (first) best region's index
        tied = scores == best.unsqueeze(2)  # one True per (f, n) unless regions tie exactly
        ctx.save_for_backward(chunk, frames, where, tied if int(torch.count_nonzero(tied)) > best.numel() else None)
        return best.t().contiguous()  # n x f

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # type: ignore[override]
        chunk, frames, where, tied = ctx.saved_tensors
        n, d, r = chunk.shape
        by_frame = grad.float().t()  # f x n
        weights = _best_region_weights(by_frame, where, r) if tied is None else _tied_region_weights(by_frame, tied)
        grad_chunk = grad_frames = None
        if ctx.needs_input_grad[0]:
            grad_chunk = (weights.t() @ frames.float()).view(n, r, d).transpose(1, 2).to(chunk.dtype)
        if ctx.needs_input_grad[1]:
            grad_frames = (weights @ chunk.float().transpose(1, 2).reshape(n * r, d)).to(frames.dtype)
        return grad_chunk, grad_frames


@contextmanager
def _sparse_is_beta() -> Iterator[None]:
    """Silence torch's "sparse CSR support is in beta" warning: the products used here are not."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def _scores_by_frame(chunk: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """:func:`_scores` as ``f x n x R``, the order of the sparse backward's rows.

    Off the 1x1-convolution path the product writes the score block in this order, so the max and the ties
    read it contiguously; on that path it is a transposed view.
    """
    return _scores(chunk, frames).transpose(0, 1)


def _best_region_weights(grad: torch.Tensor, where: torch.Tensor, r: int) -> torch.Tensor:
    """``f x n`` gradient and best-region indices -> the ``f x (n * R)`` CSR matrix that routes it."""
    f, n = grad.shape
    # Row f holds one entry per image n, at column n * R + where[f, n]: already sorted, a valid CSR matrix.
    columns = (where + torch.arange(n, device=where.device)[None, :] * r).reshape(-1)
    rows = torch.arange(0, f * n + 1, n, device=where.device)
    with _sparse_is_beta():
        return torch.sparse_csr_tensor(rows, columns, grad.reshape(-1), (f, n * r), check_invariants=False)


def _tied_region_weights(grad: torch.Tensor, tied: torch.Tensor) -> torch.Tensor:
    """The same with ``f x n x R`` ties: each tied region gets an equal share of its pair's gradient."""
    f, n, r = tied.shape
    frame, image, region = tied.nonzero(as_tuple=True)  # in row-major order: by frame, then column
    pair = frame * n + image
    share = grad.reshape(-1)[pair] / torch.bincount(pair, minlength=f * n)[pair]
    rows = torch.zeros(f + 1, dtype=torch.int64, device=tied.device)
    rows[1:] = torch.bincount(frame, minlength=f).cumsum(0)
    with _sparse_is_beta():
        return torch.sparse_csr_tensor(rows, image * r + region, share, (f, n * r), check_invariants=False)


def _region_max(chunk: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """``n x D x R`` regions, ``f x D`` frames -> ``n x f`` best region score; the sparse backward on CPU."""
    if chunk.device.type == "cpu" and torch.is_grad_enabled() and (chunk.requires_grad or frames.requires_grad):
        return RegionMax.apply(chunk, frames)
    return _scores(chunk, frames).amax(dim=2)


def _add_segments(sums: torch.Tensor, values: torch.Tensor, owner: torch.Tensor, in_order: bool) -> torch.Tensor:
    """``sums[:, c] += sum of values[:, f] over frames f with owner[f] == c`` (out of place)."""
    if not in_order:
        return sums.index_add(1, owner, values)
    first, last = int(owner[0]), int(owner[-1])
    counts = torch.bincount(owner - first, minlength=last - first + 1)
    part = torch.segment_reduce(values, "sum", lengths=counts.expand(values.shape[0], -1).contiguous(), axis=1)
    return sums.index_add(1, torch.arange(first, last + 1, device=sums.device), part)


def _misa_rows(chunk: torch.Tensor, packed: PackedFrames, frames_per_chunk: int, in_order: bool) -> torch.Tensor:
    sums = torch.zeros(chunk.shape[0], packed.count, device=chunk.device, dtype=torch.float32)
    for f0 in range(0, packed.frames.shape[0], frames_per_chunk):
        best = _region_max(chunk, packed.frames[f0: f0 + frames_per_chunk]).float()  # n_c x f_c: max over regions
        sums = _add_segments(sums, best, packed.owner[f0: f0 + frames_per_chunk], in_order)  # sum over each caption's frames
    return sums / packed.lengths[None, :].float()


def _sima_rows(chunk: torch.Tensor, packed: PackedFrames, frames_per_chunk: int, in_order: bool) -> torch.Tensor:
    n_c, _, r = chunk.shape
    best = torch.full((n_c, packed.count, r), float("-inf"), device=chunk.device, dtype=torch.float32)
    for f0 in range(0, packed.frames.shape[0], frames_per_chunk):
        scores = _scores(chunk, packed.frames[f0: f0 + frames_per_chunk]).float()  # n_c x f_c x R
        owner = packed.owner[f0: f0 + frames_per_chunk][None, :, None].expand_as(scores)
        best = best.scatter_reduce(1, owner, scores, reduce="amax", include_self=True)  # max over each caption's frames
    return best.mean(dim=2)  # mean over regions


def pairwise_similarity(images: torch.Tensor, audio: torch.Tensor, lengths: torch.Tensor, kind: str = "misa") -> torch.Tensor:
    """Similarity of matched pairs only, image ``i`` with caption ``i``: ``B x D x H x W``, ``B x D x T`` -> ``B``."""
    maps = torch.einsum("bdr,bdt->brt", images.flatten(2), audio)
    valid = torch.arange(audio.shape[-1], device=audio.device)[None, :] < lengths.to(audio.device)[:, None]
    count = valid.sum(-1).clamp_min(1).to(maps.dtype)
    if kind == "misa":
        return (maps.amax(dim=1) * valid).sum(-1) / count
    if kind == "sima":
        return maps.masked_fill(~valid[:, None, :], float("-inf")).amax(-1).mean(-1)
    if kind == "sisa":
        return (maps.mean(dim=1) * valid).sum(-1) / count
    raise ValueError(f"unknown similarity {kind!r}")
