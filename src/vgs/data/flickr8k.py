"""``vgs prepare flickr8k``: speak every Flickr8k caption with the TTS (the paper's ``say`` step).

Splits come from the standard ``Flickr_8k.{train,dev,test}Images.txt`` lists (given
with ``--split-lists`` or found beside the caption file), or from a seeded split.
``voices_per_caption > 1`` speaks each *training* caption in several voices: a cheap,
label-free augmentation (dev and test keep one voice per caption).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError, VGSError
from ..tts import VoicePoolConfig, pick_voice, voice_pool
from .build import BuildReport, PairJob
from .text_captions import SPLIT_LIST_NAMES, parse_captions, read_split_lists


@dataclass
class Flickr8kSource:
    """Where the Flickr8k files are, and how to speak them."""

    images: Path
    captions: Path
    split_lists: Path | None = None  # folder with Flickr_8k.*Images.txt; default: beside captions
    seed: int = 0
    split_fractions: tuple[float, float, float] = (0.75, 0.125, 0.125)
    voices_per_caption: int = 1
    voices: VoicePoolConfig = field(default_factory=VoicePoolConfig)
    limit_images: int | None = None  # keep only the first N images per split (quick experiments)


def assign_splits(images: list[str], source: Flickr8kSource) -> dict[str, str]:
    """Map image file name -> split, from the standard lists or a seeded shuffle."""
    mapping = read_split_lists([source.split_lists or source.captions.parent])
    if mapping is not None:
        return mapping
    if source.split_lists is not None:
        raise VGSError(f"{source.split_lists}: none of {', '.join(SPLIT_LIST_NAMES.values())} found")
    order = sorted(set(images))
    random.Random(source.seed).shuffle(order)
    n_train = round(len(order) * source.split_fractions[0])
    n_dev = round(len(order) * source.split_fractions[1])
    return {name: ("train" if i < n_train else "dev" if i < n_train + n_dev else "test") for i, name in enumerate(order)}


def flickr8k_jobs(source: Flickr8kSource, report: BuildReport) -> list[PairJob]:
    """Parse captions and splits into TTS jobs; parse problems go to ``report``."""
    if not source.images.is_dir():
        raise VGSError(f"{source.images}: image folder not found")
    errors: list[InputError] = []
    captions = parse_captions(source.captions, errors)
    for error in errors:
        report.skip_error(error)
    splits = assign_splits([c.image for c in captions], source)
    pool = voice_pool(source.voices)
    if not pool:
        raise VGSError("the voice pool is empty; check --engines/--voices (see `vgs voices`)")
    per_split_images: dict[str, list[str]] = {}
    jobs = []
    for caption in captions:
        split = splits.get(caption.image)
        if split is None:
            continue  # not in any split list (e.g. the held-back test images)
        seen = per_split_images.setdefault(split, [])
        if caption.image not in seen:
            if source.limit_images is not None and len(seen) >= source.limit_images:
                continue
            seen.append(caption.image)
        stem = Path(caption.image).stem
        copies = source.voices_per_caption if split == "train" else 1
        for copy in range(copies):
            item = f"{stem}#{caption.index}" + (f"@{copy}" if copy else "")
            jobs.append(PairJob(
                id=item, split=split, image_src=source.images / caption.image, image_id=stem,
                text=caption.text, voice=pick_voice(pool, f"{stem}#{caption.index}", source.seed, copy=copy),
                source=f"{source.captions}:{caption.line}",
            ))
    if not jobs:
        raise VGSError(f"{source.captions}: no captions matched the images in the split lists")
    return jobs
