"""``vgs prepare respeak SRC --out DIR``: the same images and captions in other voices or conditions.

The cross-voice protocol: a run trained on one voice pool is scored on the very test images and
caption texts it was scored on before, spoken by engines and voices it never heard
(``--engines festival``), and/or corrupted the way real recordings are (``--corrupt noise:10``,
``reverb:0.6``, ``speed:0.9``; :mod:`vgs.augment`).  ``--keep-audio`` corrupts the source's own
recordings instead of speaking the text again (the only choice for real speech).  ``--corrupt random``
draws each recording's effects from the training augmentation's ranges
(:func:`vgs.augment.draw_corruptions`): varied training copies for a front end whose features are cached
once (Whisper), where the features cannot be augmented at each step.

Ids, image ids and images are the source's, so ``vgs evaluate RUN --data DIR`` scores the same
pairs; each row's ``speaker`` says what was done (``festival:ked_diphone:r170:p50+noise10dB``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..augment import AugmentConfig, Corruption, draw_corruptions, item_rng, parse_corruptions
from ..errors import VGSError
from ..tts import VoicePoolConfig, pick_voice, voice_pool
from .build import BuildReport, PairJob
from .manifest import load_split

BABBLE_TALKERS = 3  # other captions summed into babble noise
RANDOM = "random"  # --corrupt random: each recording's effects drawn by augment.draw_corruptions


@dataclass
class RespeakSource:
    """A data set folder to re-render, and how."""

    data: Path
    splits: tuple[str, ...] = ("dev",)
    voices: VoicePoolConfig = field(default_factory=VoicePoolConfig)
    keep_audio: bool = False  # corrupt the source recordings instead of speaking the text again
    corrupt: str | None = None  # e.g. "noise:10,reverb:0.5", or RANDOM: effects drawn per recording
    seed: int = 0


def _image_name(image: str) -> str:
    """Where the image goes under the new folder's ``images/`` (the source's own sub-path)."""
    parts = Path(image).parts
    return str(Path(*parts[1:])) if len(parts) > 1 and parts[0] == "images" else Path(image).name


def _word_tags(row: dict, engine: str) -> list[dict] | None:
    """Extra word keys (e.g. scenes' ``object``) to carry over; only espeak-ng reports word times."""
    words = row.get("words")
    if engine != "espeak" or not words or not any(set(w) - {"word", "start", "end"} for w in words):
        return None
    return [{k: v for k, v in w.items() if k not in ("word", "start", "end")} for w in words]


def respeak_jobs(source: RespeakSource, report: BuildReport) -> list[PairJob]:
    """One job per row of the chosen splits; rows without text are skipped when re-speaking."""
    drawn = source.corrupt == RANDOM
    fixed: list[Corruption] = parse_corruptions(source.corrupt) if source.corrupt and not drawn else []
    ranges = AugmentConfig()  # the training augmentation's probabilities and ranges, for RANDOM
    if source.keep_audio and not fixed and not drawn:
        raise VGSError("prepare respeak --keep-audio: nothing to change; add --corrupt (e.g. noise:10)")
    pool = [] if source.keep_audio else voice_pool(source.voices)
    if not source.keep_audio and not pool:
        raise VGSError("the voice pool is empty; check --engines/--voices (see `vgs voices`)")
    jobs = []
    for split in source.splits:
        manifest = load_split(source.data, split, strict=False)
        for problem in manifest.problems:
            report.skip(manifest.path, str(problem))
        audio_paths = [manifest.audio_path(row) for row in manifest.rows]
        for k, row in enumerate(manifest.rows):
            where = f"{manifest.path}:{k + 1}"
            if not source.keep_audio and not (row.get("text") or "").strip():
                report.skip(manifest.path, "field 'text': missing; cannot speak it again (use --keep-audio)", k + 1, row["id"])
                continue
            effects = draw_corruptions(ranges, item_rng(row["id"], f"draw:{source.seed}")) if drawn else fixed
            voice = None if source.keep_audio else pick_voice(pool, row["id"], source.seed)
            babble = [audio_paths[(k + j * 7919) % len(audio_paths)] for j in range(1, BABBLE_TALKERS + 1)]
            jobs.append(PairJob(
                id=row["id"], split=split, image_src=manifest.image_path(row), image_id=row["image_id"],
                text=row.get("text") or None,
                audio_src=audio_paths[k] if source.keep_audio else None, speaker=row.get("speaker"), voice=voice,
                words=row.get("words") if source.keep_audio else None, objects=row.get("objects"),
                source=where, image_name=_image_name(row["image"]), corrupt=effects or None,
                babble=babble if any(e.kind == "noise" and e.noise == "babble" for e in effects) else None,
                word_tags=None if voice is None else _word_tags(row, voice.engine),
            ))
    if not jobs:
        raise VGSError(f"{source.data}: no rows to re-speak in split(s) {', '.join(source.splits)}")
    return jobs
