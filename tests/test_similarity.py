"""MISA / SIMA / SISA against a naive per-pair reference (the paper's Eq. 1, one pair at a time)."""

from __future__ import annotations

import pytest
import torch

from vgs import kernels, similarity
from vgs.similarity import PackedFrames, RegionMax, matchmap, pairwise_similarity, similarity_matrix


def naive_similarity(images: torch.Tensor, audio: torch.Tensor, lengths: torch.Tensor, kind: str) -> torch.Tensor:
    """One image/caption pair at a time, straight from the definition."""
    n, m = images.shape[0], audio.shape[0]
    out = torch.zeros(n, m)
    for i in range(n):
        for j in range(m):
            mm = matchmap(images[i], audio[j, :, : lengths[j]])  # H x W x L
            flat = mm.reshape(-1, mm.shape[-1])  # R x L
            if kind == "misa":
                out[i, j] = flat.max(0).values.mean()
            elif kind == "sima":
                out[i, j] = flat.max(1).values.mean()
            else:
                out[i, j] = flat.mean()
    return out


def ragged_inputs(n: int = 5, m: int = 7, d: int = 16, h: int = 3, w: int = 4, t: int = 11):
    images = torch.randn(n, d, h, w)
    audio = torch.randn(m, d, t)
    lengths = torch.randint(1, t + 1, (m,))
    lengths[0] = t
    return images, audio, lengths


@pytest.mark.parametrize("kind", ["misa", "sima", "sisa"])
@pytest.mark.parametrize("chunk_bytes", [2**30, 700])  # one block, and many tiny chunks
def test_matches_naive_reference(kind: str, chunk_bytes: int) -> None:
    images, audio, lengths = ragged_inputs()
    expected = naive_similarity(images, audio, lengths, kind)
    got = similarity_matrix(images, audio, lengths, kind, chunk_bytes=chunk_bytes)
    assert got.shape == (5, 7)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ["channels_last", "d_major"])
@pytest.mark.parametrize("chunk_bytes", [2**30, 700])
def test_float16_regions_are_scored_by_the_kernel_in_float32(monkeypatch, layout: str, chunk_bytes: int) -> None:
    """An index's float16 regions (channels last, as stored) give the float32 scores of the same values."""
    if not kernels.float16_regions():
        pytest.skip("no F16C on this CPU")
    images, audio, lengths = ragged_inputs(n=9, m=4, d=24, t=13)
    half = images.half()
    if layout == "channels_last":
        half = half.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    calls = []
    monkeypatch.setattr(similarity, "region_maxima", lambda *a: calls.append(1) or kernels.region_maxima(*a))
    got = similarity_matrix(half, audio, lengths, "misa", chunk_bytes=chunk_bytes)
    assert calls and got.dtype == torch.float32
    torch.testing.assert_close(got, naive_similarity(half.float(), audio, lengths, "misa"), atol=1e-5, rtol=1e-5)
    calls.clear()
    similarity_matrix(images, audio, lengths, "misa")
    similarity_matrix(half.float().requires_grad_(), audio, lengths, "misa")
    assert not calls  # float32 regions, and anything to differentiate, take the torch path


@pytest.mark.parametrize("kind", ["misa", "sima", "sisa"])
def test_float16_regions_without_the_kernel_are_scored_in_float32(monkeypatch, kind: str) -> None:
    """No F16C (or not MISA): CPU float16 regions are converted, never multiplied in float16."""
    monkeypatch.setattr(similarity, "float16_regions", lambda: False)
    images, audio, lengths = ragged_inputs()
    half = images.half()
    got = similarity_matrix(half, audio, lengths, kind)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, similarity_matrix(half.float(), audio, lengths, kind), atol=0, rtol=0)


@pytest.mark.parametrize("kind", ["misa", "sima", "sisa"])
def test_padding_never_changes_a_score(kind: str) -> None:
    images, audio, lengths = ragged_inputs()
    base = similarity_matrix(images, audio, lengths, kind)
    padded = torch.cat([audio, 1e3 * torch.randn(audio.shape[0], audio.shape[1], 9)], dim=2)
    for t in range(audio.shape[2]):  # garbage in every padded position too
        padded[:, :, t] = torch.where(t < lengths[:, None], audio[:, :, t], torch.full_like(audio[:, :, t], 77.0))
    torch.testing.assert_close(similarity_matrix(images, padded, lengths, kind), base, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["misa", "sima", "sisa"])
def test_pairwise_equals_diagonal(kind: str) -> None:
    images, audio, lengths = ragged_inputs(n=6, m=6)
    full = similarity_matrix(images, audio, lengths, kind)
    torch.testing.assert_close(pairwise_similarity(images, audio, lengths, kind), full.diagonal(), atol=1e-5, rtol=1e-5)


def test_packed_select_and_caption() -> None:
    images, audio, lengths = ragged_inputs()
    packed = PackedFrames.from_padded(audio, lengths)
    assert packed.frames.shape == (int(lengths.sum()), audio.shape[1])
    torch.testing.assert_close(packed.caption(3), audio[3, :, : lengths[3]])
    subset = packed.select(torch.tensor([4, 1]))
    torch.testing.assert_close(similarity_matrix(images, subset), similarity_matrix(images, audio, lengths)[:, [4, 1]])


def test_gradients_flow_through_misa() -> None:
    images, audio, lengths = ragged_inputs()
    images.requires_grad_(True)
    audio.requires_grad_(True)
    similarity_matrix(images, audio, lengths, "misa", chunk_bytes=900).sum().backward()
    assert images.grad.abs().sum() > 0 and audio.grad.abs().sum() > 0
    assert audio.grad[:, :, lengths.min():].abs().sum() >= 0  # defined everywhere
    for j, length in enumerate(lengths.tolist()):
        assert audio.grad[j, :, length:].abs().sum() == 0  # padding gets no gradient


@pytest.mark.parametrize("chunk_bytes", [2**30, 900])
def test_sparse_misa_backward_equals_the_dense_one(chunk_bytes: int) -> None:
    """The CPU path's sparse backward (RegionMax) against autograd through the naive definition."""
    images, audio, lengths = ragged_inputs(n=6, m=5, t=90)  # enough frames for the 1x1-convolution product
    weights = torch.randn(6, 5)
    grads = []
    for score in (lambda i, a: naive_similarity(i, a, lengths, "misa"),
                  lambda i, a: similarity_matrix(i, a, lengths, "misa", chunk_bytes=chunk_bytes)):
        i, a = images.clone().requires_grad_(True), audio.clone().requires_grad_(True)
        (score(i, a) * weights).sum().backward()
        grads.append((i.grad, a.grad))
    torch.testing.assert_close(grads[1][0], grads[0][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grads[1][1], grads[0][1], atol=1e-5, rtol=1e-4)


def test_sparse_misa_backward_splits_exact_ties_like_amax() -> None:
    """Identical regions (a flat background) tie exactly; the gradient is shared as autograd's amax shares it."""
    images, audio, lengths = ragged_inputs(n=4, m=3, t=90)
    images[:, :, 0, :] = images[:, :, 0, :1]  # the first row of each image: four copies of one region
    images[1] = 0.0  # an image whose regions all tie
    weights = torch.randn(4, 3)
    grads = []
    for path in ("dense", "sparse"):
        i, a = images.clone().requires_grad_(True), audio.clone().requires_grad_(True)
        if path == "dense":  # the definition pair by pair, with amax (which shares the gradient of a tie)
            score = torch.stack([torch.stack([matchmap(i[x], a[y, :, : lengths[y]]).flatten(0, 1).amax(0).mean()
                                              for y in range(3)]) for x in range(4)])
        else:
            score = similarity_matrix(i, a, lengths, "misa")
        (score * weights).sum().backward()
        grads.append((i.grad, a.grad))
    torch.testing.assert_close(grads[1][0], grads[0][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grads[1][1], grads[0][1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("layout", ["channels_last", "bfloat16"])
@pytest.mark.parametrize("chunk_bytes", [2**30, 900])
def test_sparse_misa_backward_off_the_convolution_path(layout: str, chunk_bytes: int) -> None:
    """Channels-last or bfloat16 regions take the matmul path (frame-major scores), ties and all.

    Entries in {-1, 0, 1} make every score a small integer, exact in bfloat16, so regions tie often and
    both sides round alike: the gradients must match the dense definition (amax shares a tie's gradient).
    """
    torch.manual_seed(3)
    images = torch.randint(-1, 2, (4, 8, 3, 4)).float()
    audio = torch.randint(-1, 2, (3, 8, 90)).float()
    lengths = torch.tensor([90, 41, 7])
    dtype = torch.bfloat16 if layout == "bfloat16" else torch.float32
    weights = torch.randn(4, 3)
    grads = []
    for path in ("dense", "sparse"):
        i, a = images.to(dtype).requires_grad_(True), audio.to(dtype).requires_grad_(True)
        if path == "dense":
            score = torch.stack([torch.stack([matchmap(i[x], a[y, :, : lengths[y]]).flatten(0, 1).amax(0).float().mean()
                                              for y in range(3)]) for x in range(4)])
        else:
            regions = i.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else i
            score = similarity_matrix(regions, a, lengths, "misa", chunk_bytes=chunk_bytes)
        (score * weights).sum().backward()
        grads.append((i.grad.float(), a.grad.float()))
    tolerance = {"atol": 2e-2, "rtol": 2e-2} if dtype == torch.bfloat16 else {"atol": 1e-5, "rtol": 1e-4}
    torch.testing.assert_close(grads[1][0], grads[0][0], **tolerance)
    torch.testing.assert_close(grads[1][1], grads[0][1], **tolerance)


def test_region_max_gradcheck() -> None:
    chunk = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    frames = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(RegionMax.apply, (chunk, frames))


def test_memory_is_bounded_by_chunk() -> None:
    """The largest temporary is the chunk, not N x R x total frames."""
    images = torch.randn(40, 8, 7, 7)
    audio = torch.randn(60, 8, 30)
    lengths = torch.full((60,), 30)
    chunk = 49 * 4 * 200  # room for ~200 frames of one image
    torch.testing.assert_close(similarity_matrix(images, audio, lengths, chunk_bytes=chunk),
                               similarity_matrix(images, audio, lengths), atol=1e-5, rtol=1e-5)
