"""Audio branch: ``B x F x T`` features with lengths -> ``B x D x T'`` frames with lengths ``T'``.

* ``conv5`` / ``conv6``: DAVEnet (Harwath et al. 2018): a first convolution spanning
  all F bands, then 1-D convolutions with max pooling (stride 2) after layers 2-5;
  ``conv6`` adds a sixth convolution at the last resolution.  ``T' = ceil(T / 16)``.
* ``resdavenet``: residual 1-D conv blocks with masked batch norm (ResDAVEnet-style),
  four stride-2 stages; our CPU default.  ``T' = ceil(T / 16)``, or ``ceil(T / (16 k))`` with
  ``k`` frames stacked first (``stack``): every layer and the matchmap then see ``k`` times fewer frames.
* ``frame-head``: a short residual head for pretrained frames (``features.kind: whisper``), one stride-2
  block then one more.  ``T' = ceil(T / 2)``.
* ``lstm`` / ``gru``: ``rnn_subsample`` frames stacked, then a stacked (optionally
  bidirectional) recurrent net over packed sequences.  ``T' = ceil(T / rnn_subsample)``.

The names are the registry in :mod:`vgs.models.factory`.  ``downsample`` is each encoder's
total stride in frames: batches are padded to a multiple of it so strided layers see whole windows.
Every encoder zeroes padded frames after each layer, so an utterance's frames do
not depend on how much padding its batch had (exactly, in eval mode).
"""

from __future__ import annotations

import abc

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def frame_mask(lengths: torch.Tensor, t_max: int) -> torch.Tensor:
    """``B`` lengths -> ``B x T`` boolean mask of real frames."""
    return torch.arange(t_max, device=lengths.device)[None, :] < lengths[:, None]


def stack_frames(x: torch.Tensor, lengths: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame stacking: ``B x F x T`` -> ``B x (k * F) x ceil(T / k)``; a new frame holds the ``F`` bands of ``k``
    consecutive frames, one frame after another, zero-padded at the end; lengths become ``ceil(L / k)``."""
    if k == 1:
        return x, lengths
    b, f, t = x.shape
    x = F.pad(x, (0, (-t) % k)).transpose(1, 2).reshape(b, -(-t // k), f * k).transpose(1, 2)
    return x, stacked_lengths(lengths, k)


def stacked_lengths(lengths: torch.Tensor, k: int) -> torch.Tensor:
    """Lengths after stacking ``k`` frames into one: ``ceil(L / k)``."""
    return torch.div(lengths + k - 1, k, rounding_mode="floor")


def halve(lengths: torch.Tensor) -> torch.Tensor:
    """Lengths after a stride-2 layer with 'same' padding: ``ceil(L / 2)``."""
    return torch.div(lengths + 1, 2, rounding_mode="floor")


class InputNorm(nn.Module):
    """Input standardization of ``B x F x T`` features.

    ``global``: per-band mean and std measured on the training set (buffers).  ``utterance``: each
    caption's own per-band mean over its real frames is removed and the result divided by its own
    standard deviation, so a microphone's colouring, a voice's spectral tilt and the recording level
    all cancel (the training-set buffers are then unused).
    """

    def __init__(self, dim: int, per_utterance: bool = False):
        super().__init__()
        self.per_utterance = per_utterance
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(std.clamp_min(1e-3))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if not self.per_utterance:
            return (x - self.mean[None, :, None]) / self.std[None, :, None]
        if lengths is None:
            lengths = torch.full((x.shape[0],), x.shape[-1], device=x.device)
        m = frame_mask(lengths, x.shape[-1])[:, None, :].to(x.dtype)  # B x 1 x T
        count = m.sum(dim=2, keepdim=True).clamp_min(1.0)  # B x 1 x 1
        centred = (x - (x * m).sum(dim=2, keepdim=True) / count) * m
        std = (centred.square().sum(dim=(1, 2), keepdim=True) / (count * x.shape[1])).sqrt()
        return centred / std.clamp_min(1e-3)


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm over channels whose training statistics count only real frames."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if not self.training or mask is None:
            return super().forward(x)
        m = mask[:, None, :].to(x.dtype)
        count = m.sum().clamp_min(1.0)
        mean = (x * m).sum(dim=(0, 2)) / count
        var = (((x - mean[None, :, None]) * m) ** 2).sum(dim=(0, 2)) / count
        with torch.no_grad():
            self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
            unbiased = var.detach() * count / (count - 1).clamp_min(1.0)
            self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
            self.num_batches_tracked += 1
        x = (x - mean[None, :, None]) * torch.rsqrt(var[None, :, None] + self.eps)
        return x * self.weight[None, :, None] + self.bias[None, :, None]


class AudioEncoder(nn.Module, abc.ABC):
    """Base: holds the input normalization and applies masking between layers."""

    downsample: int = 1

    def __init__(self, input_dim: int):
        super().__init__()
        self.input_norm = InputNorm(input_dim)

    @abc.abstractmethod
    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames out (``B``) for ``lengths`` frames in (``B``)."""

    @staticmethod
    def mask(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return x * frame_mask(lengths, x.shape[-1])[:, None, :].to(x.dtype)


class DavenetEncoder(AudioEncoder):
    """DAVEnet's conv stack (5 or 6 conv layers), written with 1-D convolutions."""

    downsample = 16

    def __init__(self, input_dim: int = 40, embed_dim: int = 1024, channels: int = 512, layers: int = 5):
        super().__init__(input_dim)
        if layers not in (5, 6):
            raise ValueError("DAVEnet-style encoders have 5 or 6 layers")
        c1, c2 = max(channels // 4, 32), max(channels // 2, 64)
        self.convs = nn.ModuleList([
            nn.Conv1d(input_dim, c1, 1),  # spans all bands, one frame wide
            nn.Conv1d(c1, c2, 11, padding=5),
            nn.Conv1d(c2, channels, 17, padding=8),
            nn.Conv1d(channels, channels, 17, padding=8),
            nn.Conv1d(channels, embed_dim, 17, padding=8),
        ])
        if layers == 6:
            self.convs.append(nn.Conv1d(embed_dim, embed_dim, 17, padding=8))
        self.pool_after = {1, 2, 3, 4}

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        for _ in self.pool_after:
            lengths = halve(lengths)
        return lengths

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.mask(self.input_norm(x, lengths), lengths)
        for index, conv in enumerate(self.convs):
            x = self.mask(F.relu(conv(x)), lengths)  # before pooling, so no window sees past the end
            if index in self.pool_after:
                x = F.max_pool1d(x, 3, stride=2, padding=1)  # inputs >= 0, so zero padding == -inf padding
                lengths = halve(lengths)
                x = self.mask(x, lengths)  # the last window can reach one real frame past the new end
        return x, lengths


class ResBlock(nn.Module):
    """Two 1-D convs with masked batch norm and a residual path; optional stride 2."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, dropout: float):
        super().__init__()
        self.conv1 = nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.bn1 = MaskedBatchNorm1d(c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, kernel, padding=kernel // 2, bias=False)
        self.bn2 = MaskedBatchNorm1d(c_out)
        self.dropout = nn.Dropout(dropout)
        self.skip = None
        if stride != 1 or c_in != c_out:
            self.skip = nn.Conv1d(c_in, c_out, 1, stride=stride, bias=False)
        self.stride = stride

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out_lengths = halve(lengths) if self.stride == 2 else lengths
        mask = frame_mask(out_lengths, -(-x.shape[-1] // self.stride))
        h = F.relu(self.bn1(self.conv1(x), mask))
        h = AudioEncoder.mask(self.dropout(h), out_lengths)
        h = self.bn2(self.conv2(h), mask)
        skip = x if self.skip is None else self.skip(x)
        return AudioEncoder.mask(F.relu(h + skip), out_lengths), out_lengths


class ResDavenetEncoder(AudioEncoder):
    """Residual conv encoder: ``stack`` frames stacked, a band-spanning conv, then 4 stride-2 stages of ResBlocks."""

    def __init__(self, input_dim: int = 40, embed_dim: int = 1024, channels: int = 512, dropout: float = 0.1,
                 blocks_per_stage: int = 1, kernel: int = 9, stack: int = 1):
        super().__init__(input_dim)
        self.stack = stack
        self.downsample = 16 * stack
        widths = [channels // 4, channels // 2, channels, channels]
        self.stem = nn.Conv1d(input_dim * stack, widths[0], 1, bias=False)
        self.stem_bn = MaskedBatchNorm1d(widths[0])
        blocks: list[ResBlock] = []
        c_in = widths[0]
        for width in widths:
            for b in range(blocks_per_stage):
                blocks.append(ResBlock(c_in, width, kernel, 2 if b == 0 else 1, dropout))
                c_in = width
        self.blocks = nn.ModuleList(blocks)
        self.proj = nn.Conv1d(c_in, embed_dim, 1)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        lengths = stacked_lengths(lengths, self.stack)
        for _ in range(4):
            lengths = halve(lengths)
        return lengths

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, lengths = stack_frames(self.mask(self.input_norm(x, lengths), lengths), lengths, self.stack)  # no padding in a stack
        mask = frame_mask(lengths, x.shape[-1])
        x = self.mask(F.relu(self.stem_bn(self.stem(x), mask)), lengths)
        for block in self.blocks:
            x, lengths = block(x, lengths)
        return self.mask(self.proj(x), lengths), lengths


class FrameHead(AudioEncoder):
    """A small trainable head over pretrained frames (``features.kind: whisper``, 80 ms a frame): a 1x1 stem,
    then ``blocks`` ResBlocks, the first of stride 2, then a projection.  ``T' = ceil(T / 2)`` (160 ms)."""

    downsample = 2

    def __init__(self, input_dim: int = 384, embed_dim: int = 1024, channels: int = 512, dropout: float = 0.1,
                 blocks: int = 2, kernel: int = 5):
        super().__init__(input_dim)
        self.stem = nn.Conv1d(input_dim, channels, 1, bias=False)
        self.stem_bn = MaskedBatchNorm1d(channels)
        self.blocks = nn.ModuleList([ResBlock(channels, channels, kernel, 2 if b == 0 else 1, dropout) for b in range(blocks)])
        self.proj = nn.Conv1d(channels, embed_dim, 1)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return halve(lengths)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.mask(self.input_norm(x, lengths), lengths)
        x = self.mask(F.relu(self.stem_bn(self.stem(x), frame_mask(lengths, x.shape[-1]))), lengths)
        for block in self.blocks:
            x, lengths = block(x, lengths)
        return self.mask(self.proj(x), lengths), lengths


class RecurrentEncoder(AudioEncoder):
    """Frame stacking, then a stacked LSTM or GRU over packed sequences, then a projection."""

    def __init__(self, kind: str, input_dim: int = 40, embed_dim: int = 1024, hidden: int = 512, layers: int = 2,
                 bidirectional: bool = True, subsample: int = 4, dropout: float = 0.1):
        super().__init__(input_dim)
        self.subsample = subsample
        self.downsample = subsample
        self.inp = nn.Linear(input_dim * subsample, hidden)
        rnn = nn.LSTM if kind == "lstm" else nn.GRU
        self.rnn = rnn(hidden, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional,
                       dropout=dropout if layers > 1 else 0.0)
        self.proj = nn.Linear(hidden * (2 if bidirectional else 1), embed_dim)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return stacked_lengths(lengths, self.subsample)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, out_lengths = stack_frames(self.mask(self.input_norm(x, lengths), lengths), lengths, self.subsample)
        h = torch.tanh(self.inp(x.transpose(1, 2)))
        packed = pack_padded_sequence(h, out_lengths.cpu().clamp_min(1), batch_first=True, enforce_sorted=False)
        h, _ = self.rnn(packed)
        h, _ = pad_packed_sequence(h, batch_first=True, total_length=x.shape[-1])
        return self.mask(self.proj(h).transpose(1, 2), out_lengths), out_lengths
