"""The audio front end: log-mel filterbanks, MFCC or Whisper features of one utterance (pure functions,
no files written).

Defaults follow DAVEnet: 16 kHz, 25 ms Hamming window (n_fft 400), 10 ms hop,
pre-emphasis 0.97, 40 mel bands from 20 Hz, power in dB relative to the
utterance's maximum, at most 1024 frames.  ``kind: whisper`` is the pretrained front end of
:mod:`vgs.whisper` instead: Whisper's own 80-band log-mel (10 ms hop, the same silence trimming, at most
``max_frames`` of them), then its frozen encoder, ``T' x 384`` at 80 ms a frame.  A split's features
are cached on disk by :mod:`vgs.data.cache`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import librosa
import numpy as np
import scipy.fft
import torch
from torch.nn import functional as F

from . import whisper
from .audio import load_audio
from .errors import VGSError

FEATURE_KINDS = ("logmel", "mfcc", "whisper")


@dataclass
class AudioFeatureConfig:
    """Spectral front end. ``kind`` is ``logmel``, ``mfcc`` or ``whisper`` (which fixes its own window, hop
    and bands: only ``sample_rate`` 16000, ``max_frames`` <= 3000 and the trimming settings apply)."""

    kind: str = "logmel"
    sample_rate: int = 16000
    n_mels: int = 40
    n_mfcc: int = 40
    window_ms: float = 25.0
    hop_ms: float = 10.0
    preemphasis: float = 0.97
    fmin: float = 20.0
    max_frames: int = 1024
    trim_db: float = 35.0  # drop leading/trailing frames this far below the loudest (0 = keep all)
    trim_margin: int = 10  # frames of silence kept at each end (100 ms: TTS captions are not cut)

    @property
    def n_fft(self) -> int:
        return int(round(self.sample_rate * self.window_ms / 1000))

    @property
    def hop(self) -> int:
        return int(round(self.sample_rate * self.hop_ms / 1000))

    @property
    def dim(self) -> int:
        """Feature bins per frame (the audio encoder's input height)."""
        if self.kind == "whisper":
            return whisper.WIDTH
        return self.n_mfcc if self.kind == "mfcc" else self.n_mels

    @property
    def frame_seconds(self) -> float:
        """Seconds per feature frame (what an audio encoder's strides multiply)."""
        return whisper.FRAME_SECONDS if self.kind == "whisper" else self.hop_ms / 1000

    @property
    def input_frame_seconds(self) -> float:
        """Seconds per spectrogram frame, the unit of ``max_frames`` (10 ms for Whisper)."""
        return whisper.HOP / whisper.SAMPLE_RATE if self.kind == "whisper" else self.hop_ms / 1000

    def validate(self) -> None:
        for name in ("sample_rate", "n_mels", "window_ms", "hop_ms"):
            if not getattr(self, name) > 0:
                raise VGSError(f"features.{name}: expected a positive number, got {getattr(self, name)!r}")
        if self.n_fft < 16 or self.hop < 1:
            raise VGSError(f"features: window {self.window_ms} ms / hop {self.hop_ms} ms at {self.sample_rate} Hz "
                           "are too short (expected at least 16 samples per window)")
        if not 0 <= self.preemphasis < 1:
            raise VGSError(f"features.preemphasis: expected 0 <= value < 1, got {self.preemphasis}")
        if self.kind not in FEATURE_KINDS:
            raise VGSError(f"features.kind: expected one of {', '.join(FEATURE_KINDS)}, got {self.kind!r}")
        if self.kind == "whisper" and (self.sample_rate != whisper.SAMPLE_RATE or self.max_frames > whisper.MAX_MEL_FRAMES):
            raise VGSError(f"features: kind whisper expects sample_rate {whisper.SAMPLE_RATE} and max_frames <= "
                           f"{whisper.MAX_MEL_FRAMES}, got {self.sample_rate} and {self.max_frames}")
        if self.kind == "mfcc" and not 1 <= self.n_mfcc <= self.n_mels:
            raise VGSError(f"features.n_mfcc: expected 1..n_mels ({self.n_mels}), got {self.n_mfcc}")
        if self.max_frames < 16:
            raise VGSError(f"features.max_frames: expected at least 16, got {self.max_frames}")
        if not (math.isfinite(self.trim_db) and 0 <= self.trim_db <= 80):
            raise VGSError(f"features.trim_db: expected 0 (no trimming) to 80 dB, got {self.trim_db!r}")
        if not 0 <= self.trim_margin <= 1000:
            raise VGSError(f"features.trim_margin: expected 0..1000 frames, got {self.trim_margin!r}")


@lru_cache(maxsize=8)
def _mel_basis(sample_rate: int, n_fft: int, n_mels: int, fmin: float) -> torch.Tensor:
    return torch.from_numpy(librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin)).float()


@lru_cache(maxsize=8)
def _dct_matrix(n_mfcc: int, n_mels: int) -> torch.Tensor:
    basis = scipy.fft.dct(np.eye(n_mels), type=2, norm="ortho", axis=0)[:n_mfcc]  # n_mfcc x n_mels, as librosa.feature.mfcc
    return torch.from_numpy(basis).float()


def compute_features(audio: np.ndarray | torch.Tensor, config: AudioFeatureConfig = AudioFeatureConfig()) -> np.ndarray:
    """Features of one utterance. ``audio``: ``N`` samples. Returns ``T x F`` float32, T <= max_frames."""
    y = torch.as_tensor(np.asarray(audio, dtype=np.float32))
    if y.ndim != 1 or y.numel() == 0:
        raise VGSError(f"compute_features: expected a non-empty 1-D signal, got shape {tuple(y.shape)}")
    if config.kind == "whisper":
        y = F.pad(y[: config.max_frames * whisper.HOP], (0, max(0, 2 * whisper.HOP - len(y))))  # >= 2 mel frames
        power = trim_silence(whisper.mel_power(y), config.trim_db, config.trim_margin)
        return whisper.encode(power).numpy()
    # Crop the signal before the STFT so very long inputs cost no more than max_frames.
    y = y[: (config.max_frames - 1) * config.hop + 1]
    y = y - y.mean()
    y = torch.cat([y[:1], y[1:] - config.preemphasis * y[:-1]])
    window = torch.hamming_window(config.n_fft, periodic=True)
    stft = torch.stft(y, n_fft=config.n_fft, hop_length=config.hop, win_length=config.n_fft, window=window,
                      center=True, pad_mode="constant", return_complex=True)
    power = stft.real.square() + stft.imag.square()  # (n_fft/2+1) x T
    mel = _mel_basis(config.sample_rate, config.n_fft, config.n_mels, config.fmin) @ power
    amin, top_db = 1e-10, 80.0
    mel = trim_silence(mel, config.trim_db, config.trim_margin)
    logmel = 10.0 * torch.log10(mel.clamp_min(amin))
    logmel = logmel - 10.0 * torch.log10(mel.max().clamp_min(amin))
    logmel = logmel.clamp_min(logmel.max() - top_db)
    if config.kind == "mfcc":
        logmel = _dct_matrix(config.n_mfcc, config.n_mels) @ logmel
    return logmel[:, : config.max_frames].T.contiguous().numpy()


def trim_silence(mel: torch.Tensor, trim_db: float, margin: int) -> torch.Tensor:
    """Cut leading and trailing frames quieter than ``trim_db`` below the loudest frame, keeping
    ``margin`` frames at each end (an energy VAD). ``F x T`` mel power -> ``F x T'``, ``T' >= 1``.

    A browser recording's silence before and after the words would otherwise dilute MISA's mean
    over frames; TTS captions (50 ms of silence at each end) are left as they are.
    """
    if trim_db <= 0 or mel.shape[1] == 0:
        return mel
    energy = mel.sum(dim=0)
    active = torch.nonzero(energy >= energy.max() * 10 ** (-trim_db / 10)).flatten()
    if active.numel() == 0:
        return mel
    first, last = max(int(active[0]) - margin, 0), min(int(active[-1]) + margin + 1, mel.shape[1])
    return mel[:, first:last]


def features_from_file(path: str | Path, config: AudioFeatureConfig = AudioFeatureConfig()) -> np.ndarray:
    """Load (resample, downmix) and featurize one file. Returns ``T x F``."""
    max_seconds = config.max_frames * config.input_frame_seconds + config.n_fft / config.sample_rate + 0.1
    return compute_features(load_audio(path, config.sample_rate, max_seconds=max_seconds), config)


def pad_features(features: Sequence[np.ndarray | torch.Tensor], multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ragged ``T_i x F`` features into ``B x F x T_max`` (zero padded) plus lengths ``B``.

    ``T_max`` is rounded up to ``multiple`` so strided encoders see whole windows.
    """
    lengths = torch.tensor([len(f) for f in features], dtype=torch.long)
    t_max = int(lengths.max()) if len(features) else 1
    t_max = -(-t_max // multiple) * multiple
    dim = features[0].shape[1] if len(features) else 1
    batch = torch.zeros(len(features), dim, t_max)
    for i, feats in enumerate(features):
        batch[i, :, : len(feats)] = torch.as_tensor(np.asarray(feats, dtype=np.float32)).T
    return batch, lengths
