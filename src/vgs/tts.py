"""Text-to-speech for spoken captions: 16 kHz mono audio plus word timings.

espeak-ng runs in-process (the ``espeakng-loader`` wheel, driven by ctypes) and reports
when every word starts.  flite, festival, pico2wave, RHVoice and mbrola join when they are
installed; they run as subprocesses and give no word timings (``words=None``).

A (text, voice) pair always gives the same samples, whatever the process spoke before
(see :mod:`vgs.espeak` for the state espeak-ng carries over and how it is reset).  Audio
has 50 ms of silence at each end; every word of the text gets a start and an end.
"""

from __future__ import annotations

import bisect
import hashlib
import multiprocessing
import os
import pickle
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import soundfile as sf

from .audio import SAMPLE_RATE, resample
from .errors import VGSError
from .espeak import EspeakEngine

ENGINES = ("espeak", "flite", "festival", "pico", "rhvoice", "mbrola")
# engine -> (honours rate, honours pitch); others accept only the defaults 175 / 50
_CONTROLS = {"espeak": (True, True), "flite": (True, True), "festival": (True, False),
             "pico": (False, False), "rhvoice": (True, True), "mbrola": (True, True)}
_BINARIES = {"flite": "flite", "festival": "text2wave", "pico": "pico2wave", "rhvoice": "RHVoice-test",
             "mbrola": "mbrola"}
_EXTERNAL_VOICES = {"flite": ("slt", "awb", "rms", "kal16"), "pico": ("en-US", "en-GB"),
                    "rhvoice": ("alan", "bdl", "clb", "slt", "evgeniy-eng", "lyubov"),
                    "mbrola": ("us1", "us2", "us3", "en1")}
DEFAULT_ESPEAK_VOICES = (
    "en-us+m1", "en-us+m3", "en-us+f2", "en-us+f4", "en+m2", "en+m4", "en+f1", "en+f3",
    "en-gb-x-rp+m5", "en-gb-x-rp+f4", "en-gb-scotland+m6", "en-gb-scotland+f5", "en-029+m7",
    "en-029+f2", "en-gb-x-gbclan+m3", "en-gb-x-gbcwmd+f1", "en-us-nyc+m2", "en-us-nyc+f3")
_MARGIN_S = 0.05        # silence kept around the speech
_FRAME_S = 0.005        # energy frame for trimming and word ends
_SILENCE_DB = -45.0     # below the peak: silence
_EDGE_PUNCT = re.compile(r"^[^\w']+|[^\w']+$")  # stripped from tokens: "dog," -> "dog"
_MBROLA_DIRS = ("/usr/share/mbrola", "/usr/local/share/mbrola")  # databases: <dir>/us1/us1
_FESTIVAL_DIRS = ("/usr/share/festival/voices/english", "/usr/share/festival/voices/us")  # English voice folders
_RHVOICE_DIRS = ("/usr/share/RHVoice/voices", "/usr/local/share/RHVoice/voices")
_ENGINES: dict[str, object] = {}  # per-process cache: the espeak engine, external engines' voice lists


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: engine, engine voice name, rate (words/min) and pitch (0-99)."""

    engine: str
    name: str
    rate: int = 175
    pitch: int = 50

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise VGSError(f"unknown TTS engine {self.engine!r}; expected one of {', '.join(ENGINES)}")
        if not self.name or ":" in self.name or self.name != self.name.strip():
            raise VGSError(f"bad voice name {self.name!r}: expected a non-empty name without ':'")
        if not 80 <= self.rate <= 450:
            raise VGSError(f"voice rate {self.rate} is out of range; expected 80-450 words per minute")
        if not 0 <= self.pitch <= 99:
            raise VGSError(f"voice pitch {self.pitch} is out of range; expected 0-99")

    @property
    def id(self) -> str:
        """``engine:name:rRATE:pPITCH``, e.g. ``espeak:en-us+f2:r175:p50``."""
        return f"{self.engine}:{self.name}:r{self.rate}:p{self.pitch}"

    @classmethod
    def from_id(cls, voice_id: str) -> Voice:
        """Parse :attr:`id` (rate and pitch parts may be left out)."""
        match = re.fullmatch(r"([a-z]+):([^:\s]+)(?::r(\d+))?(?::p(\d+))?", str(voice_id).strip())
        if match is None:
            raise VGSError(f"malformed voice id {voice_id!r}; expected ENGINE:NAME:rRATE:pPITCH, "
                           "e.g. espeak:en-us+f2:r175:p50")
        engine, name, rate, pitch = match.groups()
        return cls(engine, name, int(rate or 175), int(pitch or 50))


@dataclass
class WordTiming:
    """One word of the text and when it is spoken, in seconds from the start of the audio."""

    word: str
    start: float
    end: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Speech:
    """``audio``: float32, shape ``N``, mono at ``sample_rate``; ``words`` is None when unknown."""

    audio: np.ndarray
    words: list[WordTiming] | None
    voice: Voice
    sample_rate: int = SAMPLE_RATE

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate


@dataclass
class VoicePoolConfig:
    """Which voices captions are spread over: engines ("auto" = all installed), voices, rates, pitches."""

    engines: str = "auto"
    espeak_voices: tuple[str, ...] = DEFAULT_ESPEAK_VOICES
    external_voices: tuple[str, ...] = ()  # "engine:name" entries; an engine named here uses only these
    rates: tuple[int, ...] = (150, 170, 190)
    pitches: tuple[int, ...] = (35, 50, 65)


# ---------------------------------------------------------------- word timings and trimming

def _align_words(text: str, events: list[tuple[int, int]], phonemes: list[int], total: int) -> list[tuple[str, int]]:
    """(word, start sample) for every word of ``text``, from espeak's word and phoneme events.

    Words are whitespace tokens without edge punctuation; punctuation-only tokens count only when
    spoken.  espeak reports some runs of words as one ("on the", "of a"): those are split at the
    phonemes nearest each word's share of the letters.  ``total``: samples in the audio.
    """
    tokens = [match.span() for match in re.finditer(r"\S+", text)]
    first: dict[int, int] = {}
    for position, sample in events:
        i = bisect.bisect_right(tokens, (position, len(text) + 1)) - 1
        if i >= 0 and position < tokens[i][1]:
            first[i] = min(first.get(i, sample), sample)
    units: list[tuple[int, list[str]]] = []  # (start sample, words spoken as one)
    pending: list[str] = []
    for i, (start, end) in enumerate(tokens):
        word = _EDGE_PUNCT.sub("", text[start:end]) or (text[start:end] if i in first else "")
        if i in first and (not units or first[i] > units[-1][0]):
            units.append((first[i], pending + [word]))
            pending = []
        elif word:
            (units[-1][1] if units else pending).append(word)
    aligned = []
    for j, (start, words) in enumerate(units):
        stop = units[j + 1][0] if j + 1 < len(units) else total
        starts = _split_unit(start, stop, words, [p for p in phonemes if start <= p < stop])
        aligned += zip(words, starts)
    return aligned


def _split_unit(start: int, stop: int, words: list[str], phonemes: list[int]) -> list[int]:
    """Start samples for ``words`` spoken as one unit in [start, stop): at phoneme starts when there
    are enough phonemes, else by the letters' share of the time."""
    letters = np.cumsum([len(word) for word in words])
    shares = letters[:-1] / letters[-1]
    if len(phonemes) < len(words):
        return [start] + [start + round((stop - start) * share) for share in shares]
    bounds, previous, n = [start], 0, len(phonemes)
    for i, share in enumerate(shares, 1):
        previous = min(max(round(n * share), previous + 1), n - len(words) + i)
        bounds.append(phonemes[previous])
    return bounds


def _active_frames(audio: np.ndarray, hop: int) -> np.ndarray:
    """Per ``hop``-sample frame: louder than ``_SILENCE_DB`` below the peak. Shape ``ceil(N/hop)``."""
    frames = np.pad(audio, (0, -len(audio) % hop)).reshape(-1, hop)
    rms = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))
    return rms > max(float(rms.max(initial=0.0)) * 10 ** (_SILENCE_DB / 20), 1e-5)


def _finish(audio: np.ndarray, units: list[tuple[str, int]] | None, rate: int,
            what: str) -> tuple[np.ndarray, list | None]:
    """Cut or pad the silence around the speech to 50 ms; word starts (samples at ``rate``) -> WordTimings.

    ``audio``: float32 at 16 kHz, shape ``N``.  A word ends where its sound does, before any pause.
    """
    hop, margin = int(_FRAME_S * SAMPLE_RATE), int(_MARGIN_S * SAMPLE_RATE)
    active = _active_frames(audio, hop)
    if not active.any():
        raise VGSError(f"{what} produced only silence; expected a caption with words")
    onset = int(np.argmax(active)) * hop
    offset = min((len(active) - int(np.argmax(active[::-1]))) * hop, len(audio))
    shift = margin - onset
    trimmed = np.concatenate([np.zeros(max(shift, 0), np.float32), audio[max(-shift, 0):offset],
                              np.zeros(margin, np.float32)])
    if units is None:
        return trimmed, None
    starts = [min(max(round(s * SAMPLE_RATE / rate), onset), offset) for _, s in units] + [offset]
    words = []
    for i, (word, _) in enumerate(units):
        begin, stop = starts[i] // hop, starts[i + 1] // hop  # frames wholly before the next word
        voiced = np.flatnonzero(active[begin:stop])
        end = min((begin + int(voiced[-1]) + 1) * hop, starts[i + 1]) if voiced.size else starts[i + 1]
        end = end if end > starts[i] else starts[i + 1]
        words.append(WordTiming(word, (starts[i] + shift) / SAMPLE_RATE, (end + shift) / SAMPLE_RATE))
    return trimmed, words


# ---------------------------------------------------------------- external engines (subprocess)

def _command(voice: Voice, text_file: str, wav: str, text: str) -> list[str]:
    """The command line that writes ``wav``; rate and pitch are relative to espeak's 175 and 50."""
    stretch, shift = 175 / voice.rate, 2 ** ((voice.pitch - 50) / 50)
    return {
        "flite": ["flite", "-voice", voice.name, "--setf", f"duration_stretch={stretch:.4f}",
                  "--setf", f"f0_shift={shift:.4f}", "-f", text_file, "-o", wav],
        "festival": ["text2wave", "-eval", f"(voice_{voice.name})",
                     "-eval", f"(Parameter.set 'Duration_Stretch {stretch:.4f})", text_file, "-o", wav],
        "pico": ["pico2wave", "-l", voice.name, "-w", wav, text],
        "rhvoice": ["RHVoice-test", "-p", voice.name, "-r", str(round(100 / stretch)),
                    "-t", str(round(100 * shift)), "-i", text_file, "-o", wav],
        "mbrola": ["espeak-ng", "-v", f"mb-{voice.name}", "-s", str(voice.rate), "-p", str(voice.pitch),
                   "-f", text_file, "-w", wav],
    }[voice.engine]


def _external(text: str, voice: Voice) -> np.ndarray:
    """Run an installed engine into a temporary WAV; float32 at 16 kHz, shape ``N``."""
    if not _external_voices(voice.engine):
        raise VGSError(f"TTS engine {voice.engine!r} is not installed ({_BINARIES[voice.engine]} not found, "
                       "or no English voice for it)")
    if voice.name not in _external_voices(voice.engine):
        known = ", ".join(_external_voices(voice.engine))
        raise VGSError(f"unknown {voice.engine} voice {voice.name!r}; installed: {known}")
    with tempfile.TemporaryDirectory(prefix="vgs-tts-") as tmp:
        text_file, wav = os.path.join(tmp, "text.txt"), os.path.join(tmp, "speech.wav")
        Path(text_file).write_text(text + "\n", encoding="utf-8")
        try:
            done = subprocess.run(_command(voice, text_file, wav, text), capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise VGSError(f"{voice.engine} failed on {text[:60]!r}: {exc}") from exc
        if done.returncode != 0 or not os.path.isfile(wav) or os.path.getsize(wav) <= 44:
            detail = (done.stderr.strip() or done.stdout.strip() or f"exit code {done.returncode}").splitlines()
            raise VGSError(f"{voice.engine} voice {voice.name!r} wrote no audio: {detail[-1][:200]}")
        data, rate = sf.read(wav, dtype="float32", always_2d=True)
    return resample(np.ascontiguousarray(data.mean(axis=1)), rate)


def _external_voices(engine: str) -> tuple[str, ...]:
    """Installed English voices of an external engine; empty when it is absent (cached per process)."""
    if f"voices:{engine}" not in _ENGINES:
        found: Iterable[str] = ()
        if shutil.which(_BINARIES[engine]):
            if engine == "flite":
                listed = subprocess.run(["flite", "-lv"], capture_output=True, text=True, timeout=30).stdout.split()
                found = [v for v in _EXTERNAL_VOICES[engine] if v in listed]
            elif engine == "festival":
                found = sorted(p.name for folder in _FESTIVAL_DIRS for p in Path(folder).glob("*") if p.is_dir())
            elif engine == "mbrola":
                found = [v for v in _EXTERNAL_VOICES[engine] if shutil.which("espeak-ng") and any(
                    Path(d, v, v).is_file() or Path(d, v).is_file() for d in _MBROLA_DIRS)]
            elif engine == "rhvoice":
                found = [v for v in _EXTERNAL_VOICES[engine] if any(Path(d, v).is_dir() for d in _RHVOICE_DIRS)]
            else:
                found = _EXTERNAL_VOICES[engine]
        _ENGINES[f"voices:{engine}"] = tuple(found)
    return _ENGINES[f"voices:{engine}"]


# ---------------------------------------------------------------- public API

def _espeak() -> EspeakEngine:
    pid_engine = _ENGINES.get("espeak")
    if pid_engine is None or pid_engine[0] != os.getpid():  # a forked child builds its own
        pid_engine = _ENGINES["espeak"] = (os.getpid(), EspeakEngine())
    return pid_engine[1]


def available_engines() -> list[str]:
    """Engines usable here, in :data:`ENGINES` order (espeak whenever ``espeakng-loader`` imports)."""
    try:
        import espeakng_loader  # noqa: F401, PLC0415
        found = ["espeak"]
    except ImportError:
        found = []
    return found + [engine for engine in ENGINES[1:] if _external_voices(engine)]


def _engines(config: VoicePoolConfig) -> list[str]:
    installed = available_engines()
    if config.engines.strip() == "auto":
        return installed
    wanted = list(dict.fromkeys(e.strip() for e in config.engines.split(",") if e.strip()))
    for engine in wanted:
        if engine not in ENGINES:
            raise VGSError(f"unknown TTS engine {engine!r} in engines={config.engines!r}; "
                           f"expected 'auto' or a comma list of {', '.join(ENGINES)}")
        if engine not in installed:
            raise VGSError(f"TTS engine {engine!r} is not installed here (installed: {', '.join(installed)})")
    return wanted


def _chosen_external(engine: str, chosen: tuple[str, ...]) -> tuple[str, ...]:
    """An external engine's installed voices, or those of ``chosen`` ("engine:name") that name it."""
    named = [entry.split(":", 1)[1] for entry in chosen if entry.split(":", 1)[0] == engine]
    for name in named:
        if name not in _external_voices(engine):
            raise VGSError(f"unknown {engine} voice {name!r}; installed: {', '.join(_external_voices(engine)) or 'none'}")
    return tuple(named) or _external_voices(engine)


def voice_pool(config: VoicePoolConfig | None = None) -> list[Voice]:
    """Every (engine, voice, rate, pitch) combination of ``config``, in a fixed order."""
    config = config or VoicePoolConfig()
    pool = []
    for engine in _engines(config):
        names = config.espeak_voices if engine == "espeak" else _chosen_external(engine, config.external_voices)
        for name in names if engine == "espeak" else ():
            _espeak().resolve(name)  # fail early on a voice espeak cannot load
        rates = config.rates if _CONTROLS[engine][0] else (175,)
        pitches = config.pitches if _CONTROLS[engine][1] else (50,)
        pool += [Voice(engine, n, r, p) for n in names for r in rates for p in pitches]
    return list(dict.fromkeys(pool))


def pick_voice(pool: list[Voice], key: str, seed: int = 0, copy: int = 0) -> Voice:
    """The voice for rendering ``copy`` of ``key`` (e.g. a caption id), stable across runs.

    Engines are balanced: the engine is drawn first, uniformly from sha256 of ``"{seed}:{key}"``
    and offset by ``copy`` (so the copies of one caption go to different engines in turn), then a
    voice of that engine from sha256 of ``"{seed}:{key}"`` (``"{seed}:{key}@{copy}"`` for copies
    after the first).  With a single engine this is the voice ``pool[h % len(pool)]`` as before.
    """
    if not pool:
        raise VGSError("the voice pool is empty; check VoicePoolConfig.engines and its voices")
    voice_key = f"{seed}:{key}" + (f"@{copy}" if copy else "")
    voice_hash = int.from_bytes(hashlib.sha256(voice_key.encode()).digest()[:8], "big")
    engines = list(dict.fromkeys(voice.engine for voice in pool))
    if len(engines) == 1:
        return pool[voice_hash % len(pool)]
    engine_hash = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[8:16], "big")
    engine = engines[(engine_hash + copy) % len(engines)]
    voices = [voice for voice in pool if voice.engine == engine]
    return voices[voice_hash % len(voices)]


def list_voices(config: VoicePoolConfig | None = None) -> list[dict]:
    """Rows for a voices table: engine, name, kind (voice/variant), language, description, gender, and
    ``pool``: how many voices of ``config``'s pool use the row (their total is ``len(voice_pool(config))``)."""
    pool, rows = voice_pool(config), []
    for engine in available_engines():
        if engine != "espeak":
            rows += [{"engine": engine, "name": name, "kind": "voice", "language": "en", "description": "",
                      "gender": ""} for name in _external_voices(engine)]
            continue
        for name, v in sorted(_espeak().voices.items()):
            if v["languages"][0].startswith("en"):
                rows.append({"engine": engine, "name": name, "kind": "voice", "language": v["languages"][0],
                             "description": v["description"], "gender": v["gender"]})
        for v in sorted(_espeak().variants.values(), key=lambda v: v["identifier"]):
            rows.append({"engine": engine, "name": "+" + v["identifier"][3:], "kind": "variant", "language": "",
                         "description": v["description"], "gender": v["gender"]})
    for row in rows:
        parts = [v.name.lower().partition("+") for v in pool if v.engine == row["engine"]]
        row["pool"] = sum((row["name"].lower() == "+" + variant) if row["kind"] == "variant"
                          else (row["name"].lower() == base) for base, _, variant in parts)
    return rows


def synthesize(text: str, voice: Voice) -> Speech:
    """Speak ``text``: 16 kHz mono float32 with 50 ms of silence at each end, and word times (espeak)."""
    if not isinstance(text, str) or not text.strip():
        raise VGSError(f"cannot synthesize empty text {text!r}; expected a caption with words")
    if not isinstance(voice, Voice):
        raise VGSError(f"expected a Voice, got {type(voice).__name__}; e.g. Voice.from_id('espeak:en-us')")
    for value, default, allowed, what in ((voice.rate, 175, _CONTROLS[voice.engine][0], "rate"),
                                          (voice.pitch, 50, _CONTROLS[voice.engine][1], "pitch")):
        if value != default and not allowed:
            raise VGSError(f"TTS engine {voice.engine!r} cannot change the {what}; use {what} {default}")
    text, what = " ".join(text.replace("\0", " ").split()), f"voice {voice.id} on {text[:60]!r}"
    if voice.engine == "espeak":
        engine = _espeak()
        samples, events, phonemes = engine.synthesize(text, voice.name, voice.rate, voice.pitch)
        audio = resample(samples.astype(np.float32) / 32768.0, engine.rate)
        audio, words = _finish(audio, _align_words(text, events, phonemes, len(samples)), engine.rate, what)
    else:
        audio, words = _finish(_external(text, voice), None, SAMPLE_RATE, what)
    return Speech(np.ascontiguousarray(audio, dtype=np.float32), words, voice)


def _attempt(job: tuple[str, str, Voice]) -> tuple[str, Speech | Exception]:
    """Run one job; a failure comes back as a picklable exception instead of being raised."""
    try:
        key, text, voice = job
    except (TypeError, ValueError):
        return str(job)[:80], VGSError(f"malformed TTS job {job!r}; expected (key, text, Voice)")
    try:
        return key, synthesize(text, voice)
    except Exception as exc:  # noqa: BLE001 - reported per caption
        try:
            return key, pickle.loads(pickle.dumps(exc))
        except Exception:  # noqa: BLE001 - e.g. an exception class with extra __init__ arguments
            return key, VGSError(f"{type(exc).__name__}: {exc}")


def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _festival_batch(jobs: list[tuple[str, str, Voice]]) -> dict[str, Speech]:
    """Speak many festival jobs in one festival process (its start-up costs more than a caption).

    Returns the jobs that came out; any missing one is redone alone by the caller, so one bad
    caption cannot fail the others.
    """
    done: dict[str, Speech] = {}
    if not shutil.which("festival"):
        return done
    with tempfile.TemporaryDirectory(prefix="vgs-festival-") as tmp:
        lines, wavs = [], []
        for i, (key, text, voice) in enumerate(jobs):
            wav = os.path.join(tmp, f"{i}.wav")
            text = " ".join(str(text).replace("\0", " ").split())
            lines += [f"(voice_{voice.name})", f"(Parameter.set 'Duration_Stretch {175 / voice.rate:.4f})",
                      f"(utt.save.wave (utt.synth (Utterance Text {_scheme_string(text)})) {_scheme_string(wav)} 'riff)"]
            wavs.append(wav)
        script = os.path.join(tmp, "batch.scm")
        Path(script).write_text("\n".join(lines) + "\n", encoding="utf-8")
        try:
            subprocess.run(["festival", "-b", script], capture_output=True, text=True, timeout=60 + 10 * len(jobs))
        except (OSError, subprocess.TimeoutExpired):
            return done
        for (key, text, voice), wav in zip(jobs, wavs):
            if not os.path.isfile(wav) or os.path.getsize(wav) <= 44:
                continue
            try:
                data, rate = sf.read(wav, dtype="float32", always_2d=True)
                audio, _ = _finish(resample(np.ascontiguousarray(data.mean(axis=1)), rate), None, SAMPLE_RATE,
                                   f"voice {voice.id} on {text[:60]!r}")
            except (VGSError, RuntimeError, sf.LibsndfileError):
                continue
            done[key] = Speech(np.ascontiguousarray(audio, dtype=np.float32), None, voice)
    return done


def _attempt_chunk(jobs: list[tuple[str, str, Voice]]) -> list[tuple[str, Speech | Exception]]:
    """Run a chunk of jobs in order; festival's jobs share one festival process."""
    batched = [job for job in jobs if isinstance(job, tuple) and len(job) == 3 and isinstance(job[2], Voice)
               and job[2].engine == "festival" and job[2].pitch == 50 and job[2].name in _external_voices("festival")]
    spoken = _festival_batch(batched) if len(batched) > 1 else {}
    return [(job[0], spoken[job[0]]) if isinstance(job, tuple) and job and job[0] in spoken else _attempt(job)
            for job in jobs]


def _start_worker() -> None:
    if "espeak" in available_engines():
        _espeak()


def synthesize_many(jobs: Iterable[tuple[str, str, Voice]], workers: int = 2, chunksize: int = 16,
                    start_method: str = "spawn") -> Iterator[tuple[str, Speech | Exception]]:
    """Speak (key, text, voice) jobs in ``workers`` processes, each with its own espeak engine.

    Jobs go out in chunks of ``chunksize`` (festival speaks a chunk's captions in one process).
    Yields (key, Speech or the exception that caption raised) in job order; ``workers=1`` runs here.
    """
    chunks = _chunks(jobs, max(1, chunksize))
    if workers <= 1:
        for chunk in chunks:
            yield from _attempt_chunk(chunk)
        return
    with multiprocessing.get_context(start_method).Pool(workers, initializer=_start_worker) as pool:
        for results in pool.imap(_attempt_chunk, chunks, 1):
            yield from results


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
