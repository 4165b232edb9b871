"""Speech that varies: waveform corruptions for test sets, voice augmentation for training.

A model trained on one synthesizer learns that synthesizer.  Two tools fight that:

* :func:`corrupt` changes a **waveform** the way the world does: additive noise at a chosen SNR
  (white, pink, or babble made from other captions), reverberation through a synthetic room
  impulse response, a speed change (resampling: tempo and pitch together), a telephone band and a
  gain.  ``vgs prepare respeak --corrupt noise:10,reverb:0.5,speed:0.9`` builds test sets with it.
* :class:`VoiceAugment` applies the same effects to **log-mel features** during training
  (``T x F`` in dB relative to the utterance's maximum, the cache's format): time stretch, a
  frequency warp (vocal tract length and pitch), a random microphone EQ or telephone band,
  reverberation as an exponential energy tail, and noise mixed in the power domain.  On 2 CPU
  cores this costs about 0.2 ms per caption, where decoding and re-featurizing waveforms would cost
  more than the training step; the corrupted *test* sets are made in the waveform domain, so the
  augmentation is scored against the real effects, not its own approximation of them.

Every draw comes from a ``numpy.random.Generator`` that the caller seeds (the data set seeds it
with ``(seed, epoch, item)``), so augmented training resumes exactly.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache

import librosa
import numpy as np
import scipy.signal
import soxr

from .audio import SAMPLE_RATE
from .errors import VGSError

NOISE_KINDS = ("white", "pink", "babble")
_FLOOR_DB = -80.0  # the log-mel floor below the utterance's maximum (features.compute_features)


# ----------------------------------------------------------------------------- waveform corruptions


@dataclass(frozen=True)
class Corruption:
    """One waveform effect: ``kind`` in noise/reverb/speed/telephone/gain with its ``value``.

    noise: SNR in dB (``noise:10``, ``noise:5:pink``); reverb: RT60 in seconds; speed: factor
    (0.9 = 10% slower and lower); telephone: no value; gain: dB.
    """

    kind: str
    value: float = 0.0
    noise: str = "white"

    @property
    def label(self) -> str:
        if self.kind == "noise":
            return f"noise{self.value:g}dB" + ("" if self.noise == "white" else f"-{self.noise}")
        return {"reverb": f"reverb{self.value:g}s", "speed": f"speed{self.value:g}", "telephone": "telephone",
                "gain": f"gain{self.value:g}dB"}[self.kind]


def parse_corruptions(spec: str) -> list[Corruption]:
    """``"noise:10,reverb:0.5,speed:0.9,telephone"`` -> effects applied in that order."""
    effects = []
    for part in (p.strip() for p in str(spec).split(",")):
        if not part:
            continue
        match = re.fullmatch(r"(noise|reverb|speed|telephone|gain)(?::([-+0-9.eE]+))?(?::(white|pink|babble))?", part)
        if match is None:
            raise VGSError(f"--corrupt {part!r}: expected noise:SNR_DB[:white|pink|babble], reverb:RT60_S, "
                           "speed:FACTOR, telephone or gain:DB")
        kind, raw, noise = match.group(1), match.group(2), match.group(3) or "white"
        needs_value = kind != "telephone"
        if needs_value and raw is None:
            raise VGSError(f"--corrupt {part!r}: {kind} needs a value, e.g. {kind}:{ {'noise': 10, 'reverb': 0.5, 'speed': 0.9, 'gain': -6}[kind]}")
        value = float(raw) if raw is not None else 0.0
        bounds = {"noise": (-20.0, 60.0), "reverb": (0.05, 3.0), "speed": (0.5, 2.0), "gain": (-40.0, 20.0),
                  "telephone": (0.0, 0.0)}[kind]
        if not (np.isfinite(value) and bounds[0] <= value <= bounds[1]):
            raise VGSError(f"--corrupt {part!r}: {kind} value {value:g} is outside {bounds[0]:g}..{bounds[1]:g}")
        effects.append(Corruption(kind, value, noise))
    if not effects:
        raise VGSError("--corrupt: no effect given; e.g. noise:10 or reverb:0.5,speed:0.9")
    return effects


def item_rng(key: str, salt: str = "") -> np.random.Generator:
    """A generator seeded from ``key`` (e.g. a caption id): the same corruption on every build."""
    return np.random.default_rng(int.from_bytes(hashlib.sha256(f"{salt}:{key}".encode()).digest()[:8], "big"))


def speech_power(audio: np.ndarray, frame: int = 400) -> float:
    """Mean power of the frames within 40 dB of the loudest one (silence does not dilute the SNR)."""
    frames = np.pad(audio, (0, -len(audio) % frame)).reshape(-1, frame).astype(np.float64)
    power = np.mean(frames ** 2, axis=1)
    active = power[power >= power.max(initial=0.0) * 1e-4]
    return float(active.mean()) if active.size and active.mean() > 0 else 1e-10


def coloured_noise(n: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-power white or pink (1/f) noise, shape ``n``."""
    white = rng.standard_normal(n)
    if kind == "pink":
        spectrum = np.fft.rfft(white)
        spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1.0))
        white = np.fft.irfft(spectrum, n)
    return (white / max(float(np.sqrt(np.mean(white ** 2))), 1e-12)).astype(np.float32)


def add_noise(audio: np.ndarray, snr_db: float, rng: np.random.Generator, kind: str = "white",
              babble: list[np.ndarray] | None = None) -> np.ndarray:
    """``audio`` plus noise at ``snr_db`` (speech power over its active frames). Shape kept."""
    if kind == "babble":
        if not babble:
            raise VGSError("babble noise needs other recordings to mix (none given)")
        noise = np.zeros(len(audio), np.float32)
        for other in babble:
            start = int(rng.integers(0, max(1, len(other) - len(audio) + 1))) if len(other) > len(audio) else 0
            piece = np.resize(other[start:], len(audio)) if len(other) else noise
            noise += piece / np.sqrt(speech_power(piece) + 1e-12)
    else:
        noise = coloured_noise(len(audio), kind, rng)
    noise *= np.sqrt(speech_power(audio) / (speech_power(noise) * 10 ** (snr_db / 10)))
    return (audio + noise).astype(np.float32)


def room_impulse(rt60: float, rng: np.random.Generator, rate: int = SAMPLE_RATE) -> np.ndarray:
    """A synthetic room impulse response: a direct path, then exponentially decaying noise (RT60 s)."""
    n = int(rate * min(rt60, 1.5))
    t = np.arange(n) / rate
    tail = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60)  # -60 dB at rt60
    onset = int(rate * rng.uniform(0.002, 0.01))  # first reflections after a few ms
    tail[:onset] = 0.0
    rir = np.concatenate([[1.0], tail * rng.uniform(0.2, 0.6) / max(float(np.sqrt(np.sum(tail ** 2))), 1e-12)])
    return rir.astype(np.float32)


def reverberate(audio: np.ndarray, rt60: float, rng: np.random.Generator) -> np.ndarray:
    """Convolve with :func:`room_impulse`; the tail is cut to the input length. Shape kept."""
    wet = scipy.signal.fftconvolve(audio, room_impulse(rt60, rng))[: len(audio)]
    return (wet * (np.abs(audio).max() / max(float(np.abs(wet).max()), 1e-9))).astype(np.float32)


def change_speed(audio: np.ndarray, factor: float, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Play ``factor`` times faster (tempo and pitch together, like a tape). Shape ``N / factor``."""
    return soxr.resample(audio, rate * factor, rate, quality="HQ").astype(np.float32)


def telephone(audio: np.ndarray, rate: int = SAMPLE_RATE) -> np.ndarray:
    """A 300-3400 Hz band through an 8 kHz channel. Shape kept."""
    sos = scipy.signal.butter(6, [300, 3400], btype="bandpass", fs=rate, output="sos")
    narrow = soxr.resample(scipy.signal.sosfiltfilt(sos, audio), rate, 8000)
    return np.resize(soxr.resample(narrow, 8000, rate), len(audio)).astype(np.float32)


def corrupt(audio: np.ndarray, effects: list[Corruption], rng: np.random.Generator,
            babble: list[np.ndarray] | None = None) -> np.ndarray:
    """Apply ``effects`` in order to 16 kHz mono ``audio`` (shape ``N``); peak-limited to [-1, 1]."""
    out = np.asarray(audio, dtype=np.float32)
    for effect in effects:
        if effect.kind == "noise":
            out = add_noise(out, effect.value, rng, effect.noise, babble)
        elif effect.kind == "reverb":
            out = reverberate(out, effect.value, rng)
        elif effect.kind == "speed":
            out = change_speed(out, effect.value)
        elif effect.kind == "telephone":
            out = telephone(out)
        elif effect.kind == "gain":
            out = out * np.float32(10 ** (effect.value / 20))
    peak = float(np.abs(out).max(initial=0.0))
    return (out / peak * 0.99 if peak > 0.99 else out).astype(np.float32)


def draw_corruptions(config: "AugmentConfig", rng: np.random.Generator) -> list[Corruption]:
    """Waveform effects drawn for one recording from the training augmentation's probabilities and ranges.

    The waveform counterpart of :class:`VoiceAugment` for front ends whose features are cached once and
    cannot be augmented per step (Whisper): a speed change (``config.stretch``, with ``stretch_prob``),
    reverberation (``reverb_prob``, ``rt60``), a telephone band (``telephone_prob``) and noise
    (``noise_prob``, ``snr_db``; babble for ``babble_share`` of the noisy ones, else white or pink),
    in that order.  May return no effect (a clean copy).
    """
    effects = []
    if rng.random() < config.stretch_prob:
        effects.append(Corruption("speed", round(float(rng.uniform(*config.stretch)), 3)))
    if rng.random() < config.reverb_prob:
        effects.append(Corruption("reverb", round(float(rng.uniform(*config.rt60)), 2)))
    if rng.random() < config.telephone_prob:
        effects.append(Corruption("telephone"))
    if rng.random() < config.noise_prob:
        kind = "babble" if rng.random() < config.babble_share else str(rng.choice(["white", "pink"]))
        effects.append(Corruption("noise", round(float(rng.uniform(*config.snr_db)), 1), kind))
    return effects


# ----------------------------------------------------------------------------- feature-domain augmentation


@dataclass
class AugmentConfig:
    """Voice augmentation of training features (each effect drawn per caption with its probability)."""

    enabled: bool = True
    stretch_prob: float = 0.6
    stretch: tuple[float, float] = (0.88, 1.12)  # time factor (1.1 = 10% faster)
    warp_prob: float = 0.6
    warp: tuple[float, float] = (0.88, 1.12)  # frequency factor: vocal tract length and pitch
    eq_prob: float = 0.4
    eq_db: float = 6.0  # amplitude of a smooth random microphone response
    telephone_prob: float = 0.05
    reverb_prob: float = 0.25
    rt60: tuple[float, float] = (0.2, 0.9)
    noise_prob: float = 0.4
    snr_db: tuple[float, float] = (5.0, 30.0)
    babble_share: float = 0.34  # of the noisy captions; the rest get white or pink noise
    clean_epochs: int = 0  # epochs trained on clean features first (a curriculum: clean speech learns faster)

    def validate(self) -> None:
        for name in ("stretch_prob", "warp_prob", "eq_prob", "telephone_prob", "reverb_prob", "noise_prob", "babble_share"):
            value = getattr(self, name)
            if not (np.isfinite(value) and 0 <= value <= 1):
                raise VGSError(f"augment.{name}: expected a probability in 0..1, got {value!r}")
        for name, low, high in (("stretch", 0.5, 2.0), ("warp", 0.5, 2.0), ("rt60", 0.05, 3.0), ("snr_db", -20.0, 60.0)):
            a, b = getattr(self, name)
            if not (np.isfinite(a) and np.isfinite(b) and low <= a <= b <= high):
                raise VGSError(f"augment.{name}: expected two numbers {low:g} <= a <= b <= {high:g}, got {[a, b]!r}")
        if not (np.isfinite(self.eq_db) and 0 <= self.eq_db <= 30):
            raise VGSError(f"augment.eq_db: expected 0..30, got {self.eq_db!r}")
        if not (isinstance(self.clean_epochs, int) and 0 <= self.clean_epochs <= 1_000_000):
            raise VGSError(f"augment.clean_epochs: expected a whole number 0..1000000, got {self.clean_epochs!r}")


@lru_cache(maxsize=8)
def _band_centers(n_mels: int, fmin: float, sample_rate: int) -> np.ndarray:
    """Centre frequency (Hz) of each mel band. Shape ``F``."""
    return librosa.mel_frequencies(n_mels + 2, fmin=fmin, fmax=sample_rate / 2)[1:-1]


class VoiceAugment:
    """Training-time voice augmentation of ``T x F`` log-mel features (dB, maximum 0, floor -80).

    ``babble`` draws another caption's features (``rng -> T' x F``) to mix in as babble noise.
    """

    def __init__(self, config: AugmentConfig, n_mels: int = 40, fmin: float = 20.0, sample_rate: int = 16000,
                 frame_s: float = 0.01, preemphasis: float = 0.97):
        config.validate()
        self.config = config
        self.centers = _band_centers(n_mels, fmin, sample_rate)
        self.frame_s = frame_s
        # The front end's pre-emphasis y[n] = x[n] - p x[n-1] tilts a waveform's spectrum by |1 - p e^-jw|^2
        # (about +32 dB from 20 Hz to 8 kHz at p = 0.97): white noise in the waveform is far from flat here.
        self.emphasis = 1 + preemphasis ** 2 - 2 * preemphasis * np.cos(2 * np.pi * self.centers / sample_rate)
        self.widths = np.gradient(self.centers)  # Hz each band stands for (slaney bands hold mean power density)
        self.white = self.emphasis  # flat waveform spectrum, as the features see it
        self.pink = self.emphasis / np.maximum(self.centers, 50.0)

    def __call__(self, features: np.ndarray, rng: np.random.Generator, babble=None) -> np.ndarray:
        c = self.config
        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != len(self.centers) or len(x) < 2:
            return x
        if rng.random() < c.warp_prob:
            x = self.warp(x, rng.uniform(*c.warp))
        if rng.random() < c.telephone_prob:
            x = self.band_limit(x)
        elif rng.random() < c.eq_prob:
            x = self.equalize(x, rng)
        power = 10.0 ** (x.astype(np.float64) / 10.0)
        if rng.random() < c.reverb_prob:
            power = self.reverberate(power, rng.uniform(*c.rt60), rng)
        if rng.random() < c.noise_prob:
            power = self.add_noise(power, rng.uniform(*c.snr_db), rng, babble)
        x = 10.0 * np.log10(np.maximum(power, 1e-12))
        if rng.random() < c.stretch_prob:
            x = self.stretch(x, rng.uniform(*c.stretch))
        x = x - x.max()
        return np.maximum(x, _FLOOR_DB).astype(np.float32)

    def warp(self, x: np.ndarray, factor: float) -> np.ndarray:
        """Scale every frequency by ``factor`` (formants and pitch up when > 1). ``T x F`` -> ``T x F``."""
        source = np.interp(self.centers / factor, self.centers, np.arange(len(self.centers)))
        low = np.clip(np.floor(source).astype(int), 0, len(self.centers) - 1)
        high = np.minimum(low + 1, len(self.centers) - 1)
        w = (source - low).astype(np.float32)
        return x[:, low] * (1 - w) + x[:, high] * w

    def equalize(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A smooth random microphone response of about ±``eq_db`` across the bands."""
        position = np.log(self.centers / self.centers[0]) / np.log(self.centers[-1] / self.centers[0])
        curve = sum(rng.uniform(-1, 1) * np.cos(np.pi * k * position + rng.uniform(0, np.pi)) for k in (1, 2, 3))
        return x + (self.config.eq_db / 2 * curve).astype(np.float32)

    def band_limit(self, x: np.ndarray) -> np.ndarray:
        """A telephone channel: bands below 300 Hz and above 3.4 kHz fall 40 dB."""
        outside = (self.centers < 300) | (self.centers > 3400)
        return x - 40.0 * outside.astype(np.float32)

    def reverberate(self, power: np.ndarray, rt60: float, rng: np.random.Generator) -> np.ndarray:
        """Add an exponentially decaying energy tail (``rt60`` s), at a random direct-to-reverb ratio."""
        decay = 10.0 ** (-6.0 * self.frame_s / rt60)  # per-frame energy factor: -60 dB after rt60
        ratio = 10.0 ** (rng.uniform(-3.0, 6.0) / 10)  # direct / reverberant energy
        tail = scipy.signal.lfilter([0.0, 1.0], [1.0, -decay], power, axis=0)  # sum_k>=1 decay^(k-1) P[t-k]
        return power + tail * (1 - decay) / ratio

    def waveform_power(self, power: np.ndarray) -> np.ndarray:
        """Per-frame power of the waveform before pre-emphasis, up to a constant. ``T x F`` -> ``T``."""
        return (power / self.emphasis) @ self.widths

    def add_noise(self, power: np.ndarray, snr_db: float, rng: np.random.Generator, babble=None) -> np.ndarray:
        """Mix noise at ``snr_db`` in the power domain (white, pink, or another caption as babble); the SNR
        is the waveform's (pre-emphasis undone), as :func:`add_noise` measures it on audio."""
        frames = self.waveform_power(power)
        active = frames[frames >= frames.max() * 1e-4]
        speech = float(active.mean()) if active.size else float(frames.mean())
        if babble is not None and rng.random() < self.config.babble_share:
            other = 10.0 ** (np.asarray(babble(rng), dtype=np.float64) / 10.0)
            noise = np.resize(other, power.shape) if len(other) else np.ones_like(power)
        else:
            shape = self.white if rng.random() < 0.5 else self.pink
            noise = shape[None, :] * rng.gamma(4.0, 0.25, size=power.shape)  # frame-to-frame fluctuation
        noise_frames = self.waveform_power(noise)
        noise *= speech / max(float(noise_frames.mean()), 1e-12) / 10 ** (snr_db / 10)
        return power + noise

    def stretch(self, x: np.ndarray, factor: float) -> np.ndarray:
        """Play ``factor`` times faster: ``T x F`` -> ``round(T / factor) x F`` by linear interpolation."""
        frames = max(2, int(round(len(x) / factor)))
        position = np.linspace(0, len(x) - 1, frames)
        low = np.floor(position).astype(int)
        high = np.minimum(low + 1, len(x) - 1)
        w = (position - low)[:, None].astype(np.float32)
        return x[low] * (1 - w) + x[high] * w
