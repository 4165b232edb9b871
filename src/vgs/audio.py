"""Reading and writing audio robustly.

Any sample rate, channel count or bit depth that libsndfile reads (WAV 8/16/24/32-bit
integer or float, FLAC, OGG, ...) comes back as 16 kHz mono float32 in [-1, 1]:
channels are averaged and the rate is converted with soxr.  Unreadable, empty or
truncated files raise :class:`~vgs.errors.InputError` naming the file.
"""

from __future__ import annotations

import io
import re
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

from .errors import InputError, first_line
from .io import atomic_write

SAMPLE_RATE = 16000
MIN_SAMPLES = 400  # one 25 ms analysis window at 16 kHz
MAX_CHANNELS = 64
BLOCK_SAMPLES = 1 << 20  # decoded per read (all channels together): 4 MB of float32


def resample(audio: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a 1-D float32 signal from ``rate`` to ``target`` Hz."""
    if rate == target:
        return audio.astype(np.float32, copy=False)
    return soxr.resample(audio, rate, target, quality="HQ").astype(np.float32, copy=False)


def audio_problem(path: Path) -> str | None:
    """Why ``path`` is not a usable recording (missing, empty, truncated WAV), else None.

    Reads only the RIFF chunk headers.  libsndfile reads a WAV cut mid-data as a shorter,
    valid file, so the declared size of the data chunk is compared with the bytes present.
    Other formats (FLAC, RF64, ...) are left for the build to judge.
    """
    try:
        size = path.stat().st_size
        if not path.is_file():
            return "audio file not found"
        with open(path, "rb") as handle:
            return _wav_problem(handle, size)
    except FileNotFoundError:
        return "audio file not found"
    except OSError as exc:
        return f"audio file unreadable ({exc.strerror or exc})"


def _wav_problem(handle: BinaryIO, size: int) -> str | None:
    """:func:`audio_problem` for an open binary file (or uploaded bytes) of ``size`` bytes."""
    if size == 0:
        return "audio file is empty (0 bytes)"
    head = handle.read(12)
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
        return None
    order = "<" if head[:4] == b"RIFF" else ">"
    pos = 12
    for _ in range(64):
        chunk = handle.read(8)
        if len(chunk) < 8:
            return "truncated WAV: no audio data chunk"
        declared = struct.unpack(order + "I", chunk[4:])[0]
        pos += 8
        if chunk[:4] == b"data":
            have = size - pos
            if declared not in (0, 0xFFFFFFFF) and have < declared:
                return f"truncated WAV: header declares {declared} bytes of audio, file holds {have}"
            return None
        pos += declared + (declared & 1)
        handle.seek(pos)
    return None


def load_audio(source: str | Path | bytes, target_rate: int = SAMPLE_RATE, max_seconds: float | None = None,
               name: str | None = None) -> np.ndarray:
    """Load a file (or bytes) as mono float32 at ``target_rate``. Shape: ``N``.

    ``max_seconds`` reads only the start of very long files, bounding memory.  The header's rate,
    channels and frames are checked before decoding, and the audio is decoded in blocks of
    :data:`BLOCK_SAMPLES` and downmixed block by block: peak memory is about the mono signal at the
    file's rate, whatever its channel count (a 20 s, 8-channel, 384 kHz FLAC costs 31 MB, not 270 MB).
    """
    label = name or (str(source) if not isinstance(source, bytes) else "<upload>")
    if not isinstance(source, bytes):
        path = Path(source)
        if not path.is_file():
            raise InputError(label, "audio file not found")
        problem = audio_problem(path)
    else:  # uploaded bytes get the same truncation check as files
        problem = _wav_problem(io.BytesIO(source), len(source))
    if problem is not None:
        raise InputError(label, problem)
    handle = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with sf.SoundFile(handle) as f:
            rate, channels = f.samplerate, f.channels
            if rate < 1000 or rate > 384000:
                raise InputError(label, f"implausible sample rate {rate} Hz; expected 1000-384000")
            if not 1 <= channels <= MAX_CHANNELS:
                raise InputError(label, f"implausible channel count {channels}; expected 1-{MAX_CHANNELS}")
            frames = f.frames if max_seconds is None else min(f.frames, int(max_seconds * rate))
            mono = _read_mono(f, frames, channels)
    except InputError:
        raise
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError, OverflowError, MemoryError) as exc:
        reason = re.sub(r"<_io\.\w+ object at 0x[0-9a-f]+>", "the upload", first_line(exc, 160))  # no Python internals
        raise InputError(label, f"unreadable audio ({reason}); expected WAV/FLAC/OGG") from exc
    if mono.shape[0] == 0:
        raise InputError(label, "audio holds no samples (empty or truncated file)")
    if not np.all(np.isfinite(mono)):
        raise InputError(label, "audio holds NaN or infinite samples")
    mono = resample(np.ascontiguousarray(mono), rate, target_rate)
    if mono.shape[0] < MIN_SAMPLES * target_rate // SAMPLE_RATE:
        raise InputError(label, f"audio is too short ({mono.shape[0] / target_rate * 1000:.0f} ms); expected at least 25 ms")
    return np.clip(mono, -1.0, 1.0)


def _read_mono(f: sf.SoundFile, frames: int, channels: int) -> np.ndarray:
    """Decode ``frames`` frames of an open file block by block, averaging channels. Shape: ``<= frames``."""
    mono = np.empty(max(frames, 0), dtype=np.float32)
    step = max(1, BLOCK_SAMPLES // channels)
    buffer = np.empty((min(step, max(frames, 1)), channels), dtype=np.float32)
    done = 0
    while done < frames:
        block = f.read(frames=min(step, frames - done), dtype="float32", always_2d=True, out=buffer[: frames - done])
        if len(block) == 0:
            break  # the header promised more than the file holds
        if channels > 1:
            np.mean(block, axis=1, out=mono[done: done + len(block)])
        else:
            mono[done: done + len(block)] = block[:, 0]
        done += len(block)
    return mono[:done]


def save_audio(path: str | Path, audio: np.ndarray, rate: int = SAMPLE_RATE, durable: bool = True) -> None:
    """Write mono float audio atomically as 16-bit PCM (WAV or FLAC, by suffix); see ``atomic_write``'s ``durable``."""
    path = Path(path)
    fmt = "FLAC" if path.suffix.lower() == ".flac" else "WAV"
    with atomic_write(path, "wb", durable=durable) as handle:
        sf.write(handle, np.asarray(audio, dtype=np.float32), rate, subtype="PCM_16", format=fmt)


def audio_duration(path: str | Path) -> float:
    """Duration in seconds from the header (cheap)."""
    info = sf.info(str(path))
    return info.frames / info.samplerate
