"""Shared machinery for building a data set folder: resumable, atomic, with a skip report.

Every builder (``flickr8k``, ``facc``, ``places``, ``spokencoco``, ``scenes``) turns its
source into a list of :class:`PairJob` and hands it to :func:`build_dataset`, which

* checks and links (or copies) each image once,
* speaks each caption with the TTS, or imports real audio (resampled and downmixed
  to 16 kHz mono 16-bit PCM when it is not already),
* appends each finished row to a journal (``.build/<split>.journal.jsonl``), so a
  re-run skips finished items and an interrupted build loses nothing,
* writes ``<split>.jsonl`` manifests atomically, and
* writes ``build_report.json`` listing every skipped item with its file, line and reason.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import soundfile as sf
from ..progress import tqdm

from ..audio import SAMPLE_RATE, audio_problem, load_audio, save_audio
from ..errors import InputError, VGSError
from ..images import check_image
from ..io import clean_stale_tmp, write_json
from .manifest import SPLITS, write_manifest

BUILD_DIR = ".build"
REPORT_FILE = "build_report.json"


@dataclass
class PairJob:
    """One image/caption pair to produce. Either ``text`` (spoken by the TTS) or ``audio_src``."""

    id: str
    split: str
    image_src: Path
    image_id: str
    text: str | None = None
    audio_src: Path | None = None
    speaker: str | None = None
    voice: Any = None  # a vgs.tts.Voice for TTS jobs
    words: list[dict] | None = None
    objects: list[dict] | None = None
    word_tags: list[dict] | None = None  # extra keys merged into each spoken word, by position (e.g. {"object": 2})
    source: str = ""  # "file:line" the job came from, for error messages
    image_name: str | None = None  # file name under images/ (default: the source's name)
    corrupt: list | None = None  # vgs.augment.Corruption effects applied to the audio (respeak)
    babble: list[Path] | None = None  # recordings mixed in as babble noise by a "noise:SNR:babble" effect


@dataclass
class BuildReport:
    """What a build skipped and why; saved as ``build_report.json``."""

    skipped: list[dict] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def skip(self, source: str | Path, reason: str, line: int | None = None, item: str | None = None) -> None:
        self.skipped.append({"source": str(source), "line": line, "id": item, "reason": reason})

    def skip_error(self, error: InputError, item: str | None = None) -> None:
        self.skip(error.source, error.reason if error.field is None else f"field {error.field!r}: {error.reason}", error.line, item)

    def summary(self) -> str:
        by_reason: dict[str, int] = defaultdict(int)
        for entry in self.skipped:
            by_reason[entry["reason"].split(" (")[0][:80]] += 1
        lines = [f"skipped {len(self.skipped)} item(s)"] + [f"  {n:6d}  {r}" for r, n in sorted(by_reason.items(), key=lambda kv: -kv[1])]
        return "\n".join(lines)


def safe_name(text: str) -> str:
    """A file-system-safe version of an id (letters, digits, ``-``, ``_``, ``.``)."""
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
    return keep.strip(".") or "item"


def dedupe_jobs(jobs: Iterable[PairJob], report: BuildReport) -> list[PairJob]:
    """Drop jobs whose id was already seen, reporting each duplicate with its source line."""
    seen: dict[str, str] = {}
    kept = []
    for job in jobs:
        if job.id in seen:
            report.skip(job.source or job.id, f"duplicate id {job.id!r} (first seen at {seen[job.id]})", item=job.id)
            continue
        seen[job.id] = job.source or "?"
        kept.append(job)
    return kept


class Journal:
    """Append-only record of finished rows for one split; survives being killed."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[str, dict] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill: that item is simply redone
                if isinstance(row, dict) and "id" in row:
                    self.rows[row["id"]] = row
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(path, "a", encoding="utf-8")
        self._since_sync = 0

    def add(self, row: dict) -> None:
        self.rows[row["id"]] = row
        self._handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._handle.flush()  # in the OS's hands: survives the process being killed
        self._since_sync += 1
        if self._since_sync >= 256:
            self.sync()

    def sync(self) -> None:
        """Make the journal, and the audio files written since the last sync (not fsynced one by one), durable."""
        self._handle.flush()
        os.sync()
        os.fsync(self._handle.fileno())
        self._since_sync = 0

    def close(self) -> None:
        self.sync()
        self._handle.close()


def place_file(src: Path, dest: Path, copy: bool) -> None:
    """Link (or copy) a source file into the data set, atomically."""
    if dest.exists() or dest.is_symlink():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    if tmp.exists() or tmp.is_symlink():
        tmp.unlink()
    if copy:
        shutil.copyfile(src, tmp)
    else:
        os.symlink(src.resolve(), tmp)
    os.replace(tmp, dest)


def prepare_images(jobs: list[PairJob], out: Path, report: BuildReport, copy: bool, progress: bool = True) -> list[PairJob]:
    """Check each distinct image once; drop the pairs of unreadable images."""
    status: dict[Path, str | None] = {}
    for src in tqdm(sorted({j.image_src for j in jobs}), desc="images", unit="img", leave=False, disable=not progress):
        try:
            check_image(src)
            status[src] = None
        except InputError as exc:
            status[src] = exc.reason
            report.skip(src, exc.reason)
    kept = []
    for job in jobs:
        problem = status[job.image_src]
        if problem is not None:
            report.skip(job.source or job.image_src, f"image {job.image_src.name} unusable: {problem}", item=job.id)
            continue
        place_file(job.image_src, out / "images" / (job.image_name or job.image_src.name), copy)
        kept.append(job)
    return kept


def base_row(job: PairJob, audio_rel: str, speaker: str, duration: float, words: list[dict] | None) -> dict:
    row: dict[str, Any] = {
        "id": job.id,
        "image": f"images/{job.image_name or job.image_src.name}",
        "image_id": job.image_id,
        "audio": audio_rel,
        "speaker": speaker,
        "duration": round(duration, 3),
    }
    if job.text is not None:
        row["text"] = job.text
    if words is not None:
        row["words"] = words
    if job.objects is not None:
        row["objects"] = job.objects
    return row


def apply_corruption(job: PairJob, audio, words: list[dict] | None, speaker: str):  # noqa: ANN001, ANN201
    """``job.corrupt``'s effects on ``audio`` (16 kHz, shape ``N``), seeded by the job id.

    Returns (audio, words with times scaled by any speed change, speaker + effect labels).
    """
    from ..augment import corrupt, item_rng

    if not job.corrupt:
        return audio, words, speaker
    babble = [load_audio(path) for path in job.babble] if job.babble else None
    audio = corrupt(audio, job.corrupt, item_rng(job.id, "corrupt"), babble)
    speed = 1.0
    for effect in job.corrupt:
        speed *= effect.value if effect.kind == "speed" else 1.0
    if words is not None and speed != 1.0:
        words = [{**w, "start": round(w["start"] / speed, 4), "end": round(w["end"] / speed, 4)} for w in words]
    return audio, words, "+".join([speaker] + [effect.label for effect in job.corrupt])


def import_audio(job: PairJob, out: Path, audio_format: str) -> dict:
    """Bring one real recording into the data set (as-is when already 16 kHz mono PCM_16)."""
    assert job.audio_src is not None
    src = job.audio_src
    problem = audio_problem(src)
    if problem is not None:
        raise InputError(src, problem)
    try:
        info = sf.info(str(src)) if src.is_file() and src.stat().st_size > 0 else None
    except (sf.LibsndfileError, RuntimeError):
        info = None
    rel = f"audio/{safe_name(job.id)}.{audio_format}"
    dest = out / rel
    if job.corrupt:
        audio, words, speaker = apply_corruption(job, load_audio(src), job.words, job.speaker or "unknown")
        save_audio(dest, audio, durable=False)
        return base_row(job, rel, speaker, len(audio) / SAMPLE_RATE, words)
    if info is not None and info.samplerate == SAMPLE_RATE and info.channels == 1 and info.subtype == "PCM_16" \
            and info.frames >= 400 and src.suffix.lower() == f".{audio_format}":
        rel = f"audio/{safe_name(job.id)}{src.suffix.lower()}"
        place_file(src, out / rel, copy=False)
        duration = info.frames / info.samplerate
    else:
        audio = load_audio(src)  # resamples, downmixes, validates; raises InputError
        save_audio(dest, audio, durable=False)
        duration = len(audio) / SAMPLE_RATE
    return base_row(job, rel, job.speaker or "unknown", duration, job.words)


def speak_jobs(jobs: list[PairJob], out: Path, audio_format: str, workers: int) -> Iterator[tuple[PairJob, dict | Exception]]:
    """Synthesize TTS jobs in a process pool, writing each wav atomically."""
    from ..tts import synthesize_many

    by_id = {job.id: job for job in jobs}
    stream = synthesize_many(((job.id, job.text, job.voice) for job in jobs), workers=workers)
    for key, speech in stream:
        job = by_id[key]
        if isinstance(speech, Exception):
            yield job, speech
            continue
        words = [w.to_dict() for w in speech.words] if speech.words is not None else job.words
        if job.word_tags is not None and words is not None:  # engines without word times keep no tags
            if len(words) != len(job.word_tags):
                yield job, InputError(job.source or job.id, f"the TTS spoke {len(words or [])} words where the caption has "
                                      f"{len(job.word_tags)}; cannot align word tags")
                continue
            words = [{**word, **tags} for word, tags in zip(words, job.word_tags)]
        rel = f"audio/{safe_name(job.id)}.{audio_format}"
        try:
            audio, words, speaker = apply_corruption(job, speech.audio, words, speech.voice.id)
        except InputError as exc:
            yield job, exc
            continue
        save_audio(out / rel, audio, durable=False)
        yield job, base_row(job, rel, speaker, len(audio) / SAMPLE_RATE, words)


def build_dataset(out: str | Path, jobs: Iterable[PairJob], report: BuildReport, *, copy_images: bool = False,
                  audio_format: str = "wav", workers: int = 2, progress: bool = True) -> dict[str, int]:
    """Produce the data set folder from ``jobs``; return rows written per split.

    Safe to re-run: finished rows are read back from the journal and not redone.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(out)  # left by a killed build
    jobs = prepare_images(dedupe_jobs(jobs, report), out, report, copy_images, progress)
    splits = sorted({j.split for j in jobs}, key=lambda s: SPLITS.index(s) if s in SPLITS else 99)
    written: dict[str, int] = {}
    started = time.perf_counter()
    for split in splits:
        split_jobs = [j for j in jobs if j.split == split]
        journal = Journal(out / BUILD_DIR / f"{split}.journal.jsonl")
        todo = [j for j in split_jobs if j.id not in journal.rows or not (out / journal.rows[j.id]["audio"]).exists()]
        bar = tqdm(total=len(split_jobs), initial=len(split_jobs) - len(todo), desc=f"{split}", unit="cap", disable=not progress)
        try:
            for job, result in _produce(todo, out, audio_format, workers):
                if isinstance(result, InputError):
                    report.skip_error(result, item=job.id)
                elif isinstance(result, Exception):
                    report.skip(job.source or job.id, f"{type(result).__name__}: {result}", item=job.id)
                else:
                    journal.add(result)
                bar.update(1)
        finally:
            journal.close()
            bar.close()
        rows = [journal.rows[j.id] for j in split_jobs if j.id in journal.rows]
        write_manifest(out / f"{split}.jsonl", rows)
        written[split] = len(rows)
    report.counts = dict(written)
    write_json(out / REPORT_FILE, {"written": written, "skipped": report.skipped, "seconds": round(time.perf_counter() - started, 1)})
    return written


def _produce(jobs: list[PairJob], out: Path, audio_format: str, workers: int) -> Iterator[tuple[PairJob, dict | Exception]]:
    spoken = [j for j in jobs if j.audio_src is None]
    recorded = [j for j in jobs if j.audio_src is not None]
    for job in spoken:
        if not job.text or not job.text.strip():
            raise VGSError(f"{job.source}: job {job.id} has neither text nor audio")
    if spoken:
        yield from speak_jobs(spoken, out, audio_format, workers)
    for job in recorded:
        try:
            yield job, import_audio(job, out, audio_format)
        except InputError as exc:
            yield job, exc


def exit_status(report: BuildReport) -> int:
    """0 when nothing was skipped, 3 when the build finished but skipped items."""
    return 3 if report.skipped else 0


def run_builder(out: Path, jobs: Callable[[BuildReport], list[PairJob]], **kwargs: Any) -> tuple[dict[str, int], BuildReport]:
    """Parse a source into jobs (collecting parse problems), then build."""
    report = BuildReport()
    written = build_dataset(out, jobs(report), report, **kwargs)
    return written, report
