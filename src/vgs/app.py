"""``vgs serve``: search an indexed photo collection by voice, from a web page or a JSON API.

The page (``app_static/``: plain HTML/JS/CSS, no build step, nothing fetched from elsewhere)
records from the microphone, takes an audio file, or speaks typed text with the TTS; shows
the top-k images, each with the heatmap of the whole query over it; and, for a clicked
image, the heatmap of every word (text queries: word times come from the TTS) or of every
fixed window of audio (recordings and files: no word times are known).

Browsers record webm/opus, which libsndfile cannot read, so the page decodes every
recording and file itself (Web Audio ``decodeAudioData``), downmixes and resamples it to
16 kHz mono and uploads a WAV.  The server reads WAV/FLAC/OGG.

JSON API (described at ``/openapi.json``, browsable at ``/docs``)::

    GET  /api/health                      collection size, model, limits
    POST /api/search/audio                multipart: file (audio), k            -> SearchResult
    POST /api/search/text                 JSON: {text, k, voice}                -> SearchResult
    POST /api/localize/audio              multipart: image, file, window        -> Localization
    POST /api/localize/text               JSON: {image, text, voice}            -> Localization
    GET  /api/images/{i}?size=            image i of the index (PNG or JPEG, at most size px)

This module is schemas and routes; :class:`vgs.query.QueryService` answers the queries (model,
index, locks and caches), so it can be used and tested without HTTP.

Images are named by their integer position in the index only: no path from a request
ever reaches the filesystem.  Heatmaps come as small grids (the image encoder's ``H x W``
regions, normalized to [0, 1]) that the page colours and upsamples itself.

Safety: request bodies are capped while they are read (not trusting Content-Length) and must
arrive within a deadline; the Host header must name the server (DNS rebinding); audio duration
(uploaded or synthesized), text length and k are capped, and audio is checked from its header,
then decoded in blocks, a few uploads at a time; images are served as thumbnails from a small
set of sizes, decoded one at a time under a pixel budget, from a cache bounded in bytes; bad
input gets a 4xx JSON ``{"detail": ...}``.  Inference runs in a small pool of worker threads
sharing the model read-only.  Beyond localhost, put a reverse proxy in front (TLS, and
connection limits against clients that trickle their headers).

Not using ``from __future__ import annotations``: FastAPI must resolve the request models
defined inside :func:`create_app` (their limits come from :class:`AppLimits`).
"""

import asyncio
import io
import ipaddress
import logging
import os
import time
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np
import torch
from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from . import __version__
from .api import Model
from .errors import VGSError
from .localize import Segment, fixed_segments
from .query import DEFAULT_VOICE, AppLimits, Localized, QueryError, QueryService, SearchHit, printable
from .search import SearchIndex, open_index
from .tts import Speech

log = logging.getLogger("vgs.app")

# engine:name[:rRATE][:pPITCH] with a plain voice name: no dots or slashes, so no voice id names a file
VOICE_PATTERN = r"^[a-z]+:[A-Za-z0-9][A-Za-z0-9_+\-]{0,47}(:r[0-9]{2,3})?(:p[0-9]{1,2})?$"
JSON_BODY_LIMIT = 64 * 1024  # JSON requests are small: text is capped at a few hundred characters
MULTIPART_OVERHEAD = 64 * 1024  # form fields and part headers around an upload
READ_CHUNK = 64 * 1024
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
STATIC_FILES = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
                               "style-src 'self'; script-src 'self'; connect-src 'self'; object-src 'none'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-cache",
}


# ----------------------------------------------------------------------------- response models


class FieldProblem(BaseModel):
    field: str = Field(description="where the problem is, e.g. `k` or `file`")
    message: str


class ErrorOut(BaseModel):
    """Every 4xx/5xx answer: one clear line, plus the fields at fault for validation errors."""

    detail: str
    errors: Optional[list[FieldProblem]] = None


class HeatmapOut(BaseModel):
    """A matchmap averaged over some audio frames, on the image encoder's grid of regions.

    The grid covers the whole image (the encoder squashes images to a square), row 0 at the top.
    """

    rows: int
    cols: int
    values: list[list[float]] = Field(description="rows x cols, min-max normalized to [0, 1]")
    low: float = Field(description="raw matchmap value mapped to 0")
    high: float = Field(description="raw matchmap value mapped to 1")
    peak: list[float] = Field(min_length=2, max_length=2,
                              description="[x, y] of the hottest region's centre, as fractions of width and height")


class WordOut(BaseModel):
    word: str
    start: float = Field(description="seconds from the start of the query audio")
    end: float


class QueryOut(BaseModel):
    kind: Literal["audio", "text"]
    duration: float = Field(description="seconds of audio (after any cut)")
    searched_seconds: float = Field(description="seconds of the audio the model heard (it reads at most "
                                    "its `max_frames`; the rest is ignored)")
    truncated: bool = Field(False, description="true when audio was cut: speech longer than the server's limit, "
                            "or audio longer than the model reads")
    text: Optional[str] = None
    voice: Optional[str] = None
    words: Optional[list[WordOut]] = Field(None, description="word times, when known (text queries)")


class HitOut(BaseModel):
    rank: int = Field(description="1 = best")
    image: int = Field(description="position of the image in the index; use with /api/images/{image}")
    score: float = Field(description="the model's matchmap similarity")
    name: str = Field(description="the image's file name (no folders)")
    image_url: str
    heatmap: HeatmapOut = Field(description="the whole query's matchmap over this image")


class SearchOut(BaseModel):
    query: QueryOut
    hits: list[HitOut]
    elapsed_ms: float


class SegmentOut(BaseModel):
    label: str = Field(description="the word, or the window as e.g. `0.5-1.0s`")
    start: float
    end: float
    heatmap: HeatmapOut


class LocalizeOut(BaseModel):
    image: int
    name: str
    image_url: str
    score: float
    query: QueryOut
    segment_kind: Literal["word", "window"]
    segments: list[SegmentOut]
    whole: HeatmapOut = Field(description="the whole query's heatmap")
    elapsed_ms: float


class LimitsOut(BaseModel):
    max_upload_bytes: int
    max_audio_seconds: float
    max_text_chars: int
    max_k: int


class HealthOut(BaseModel):
    status: Literal["ok"]
    version: str
    images: int
    captions: int
    checkpoint: Optional[str] = Field(None, description="checkpoint file name, or null for an untrained model")
    embed_dim: int
    similarity: str
    grid: list[int] = Field(description="[rows, cols] of the heatmaps")
    frame_seconds: float
    sample_rate: int
    default_voice: str
    limits: LimitsOut


def _errors(*codes: int) -> dict:
    return {code: {"model": ErrorOut} for code in codes}


# ----------------------------------------------------------------------------- the body guard


class _BodyGuard:
    """ASGI middleware: checks the content type of POSTs and reads bodies in chunks up to a cap.

    A body over the cap (whatever Content-Length says) gets 413 as soon as the cap is passed,
    without reading the rest; a body within it is handed on to the app.  Every response
    gets ``X-Content-Type-Options: nosniff``.
    """

    def __init__(self, app, routes: dict[str, str], max_upload: int, body_seconds: float = 30.0):  # noqa: ANN001
        self.app = app
        self.routes = routes  # path -> "json" | "multipart"
        self.limits = {"json": JSON_BODY_LIMIT, "multipart": max_upload + MULTIPART_OVERHEAD}
        self.body_seconds = body_seconds  # the whole body must arrive within this (slow clients get 408)

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_nosniff(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                message = {**message, "headers": headers}
            await send(message)

        kind = self.routes.get(scope["path"])
        if kind is None or scope["method"] != "POST":
            await self.app(scope, receive, send_nosniff)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        media = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
        ok = (media == "application/json" or (media.startswith("application/") and media.endswith("+json"))) \
            if kind == "json" else media == "multipart/form-data"
        if not ok:
            wanted = "application/json" if kind == "json" else "multipart/form-data"
            await _reply(scope, receive, send_nosniff, 415,
                         f"unsupported content type {media or '(none)'!r}; this endpoint takes {wanted}")
            return
        limit = self.limits[kind]
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                declared_size = int(declared)
            except ValueError:
                await _reply(scope, receive, send_nosniff, 400, "malformed Content-Length header")
                return
            if declared_size > limit:
                await _reply(scope, receive, send_nosniff, 413, _too_large(kind, limit))
                return
        chunks, total = [], 0
        deadline = time.monotonic() + self.body_seconds
        while True:
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                await _reply(scope, receive, send_nosniff, 408,
                             f"request body not received within {self.body_seconds:g} s")
                return
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            total += len(body)
            if total > limit:
                await _reply(scope, receive, send_nosniff, 413, _too_large(kind, limit))
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        body, delivered = b"".join(chunks), False
        if kind == "json":
            try:
                body.decode("utf-8")
            except UnicodeDecodeError:
                await _reply(scope, receive, send_nosniff, 400, "malformed JSON body: not UTF-8 text")
                return

        async def replay() -> dict:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send_nosniff)


class _HostGuard:
    """ASGI middleware: the Host header must name this server (against DNS rebinding), else 400.

    ``allowed``: host names or addresses without port (IPv6 in brackets); ``*`` allows any.
    """

    def __init__(self, app, allowed: Sequence[str]):  # noqa: ANN001 - an ASGI app
        self.app = app
        self.allowed = {_host_name(h) for h in allowed}

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] in ("http", "websocket") and "*" not in self.allowed:
            host = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == b"host"), "")
            if _host_name(host) not in self.allowed:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                await _reply(scope, receive, send, 400, "invalid Host header; this server answers to "
                             f"{', '.join(sorted(self.allowed))} (start it with --allowed-hosts NAME to add one)")
                return
        await self.app(scope, receive, send)


def _host_name(host: str) -> str:
    """``Host`` header value (or a bare name) -> lower-case name without the port; IPv6 in brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    if host.count(":") > 1:  # a bare IPv6 address
        return f"[{host}]"
    return host.split(":")[0]


def _too_large(kind: str, limit: int) -> str:
    if kind == "json":
        return f"request body too large (at most {limit // 1024} KiB of JSON)"
    return f"upload too large (at most {(limit - MULTIPART_OVERHEAD) / 2**20:g} MiB)"


async def _reply(scope, receive, send, status: int, detail: str) -> None:  # noqa: ANN001
    await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)


# ----------------------------------------------------------------------------- heatmaps


def _wav(audio: np.ndarray, rate: int) -> bytes:
    """Mono float audio -> 16-bit PCM WAV bytes."""
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(audio, dtype=np.float32), rate, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


def heatmap_out(grid: torch.Tensor) -> HeatmapOut:
    """An ``H x W`` map -> min-max normalized values (3 decimals), its range and its peak."""
    values = grid.detach().double().cpu().numpy()
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(values.min()), float(values.max())
    span = high - low
    norm = (values - low) / span if span > 0 else np.zeros_like(values)
    rows, cols = values.shape
    y, x = np.unravel_index(int(np.argmax(values)), values.shape)
    return HeatmapOut(rows=rows, cols=cols, values=np.round(norm, 3).tolist(), low=round(low, 5), high=round(high, 5),
                      peak=[round((x + 0.5) / cols, 4), round((y + 0.5) / rows, 4)])


# ----------------------------------------------------------------------------- the app


def create_app(model: Model, index: SearchIndex, limits: AppLimits = AppLimits(),
               allowed_hosts: Sequence[str] = LOOPBACK_HOSTS) -> FastAPI:
    """The web page and JSON API over ``index`` (built with ``model``): request and response schemas
    and routes; a :class:`~vgs.query.QueryService` answers the queries.

    ``allowed_hosts``: names the Host header may carry (``*``: any); requests naming another get 400.
    """
    service = QueryService(model, index, limits)
    limits = service.limits
    static = _static_files()

    class TextSearchIn(BaseModel):
        model_config = ConfigDict(extra="forbid")
        text: str = Field(min_length=1, max_length=limits.max_text_chars, description="spoken by the TTS, then searched")
        k: int = Field(10, ge=1, le=limits.max_k, description="number of results")
        voice: str = Field(DEFAULT_VOICE, max_length=64, pattern=VOICE_PATTERN,
                           description="TTS voice id ENGINE:NAME[:rRATE][:pPITCH]")

    class SpeakIn(BaseModel):
        model_config = ConfigDict(extra="forbid")
        text: str = Field(min_length=1, max_length=limits.max_text_chars, description="text for the TTS to speak")
        voice: str = Field(DEFAULT_VOICE, max_length=64, pattern=VOICE_PATTERN,
                           description="TTS voice id ENGINE:NAME[:rRATE][:pPITCH]")

    class TextLocalizeIn(BaseModel):
        model_config = ConfigDict(extra="forbid")
        image: int = Field(description="position of the image in the index")
        text: str = Field(min_length=1, max_length=limits.max_text_chars)
        voice: str = Field(DEFAULT_VOICE, max_length=64, pattern=VOICE_PATTERN)

    app = FastAPI(title="vgs", version=__version__, docs_url=None, redoc_url=None,  # /docs below works offline
                  description="Search a photo collection by voice: spoken (or typed, then spoken) queries are matched "
                              "to images by a visually grounded speech model, which also shows where each word lands "
                              "in an image (matchmap heatmaps).")
    app.add_middleware(_BodyGuard, routes={"/api/search/audio": "multipart", "/api/localize/audio": "multipart",
                                           "/api/search/text": "json", "/api/localize/text": "json",
                                           "/api/speak": "json"},
                       max_upload=limits.max_upload_bytes, body_seconds=limits.body_seconds)
    app.add_middleware(_HostGuard, allowed=allowed_hosts)  # outermost: checked first
    app.state.model, app.state.index, app.state.limits, app.state.service = model, index, limits, service
    _error_handlers(app)

    async def read_upload(file: UploadFile) -> bytes:
        chunks, total = [], 0
        while True:
            chunk = await file.read(READ_CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > limits.max_upload_bytes:
                raise HTTPException(413, f"upload too large (at most {limits.max_upload_bytes / 2**20:g} MiB)")
            chunks.append(chunk)
        if not total:
            raise HTTPException(422, "file: the uploaded audio is empty (0 bytes)")
        return b"".join(chunks)

    # ------------------------------------------------------------------ the page

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(static["index.html"][0], headers=PAGE_HEADERS)

    @app.get("/docs", include_in_schema=False)
    async def api_reference() -> HTMLResponse:
        from .apidocs import DOCS_HEADERS, render_api_reference

        return HTMLResponse(render_api_reference(app.openapi()), headers=DOCS_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str) -> Response:
        if name not in STATIC_FILES or name not in static:  # a fixed set, read at start-up: no path is looked up
            raise HTTPException(404, "not found")
        content, media = static[name]
        return Response(content, media_type=media, headers={"Cache-Control": "no-cache"})

    # ------------------------------------------------------------------ the API

    @app.get("/api/health", response_model=HealthOut, tags=["info"], summary="Collection size, model and limits")
    async def health() -> HealthOut:
        return HealthOut(status="ok", version=__version__, images=index.image_count, captions=index.caption_count,
                         checkpoint=Path(model.checkpoint).name if model.checkpoint else None,
                         embed_dim=model.embed_dim, similarity=model.similarity_kind, grid=service.grid,
                         frame_seconds=model.frame_seconds(), sample_rate=service.sample_rate, default_voice=DEFAULT_VOICE,
                         limits=LimitsOut(**{k: v for k, v in asdict(limits).items() if k in LimitsOut.model_fields}))

    @app.post("/api/search/audio", response_model=SearchOut, tags=["search"], responses=_errors(400, 413, 415, 422),
              summary="Search the images with a spoken query (WAV, FLAC or OGG)")
    async def search_audio(file: UploadFile = File(..., description="the spoken query: WAV, FLAC or OGG"),
                           k: int = Form(10, ge=1, le=limits.max_k, description="number of results")) -> SearchOut:
        started = time.perf_counter()
        data = await read_upload(file)
        signal = await run_in_threadpool(service.decode, data)
        hits = await run_in_threadpool(service.search, signal, k)
        return SearchOut(query=audio_query(service, signal), hits=hits_out(hits), elapsed_ms=_ms(started))

    @app.post("/api/search/text", response_model=SearchOut, tags=["search"], responses=_errors(400, 413, 415, 422),
              summary="Search the images with typed text, spoken by the TTS")
    async def search_text(body: TextSearchIn) -> SearchOut:
        started = time.perf_counter()
        speech, cut = await run_in_threadpool(service.speak, body.text, body.voice)
        hits = await run_in_threadpool(service.search, speech.audio, body.k)
        return SearchOut(query=text_query(service, speech, body.voice, body.text, cut), hits=hits_out(hits),
                         elapsed_ms=_ms(started))

    @app.post("/api/speak", tags=["search"], response_class=Response, responses={
                  200: {"content": {"audio/wav": {}}, "description": "16 kHz mono 16-bit WAV"}, **_errors(400, 413, 415, 422)},
              summary="The speech the TTS makes of a text: what a typed query searches with")
    async def speak_text(body: SpeakIn) -> Response:
        speech, _ = await run_in_threadpool(service.speak, body.text, body.voice)
        return Response(_wav(speech.audio, speech.sample_rate), media_type="audio/wav", headers={"Cache-Control": "no-store"})

    @app.post("/api/localize/audio", response_model=LocalizeOut, tags=["localize"],
              responses=_errors(400, 404, 413, 415, 422),
              summary="Where each stretch of a spoken query lands in an image (one heatmap per window)")
    async def localize_audio(image: int = Form(..., description="position of the image in the index"),
                             file: UploadFile = File(..., description="the spoken query: WAV, FLAC or OGG"),
                             window: float = Form(0.5, ge=0.1, le=5.0, description="seconds per segment")) -> LocalizeOut:
        started = time.perf_counter()
        service.check_image(image)
        data = await read_upload(file)
        signal = await run_in_threadpool(service.decode, data)
        segments = fixed_segments(len(signal) / service.sample_rate, window)
        found = await run_in_threadpool(service.localize, image, signal, segments)
        return localize_out(index, image, found, "window", audio_query(service, signal), started)

    @app.post("/api/localize/text", response_model=LocalizeOut, tags=["localize"],
              responses=_errors(400, 404, 413, 415, 422),
              summary="Where each word of a typed (then spoken) query lands in an image")
    async def localize_text(body: TextLocalizeIn) -> LocalizeOut:
        started = time.perf_counter()
        service.check_image(body.image)
        speech, cut = await run_in_threadpool(service.speak, body.text, body.voice)
        query = text_query(service, speech, body.voice, body.text, cut)
        if speech.words:
            segments, kind = [Segment(w.word, w.start, w.end) for w in speech.words], "word"
        else:  # an engine without word times
            segments, kind = fixed_segments(speech.duration, 0.5), "window"
        found = await run_in_threadpool(service.localize, body.image, speech.audio, segments)
        return localize_out(index, body.image, found, kind, query, started)

    @app.get("/api/images/{i}", tags=["images"], response_class=Response, responses={
        200: {"content": {"image/png": {}, "image/jpeg": {}}, "description": "the image, at most `size` pixels a side"},
        **_errors(404, 422)}, summary="Image i of the index")
    async def get_image(i: int, size: int = Query(512, ge=32, le=2048, description="longest side in pixels")) -> Response:
        service.check_image(i)
        content, media = await run_in_threadpool(service.thumbnail, i, size)
        return Response(content, media_type=media, headers={"Cache-Control": "private, max-age=3600"})

    return app


def _error_handlers(app: FastAPI) -> None:
    """Every error answers one JSON line: ``{"detail": ...}`` (validation errors also list the fields)."""

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path", "form"))
            if error.get("type") == "json_invalid":
                reason = (error.get("ctx") or {}).get("error", "JSON decode error")
                return JSONResponse({"detail": f"malformed JSON body: {reason}"}, status_code=400)
            problems.append(FieldProblem(field=where or "body", message=str(error.get("msg", "invalid"))))
        detail = "; ".join(f"{p.field}: {p.message}" for p in problems) or "invalid request"
        return JSONResponse(ErrorOut(detail=detail, errors=problems).model_dump(), status_code=422)

    @app.exception_handler(QueryError)
    async def on_query_error(request: Request, exc: QueryError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(VGSError)
    async def on_vgs_error(request: Request, exc: VGSError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal server error; see the server log"}, status_code=500)


# ----------------------------------------------------------------------------- answers to response schemas


def hits_out(hits: list[SearchHit]) -> list[HitOut]:
    return [HitOut(rank=r + 1, image=h.hit.index, score=round(h.hit.score, 6), name=Path(h.hit.path or "").name,
                   image_url=f"/api/images/{h.hit.index}", heatmap=heatmap_out(h.heatmap)) for r, h in enumerate(hits)]


def localize_out(index: SearchIndex, i: int, found: Localized, kind: str, query: QueryOut, started: float) -> LocalizeOut:
    return LocalizeOut(
        image=i, name=Path(index.image_paths[i]).name, image_url=f"/api/images/{i}", score=round(found.score, 6),
        query=query, segment_kind=kind,
        segments=[SegmentOut(label=s.label, start=round(s.start, 3), end=round(s.end, 3), heatmap=heatmap_out(m))
                  for s, m in zip(found.segments, found.heatmaps.segments)],
        whole=heatmap_out(found.heatmaps.whole), elapsed_ms=_ms(started))


def audio_query(service: QueryService, signal: np.ndarray) -> QueryOut:
    duration = len(signal) / service.sample_rate
    return QueryOut(kind="audio", duration=round(duration, 3), searched_seconds=round(min(duration, service.model_seconds), 3),
                    truncated=duration > service.model_seconds)


def text_query(service: QueryService, speech: Speech, voice_id: str, text: str, cut: bool) -> QueryOut:
    words = [WordOut(word=w.word, start=round(w.start, 3), end=round(w.end, 3)) for w in speech.words or []]
    return QueryOut(kind="text", duration=round(speech.duration, 3), text=printable(text), voice=voice_id,
                    words=words or None, searched_seconds=round(min(speech.duration, service.model_seconds), 3),
                    truncated=cut or speech.duration > service.model_seconds)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


def _static_files() -> dict[str, tuple[bytes, str]]:
    """The page's files, read once from the package (``vgs/app_static``)."""
    folder = resources.files("vgs") / "app_static"
    files = {}
    for name, media in {"index.html": "text/html; charset=utf-8", **STATIC_FILES}.items():
        entry = folder / name
        if entry.is_file():
            files[name] = (entry.read_bytes(), media)
    if "index.html" not in files:
        raise VGSError("the web page is missing from the installed package (vgs/app_static/index.html)")
    return files


# ----------------------------------------------------------------------------- serving


def serve(run: "str | Path | None", index_dir: "str | Path", host: str = "127.0.0.1", port: int = 8000,
          limits: Optional[AppLimits] = None, device: Optional[str] = None, threads: Optional[int] = None,
          log_level: str = "info", allowed_hosts: Sequence[str] = ()) -> None:
    """``vgs serve``: load the run (default: the one the index was built with) and serve until interrupted.

    ``threads``: torch intra-op threads for inference (default: the CPU count, at most 8), shared by
    the ``limits.workers`` queries in flight.  ``allowed_hosts``: names the Host header may carry
    besides the loopback names and ``host`` itself.
    """
    import uvicorn

    model, index = open_index(index_dir, run, device=device)
    limits = (limits or AppLimits()).validate()
    torch.set_num_threads(max(1, (threads or min(os.cpu_count() or 1, 8)) // limits.workers))
    if index.image_count == 0:
        raise VGSError(f"{index_dir}: the index holds no images; add some with `vgs index RUN --images FOLDER`")
    hosts = [*LOOPBACK_HOSTS, *([] if host in ("0.0.0.0", "::", "") else [_url_host(host)]), *allowed_hosts]
    app = create_app(model, index, limits, allowed_hosts=hosts)
    if not _is_loopback(host):
        log.warning("serving on %s: anyone who can reach this address can search the collection and see its images. "
                    "Browsers allow the microphone only on localhost or over HTTPS.", host)
    print(f"vgs: serving {index.image_count} images on http://{_url_host(host)}:{port}/ (API docs at /docs)", flush=True)
    uvicorn.Server(server_config(app, host, port, log_level)).run()


HEADER_SECONDS = 10.0  # a request's headers must arrive within this of its first byte (or of connecting)


def server_config(app: FastAPI, host: str, port: int, log_level: str = "info", header_seconds: float = HEADER_SECONDS,
                  max_connections: int = 200):  # noqa: ANN201 - a uvicorn.Config
    """uvicorn settings against slow clients: header and keep-alive deadlines, bounded connections.

    Request bodies have their own deadline (``AppLimits.body_seconds``, in the app).
    """
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_keep_alive=5,
                          http=_header_deadline_protocol(header_seconds), limit_concurrency=max_connections)


def _header_deadline_protocol(seconds: float):  # noqa: ANN202 - an asyncio.Protocol class
    """uvicorn's h11 protocol, closing connections whose request headers take longer than ``seconds``."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadlineProtocol(H11Protocol):
        _header_timer: Optional[asyncio.TimerHandle] = None

        def connection_made(self, transport) -> None:  # noqa: ANN001
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:  # still waiting for a whole request head
                self._arm()
            else:
                self._disarm()

        def connection_lost(self, exc: Optional[Exception]) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._header_timer is None and not self.transport.is_closing():
                self._header_timer = self.loop.call_later(seconds, self._expire)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expire(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadlineProtocol


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


__all__ = ["AppLimits", "create_app", "serve"]
