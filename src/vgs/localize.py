"""Where in the image does a spoken word land?  Matchmap heatmaps, overlays, and the pointing game.

The matchmap ``M[h, w, t]`` scores every image region against every audio frame.
For a word spoken from ``start`` to ``end`` seconds, its heatmap is ``M`` averaged over
the word's frames; for the whole caption, over all frames.  Heatmaps are upsampled
to the image's size for overlays.

:func:`caption_heatmaps` is the one implementation of heatmaps: ``vgs localize``, the pointing
game and the web app's search and localize answers all call it.

The pointing game (on data with ground truth, e.g. the scenes): for every word tagged
with an object, the heatmap's maximum must fall inside that object's box.  A random
map's expected score (the boxes' share of the image) is the baseline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from .progress import tqdm

from .api import Model
from .audio import load_audio
from .data.manifest import Manifest
from .errors import InputError, VGSError
from .images import load_image
from .io import atomic_write
from .similarity import matchmap


@dataclass
class Segment:
    """A stretch of the caption: a word (``label`` = the word) or a fixed window."""

    label: str
    start: float
    end: float


def frame_range(start: float, end: float, frame_seconds: float, n_frames: int) -> tuple[int, int]:
    """Encoder frames ``[a, b)`` overlapping ``[start, end)`` seconds (at least one frame)."""
    a = int(np.floor(start / frame_seconds))
    b = int(np.ceil(end / frame_seconds))
    a = min(max(a, 0), n_frames - 1)
    return a, max(a + 1, min(b, n_frames))


def segment_heatmaps(matchmap: torch.Tensor, segments: list[Segment], frame_seconds: float) -> torch.Tensor:
    """``H x W x T`` matchmap -> ``S x H x W``: the mean map over each segment's frames."""
    n_frames = matchmap.shape[-1]
    maps = []
    for segment in segments:
        a, b = frame_range(segment.start, segment.end, frame_seconds, n_frames)
        maps.append(matchmap[:, :, a:b].mean(-1))
    return torch.stack(maps) if maps else torch.zeros(0, *matchmap.shape[:2])


@dataclass
class Heatmaps:
    """One caption over one image: ``segments`` ``S x H x W`` (one map per segment) and ``whole`` ``H x W``."""

    segments: torch.Tensor
    whole: torch.Tensor


def caption_heatmaps(image: torch.Tensor, caption: torch.Tensor, segments: list[Segment],
                     frame_seconds: float) -> Heatmaps:
    """``D x H x W`` region embeddings and ``D x T'`` caption frames -> the matchmap averaged over each
    segment's frames and over all frames (the whole caption)."""
    scores = matchmap(image, caption)  # H x W x T'
    return Heatmaps(segment_heatmaps(scores, segments, frame_seconds), scores.mean(-1))


MIN_WINDOW, MAX_WINDOW = 0.05, 60.0  # seconds per fixed window
MAX_WINDOWS = 400  # fixed windows per caption (the audio encoder sees at most ~10 s anyway)


def check_window(window: float, duration: float | None = None) -> None:
    """Raise VGSError unless ``window`` is a sane window length and gives at most MAX_WINDOWS windows."""
    if not (isinstance(window, (int, float)) and math.isfinite(window) and MIN_WINDOW <= window <= MAX_WINDOW):
        raise VGSError(f"--window: expected seconds per segment between {MIN_WINDOW:g} and {MAX_WINDOW:g}, got {window!r}")
    if duration is not None and math.ceil(duration / window) > MAX_WINDOWS:
        raise VGSError(f"--window {window:g}: {duration:.1f} s of audio would make {math.ceil(duration / window)} "
                       f"windows; at most {MAX_WINDOWS} (use a window of at least {duration / MAX_WINDOWS:.2f} s)")


def fixed_segments(duration: float, window: float = 0.5) -> list[Segment]:
    """Windows of ``window`` seconds covering the caption, for audio without word times (at most MAX_WINDOWS)."""
    check_window(window, duration)
    edges = np.arange(0.0, duration, window)
    return [Segment(f"{a:.1f}-{min(a + window, duration):.1f}s", float(a), float(min(a + window, duration))) for a in edges]


def upsample(heatmaps: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``S x h x w`` -> ``S x height x width`` (bilinear, for overlays and the pointing game)."""
    return F.interpolate(heatmaps[:, None].float(), size=(height, width), mode="bilinear", align_corners=False)[:, 0]


def save_overlay(image: np.ndarray, heatmap: np.ndarray, path: str | Path, title: str = "",
                 scale: tuple[float, float] | None = None) -> None:
    """Draw ``heatmap`` (``H x W``, image-sized) over ``image`` (``H x W x 3`` uint8) with a colour bar; write a PNG.

    ``scale`` (low, high) puts several maps of one query on one colour scale; default: this map's range.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.8, 3.4), dpi=100)
    ax.imshow(image)
    low, high = scale if scale is not None else (float(heatmap.min()), float(heatmap.max()))
    shown = ax.imshow(heatmap, cmap="jet", alpha=0.45, vmin=low, vmax=high if high > low else low + 1e-6)
    bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label("match score", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    ax.plot([x], [y], marker="+", color="white", markersize=14, markeredgewidth=2)
    ax.set_title(title, fontsize=10)
    ax.axis("off")
    fig.tight_layout()
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png")
    plt.close(fig)


def localize(model: Model, image_path: str | Path, audio: str | Path | np.ndarray, out: str | Path,
             words: list[dict] | None = None, window: float = 0.5) -> list[dict]:
    """``vgs localize``: one overlay PNG per word (or per window) plus one for the whole caption.

    Returns one record per PNG: ``{"label", "start", "end", "png", "peak": [x, y]}``.
    """
    out = Path(out)
    image = load_image(image_path)
    signal = audio if isinstance(audio, np.ndarray) else load_audio(audio)
    duration = len(signal) / model.config.features.sample_rate
    heard = min(duration, model.config.features.max_frames * model.config.features.input_frame_seconds)  # the model reads no more
    segments = [Segment(w["word"], float(w["start"]), float(w["end"])) for w in words] if words else fixed_segments(heard, window)
    found = caption_heatmaps(model.encode_images([image])[0].cpu(), model.encode_audio([signal]).caption(0).cpu(),
                             segments, model.frame_seconds())
    maps = torch.cat([found.segments, found.whole[None]])
    labels = segments + [Segment("whole caption", 0.0, duration)]
    pixels = np.asarray(image)
    full = upsample(maps, pixels.shape[0], pixels.shape[1]).numpy()
    records = []
    scale = (float(full[:-1].min()), float(full[:-1].max())) if len(segments) else None  # one scale for the words
    for k, (segment, heatmap) in enumerate(zip(labels, full)):
        name = f"{k:02d}-{_slug(segment.label)}.png" if k < len(segments) else "caption.png"
        save_overlay(pixels, heatmap, out / name, f"{segment.label} ({segment.start:.2f}-{segment.end:.2f}s)",
                     scale=scale if k < len(segments) else None)
        y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
        records.append({"label": segment.label, "start": segment.start, "end": segment.end, "png": str(out / name),
                        "peak": [int(x), int(y)]})
    return records


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)[:40] or "segment"


# ----------------------------------------------------------------------------- the pointing game


@dataclass
class PointingResult:
    """Hits over object words, and what a random map would score on the same words."""

    words: int
    hits: int
    random_baseline: float

    @property
    def score(self) -> float:
        return self.hits / self.words if self.words else 0.0

    def to_dict(self) -> dict:
        return {"pointing_game": round(self.score, 4), "random_baseline": round(self.random_baseline, 4),
                "object_words": self.words, "hits": self.hits}


def pointing_game(model: Model, manifest: Manifest, max_captions: int | None = None, batch_size: int = 32,
                  progress: bool = True) -> PointingResult:
    """Share of object words whose heatmap maximum falls inside the named object's box.

    Images and captions are encoded in batches, each image once.
    """
    rows = [r for r in manifest.rows if r.get("objects") and any("object" in w for w in r.get("words") or [])]
    if not rows:
        raise VGSError(f"{manifest.path}: no captions with object-tagged words; the pointing game needs ground truth "
                       "(e.g. the scenes data)")
    rows = rows[:max_captions] if max_captions else rows
    result = PointingResult(0, 0, 0.0)
    for b0 in tqdm(range(0, len(rows), batch_size), desc="pointing game", unit="batch", disable=not progress):
        _score_batch(model, manifest, rows[b0: b0 + batch_size], result)
    result.random_baseline /= max(result.words, 1)
    return result


def _score_batch(model: Model, manifest: Manifest, rows: list[dict], result: PointingResult) -> None:
    image_ids = list(dict.fromkeys(r["image_id"] for r in rows))
    first = {r["image_id"]: r for r in reversed(rows)}
    try:
        images = model.encode_images([manifest.image_path(first[i]) for i in image_ids]).cpu()
        captions = model.encode_audio([manifest.audio_path(r) for r in rows]).to("cpu")
    except InputError:
        return
    for j, row in enumerate(rows):
        tagged = [w for w in row["words"] if "object" in w]
        maps = caption_heatmaps(images[image_ids.index(row["image_id"])], captions.caption(j),
                                [Segment(w["word"], w["start"], w["end"]) for w in tagged], model.frame_seconds()).segments
        height, width = _image_size(manifest, row)
        peaks = upsample(maps, height, width).flatten(1).argmax(1)
        for word, peak in zip(tagged, peaks.tolist()):
            x0, y0, x1, y1 = row["objects"][word["object"]]["box"]
            y, x = divmod(peak, width)
            result.hits += int(x0 <= x < x1 and y0 <= y < y1)
            result.random_baseline += (x1 - x0) * (y1 - y0) / (width * height)
            result.words += 1


def _image_size(manifest: Manifest, row: dict) -> tuple[int, int]:
    from PIL import Image

    with Image.open(manifest.image_path(row)) as image:
        return image.height, image.width
