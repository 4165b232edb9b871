"""Where a query is answered: :class:`QueryService`, what ``vgs serve`` runs behind its routes.

One service holds one model and the index built with it, plus what answering many queries at
once needs: a bound on the queries encoded at once (the model is shared read-only), a bound on
uploads decoded at once, a cache of recently spoken texts and a byte-bounded cache of thumbnails.
Its methods are plain Python (no HTTP): bad input raises :class:`QueryError`, which carries the
HTTP status the web app (:mod:`vgs.app`) answers with.  Scores come from :meth:`vgs.api.Model.scores`
(through the index) and heatmaps from :func:`vgs.localize.caption_heatmaps`.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from .api import Model
from .audio import load_audio
from .errors import VGSError
from .images import MAX_PIXELS, load_thumbnail
from .localize import Heatmaps, Segment, caption_heatmaps
from .search import DEFAULT_CANDIDATES, Hit, SearchIndex
from .tts import Speech, Voice, available_engines, synthesize

log = logging.getLogger("vgs.app")

DEFAULT_VOICE = "espeak:en-us:r170:p50"
THUMBNAIL_SIZES = (32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)  # `size` snaps down to one
TTS_CACHE = 32  # synthesized queries kept (each at most max_audio_seconds of audio)


@dataclass(frozen=True)
class AppLimits:
    """What one request may ask for. Larger requests get 413, out-of-range values 422."""

    max_upload_bytes: int = 5 * 1024 * 1024  # an uploaded audio file
    max_audio_seconds: float = 20.0  # duration of uploaded audio, and of text once spoken
    max_text_chars: int = 300  # text to be spoken
    max_k: int = 50  # results per search
    workers: int = 2  # queries encoded and searched at once (the model is shared read-only)
    max_decodes: int = 2  # audio uploads decoded at once
    body_seconds: float = 30.0  # a request body must arrive within this
    max_image_pixels: int = MAX_PIXELS  # largest original decoded for /api/images (after JPEG draft reduction)
    image_cache_bytes: int = 64 * 2**20  # encoded thumbnails kept

    def validate(self) -> "AppLimits":
        if self.max_upload_bytes < 1024 or not 0 < self.max_audio_seconds <= 3600 or self.max_text_chars < 1 \
                or self.max_k < 1 or not 1 <= self.workers <= 64 or not 1 <= self.max_decodes <= 64 \
                or not 0 < self.body_seconds <= 3600 or self.max_image_pixels < 32 * 32 or self.image_cache_bytes < 0:
            raise VGSError(f"bad server limits {self}: expected max_upload_bytes >= 1024, 0 < max_audio_seconds <= 3600, "
                           "max_text_chars >= 1, max_k >= 1, workers and max_decodes 1-64, 0 < body_seconds <= 3600, "
                           "max_image_pixels >= 1024, image_cache_bytes >= 0")
        return self


class QueryError(VGSError):
    """A query that cannot be answered as asked; ``status`` is the HTTP status that says why (404, 413, 422)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class SearchHit:
    """One image found for a spoken query, with the whole query's ``H x W`` heatmap over it."""

    hit: Hit
    heatmap: torch.Tensor


@dataclass
class Localized:
    """One image and one spoken query: its score, the segments kept and their heatmaps."""

    score: float
    segments: list[Segment]
    heatmaps: Heatmaps


class QueryService:
    """Answers spoken (or typed, then spoken) queries against ``index`` with ``model`` (the one it was built with).

    Safe to call from many threads: at most ``limits.workers`` queries encode and search at once,
    ``limits.max_decodes`` uploads decode at once, and one original image is decoded at a time.
    """

    def __init__(self, model: Model, index: SearchIndex, limits: AppLimits = AppLimits()):
        self.model, self.index, self.limits = model, index, limits.validate()
        features = model.config.features
        self.sample_rate = features.sample_rate
        self.model_seconds = features.max_frames * features.input_frame_seconds  # what the model reads of a query
        self._workers = threading.BoundedSemaphore(limits.workers)
        self._decodes = threading.BoundedSemaphore(limits.max_decodes)
        self._tts_lock = threading.Lock()
        self._spoken: OrderedDict[tuple[str, str], tuple[Speech, bool]] = OrderedDict()  # the last few texts spoken
        self._image_lock = threading.Lock()
        self.thumbnails = ThumbnailCache(limits.image_cache_bytes)
        index.faiss_images()  # load (or build) the first-stage index now, not in a query
        self.grid = list(index.grid) if index.image_count else [0, 0]

    # ------------------------------------------------------------------ inputs

    def check_image(self, i: int) -> None:
        """404 unless ``i`` is the position of an image in the index."""
        if not 0 <= i < self.index.image_count:
            raise QueryError(404, f"no image {i} in the index (it holds images 0-{self.index.image_count - 1})"
                             if self.index.image_count else "the index holds no images")

    def decode(self, data: bytes) -> np.ndarray:
        """Uploaded WAV/FLAC/OGG bytes -> mono float samples at the model's rate (at most ``max_audio_seconds``)."""
        cap, rate = self.limits.max_audio_seconds, self.sample_rate
        try:
            with self._decodes:  # the header is checked and only cap seconds are decoded, in blocks
                signal = load_audio(data, rate, max_seconds=cap + 0.25, name="uploaded audio")
        except VGSError as exc:
            raise QueryError(422, f"{exc}. The page converts recordings to WAV; the API reads WAV, FLAC or OGG") from exc
        except Exception as exc:  # noqa: BLE001 - hostile bytes in a C decoder: still the client's problem
            log.warning("audio decoding failed: %r", exc)
            raise QueryError(422, "uploaded audio: unreadable audio; expected WAV, FLAC or OGG") from exc
        if len(signal) > cap * rate + rate // 100:
            raise QueryError(413, f"uploaded audio is longer than {cap:g} s (the limit); send a shorter query")
        return signal

    def speak(self, text: str, voice_id: str) -> tuple[Speech, bool]:
        """``(speech, whether it was cut to max_audio_seconds)`` of ``text`` in a voice; the last few are cached."""
        text = printable(text)
        if not text:
            raise QueryError(422, "text: nothing to say (the text is blank)")
        try:
            voice = Voice.from_id(voice_id)
            if voice.engine not in available_engines():
                raise VGSError(f"TTS engine {voice.engine!r} is not installed here; use e.g. {DEFAULT_VOICE}")
            with self._tts_lock:
                if (text, voice_id) in self._spoken:  # the page localizes what it just searched: same text, same voice
                    self._spoken.move_to_end((text, voice_id))
                    return self._spoken[(text, voice_id)]
                result = cut_speech(synthesize(text, voice), self.limits.max_audio_seconds)
                self._spoken[(text, voice_id)] = result
                if len(self._spoken) > TTS_CACHE:  # at most TTS_CACHE x max_audio_seconds of audio
                    self._spoken.popitem(last=False)
                return result
        except VGSError as exc:
            raise QueryError(422, f"voice/text: {exc}") from exc

    # ------------------------------------------------------------------ queries

    def search(self, signal: np.ndarray, k: int) -> list[SearchHit]:
        """The ``k`` best images for a spoken query (two-stage search), each with the query's heatmap over it."""
        with self._workers:  # a few queries at once: encoder, FAISS and re-ranking only read shared state
            frames = self.model.encode_audio([signal]).to("cpu", torch.float32)
            hits = self.index.search_audio(self.model, frames, k=k, candidates=max(DEFAULT_CANDIDATES, k))
            regions = self.index.regions_of([hit.index for hit in hits])  # n x D x H x W
            caption = frames.caption(0)
            return [SearchHit(hit, caption_heatmaps(r, caption, [], self.model.frame_seconds()).whole)
                    for hit, r in zip(hits, regions)]

    def localize(self, i: int, signal: np.ndarray, segments: list[Segment]) -> Localized:
        """Image ``i`` and a spoken query: the score and a heatmap per segment (those the model hears) and overall."""
        segments = [s for s in segments if s.start < self.model_seconds] or segments[:1]  # the model hears no further
        with self._workers:
            frames = self.model.encode_audio([signal]).to("cpu", torch.float32)
            regions = self.index.regions_of([i])  # 1 x D x H x W
            score = float(self.model.scores(regions, frames)[0, 0])
            maps = caption_heatmaps(regions[0], frames.caption(0), segments, self.model.frame_seconds())
        return Localized(score, segments, maps)

    def thumbnail(self, i: int, size: int) -> tuple[bytes, str]:
        """Image ``i`` at most ``size`` px a side (snapped down to :data:`THUMBNAIL_SIZES`), as (bytes, media type)."""
        size = max(s for s in THUMBNAIL_SIZES if s <= size)  # a small fixed set: few variants per image
        cached = self.thumbnails.get((i, size))
        if cached is not None:
            return cached
        with self._image_lock:  # one original decoded at a time
            cached = self.thumbnails.get((i, size))
            if cached is None:
                cached = _thumbnail_bytes(self.index, i, size, self.limits.max_image_pixels)
                self.thumbnails.put((i, size), cached)
        return cached


class ThumbnailCache:
    """Encoded thumbnails by ``(image, size)``, least recently used first out, bounded in bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = max_bytes, 0
        self.entries: OrderedDict[tuple[int, int], tuple[bytes, str]] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: tuple[int, int]) -> tuple[bytes, str] | None:
        with self.lock:
            if key in self.entries:
                self.entries.move_to_end(key)
                return self.entries[key]
        return None

    def put(self, key: tuple[int, int], entry: tuple[bytes, str]) -> None:
        with self.lock:
            if key in self.entries or len(entry[0]) > self.max_bytes:
                return
            self.entries[key] = entry
            self.bytes += len(entry[0])
            while self.bytes > self.max_bytes:
                _, (content, _) = self.entries.popitem(last=False)
                self.bytes -= len(content)


def _thumbnail_bytes(index: SearchIndex, i: int, size: int, max_pixels: int) -> tuple[bytes, str]:
    """Image ``i`` of the index at most ``size`` px a side, as (PNG or JPEG bytes, media type); 404/413 when not servable."""
    try:  # the path comes from the index, never from the request, and must lie in an indexed image folder
        image = load_thumbnail(index.image_file(i), size, max_pixels)
    except VGSError as exc:
        log.warning("image %d not served: %s", i, exc)
        if "too large to decode" in str(exc):
            raise QueryError(413, f"image {i} of the index is too large to serve (over {max_pixels:,} pixels)") from exc
        raise QueryError(404, f"image {i} of the index is no longer readable") from exc
    buffer = io.BytesIO()
    if image.width * image.height <= 256 * 256:
        image.save(buffer, "PNG", optimize=True)
        return buffer.getvalue(), "image/png"
    image.save(buffer, "JPEG", quality=88)
    return buffer.getvalue(), "image/jpeg"


def cut_speech(speech: Speech, seconds: float) -> tuple[Speech, bool]:
    """``(speech held to seconds, whether it was cut)``: words past the cut are dropped."""
    keep = int(seconds * speech.sample_rate)
    if len(speech.audio) <= keep:
        return speech, False
    words = None if speech.words is None else \
        [dataclasses.replace(w, end=min(w.end, seconds)) for w in speech.words if w.start < seconds]
    return dataclasses.replace(speech, audio=speech.audio[:keep], words=words), True


def printable(text: str) -> str:
    """Control characters become spaces; runs of whitespace one space."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())

