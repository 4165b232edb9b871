"""``vgs prepare scenes``: the built-in data set, made from nothing (no downloads).

Each image is a square scene of 1-4 coloured shapes (small or big, partly
overlapping, each at least ``min_visible`` visible) on a low-saturation textured
background.  Each image gets ``captions_per_image`` spoken captions from a small
grammar with synonyms and varied word order ("I see a big red circle and a tiny
blue star", "to the left a green heart and to the right a yellow box"), spoken by a
deterministic voice from the TTS pool.  Every row lists all objects with their
pixel boxes, and every spoken colour/size/shape word carries ``{"object": k}``:
ground truth for word localization (the pointing game).

Rendering is seeded per image (``seed``, split, index), so the same seed gives
byte-identical PNGs and identical captions, and growing a split keeps the images
it had.  Each PNG embeds its objects (a ``vgs-scene`` text chunk), so a resumed
build neither redraws nor rereads pixels.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import shutil
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, PngImagePlugin
from ..progress import tqdm

from ..errors import VGSError
from ..io import write_bytes, write_json
from ..tts import VoicePoolConfig, pick_voice, voice_pool
from .build import BUILD_DIR, BuildReport, PairJob, build_dataset

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 165, 50), "blue": (35, 70, 225), "yellow": (245, 215, 25),
    "purple": (135, 45, 180), "orange": (245, 130, 20), "white": (245, 245, 245), "black": (20, 20, 20),
    "pink": (250, 135, 195),
}
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc"), "square": ("square", "box", "block"), "triangle": ("triangle",),
    "star": ("star",), "diamond": ("diamond", "rhombus"), "cross": ("cross", "plus"),
    "heart": ("heart",), "moon": ("moon", "crescent"),
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little", "tiny"), "big": ("big", "large", "giant")}
SIZE_RADIUS = {"small": (0.065, 0.085), "big": (0.145, 0.185)}  # half-extent, as a share of the image side
# espeak-ng speaks "of a", "at a", "on the" (and, in two voices, "a huge") as one word, which would break the
# one-spoken-word-per-token alignment the word tags need; the grammar avoids them.
PREFIXES = ("", "there is", "I see", "I can see", "this picture shows", "here is", "a picture with", "you can see",
            "we see", "in this picture", "this image shows")
SUPERSAMPLE = 4
SCENE_KEY = "vgs-scene"
STAMP_FILE = "scenes_config.json"
SPLIT_CODES = {"train": 0, "dev": 1, "test": 2}


def demo_voices() -> VoicePoolConfig:
    """The built-in data's voices: espeak-ng (word times, for localization) and, when installed, flite's
    fastest voice, kal16, at three rates and three pitches (its clustergen voices, slt, awb and rms, take 5x
    longer a caption); festival stays out, as the engine the demo model has never heard."""
    if shutil.which("flite"):
        return VoicePoolConfig(engines="espeak,flite", external_voices=("flite:kal16",))
    return VoicePoolConfig(engines="espeak")


@dataclass
class ScenesConfig:
    """What ``vgs prepare scenes`` draws and says."""

    images: int = 2000  # training images (x captions_per_image pairs)
    dev_images: int = 200
    test_images: int = 200
    seed: int = 0
    size: int = 128  # pixels per side (the scenes preset feeds the trunk 160 px: a 10 x 10 map at stride 16)
    min_objects: int = 1
    max_objects: int = 4
    captions_per_image: int = 5
    min_visible: float = 0.6  # each object keeps at least this share of its area unoccluded
    voices: VoicePoolConfig = field(default_factory=lambda: demo_voices())

    def validate(self) -> "ScenesConfig":
        if min(self.images, self.dev_images, self.test_images) < 0 or self.images + self.dev_images + self.test_images == 0:
            raise VGSError("scenes: image counts must be >= 0 and not all zero")
        if not 32 <= self.size <= 1024:
            raise VGSError(f"scenes.size: expected 32..1024 pixels, got {self.size}")
        if not 1 <= self.min_objects <= self.max_objects <= 6:
            raise VGSError(f"scenes: expected 1 <= min_objects <= max_objects <= 6, got {self.min_objects}..{self.max_objects}")
        if self.captions_per_image < 1:
            raise VGSError(f"scenes.captions_per_image: expected >= 1, got {self.captions_per_image}")
        if not 0.3 <= self.min_visible <= 1:
            raise VGSError(f"scenes.min_visible: expected 0.3..1, got {self.min_visible}")
        return self


# ----------------------------------------------------------------------------- drawing


def _pick(rng: np.random.Generator, options: Any) -> Any:
    return options[int(rng.integers(len(options)))]


def _unit_polygon(shape: str) -> list[tuple[float, float]]:
    """Outline of ``shape`` in unit coordinates (half-extent about 1, y down)."""
    if shape == "square":
        return [(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)]
    if shape == "triangle":
        return [(0.0, -1.0), (1.0, 0.75), (-1.0, 0.75)]
    if shape == "diamond":
        return [(0.0, -1.0), (0.68, 0.0), (0.0, 1.0), (-0.68, 0.0)]
    if shape == "cross":
        a = 0.34
        return [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)]
    if shape == "star":
        return [((1.0 if i % 2 == 0 else 0.42) * math.sin(i * math.pi / 5), -(1.0 if i % 2 == 0 else 0.42) * math.cos(i * math.pi / 5) + 0.1)
                for i in range(10)]
    if shape == "heart":
        t = np.linspace(0, 2 * math.pi, 72, endpoint=False)
        x, y = 16 * np.sin(t) ** 3, -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return [(float(a) / 16.5, (float(b) + 2.5) / 15.0) for a, b in zip(x, y)]
    raise ValueError(shape)


def _object_mask(obj: dict, canvas: int) -> np.ndarray:
    """Boolean ``canvas x canvas`` mask of one object (coordinates already supersampled)."""
    layer = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(layer)
    cx, cy, r, angle = obj["_cx"], obj["_cy"], obj["_r"], obj["_angle"]
    if obj["shape"] in ("circle", "moon"):
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
        if obj["shape"] == "moon":
            ox, oy = cx + 0.55 * r * math.cos(angle), cy + 0.55 * r * math.sin(angle)
            draw.ellipse([ox - 0.85 * r, oy - 0.85 * r, ox + 0.85 * r, oy + 0.85 * r], fill=0)
    else:
        c, s = math.cos(angle), math.sin(angle)
        draw.polygon([(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in _unit_polygon(obj["shape"])], fill=1)
    return np.asarray(layer, dtype=bool)


def _low_sat_color(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(100, 160) + rng.uniform(-20, 20, 3)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """``size x size x 3`` float background: a gradient plus a low-contrast texture."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    theta = rng.uniform(0, 2 * math.pi)
    ramp = np.clip((xx - 0.5) * math.cos(theta) + (yy - 0.5) * math.sin(theta) + 0.5, 0, 1)[..., None]
    image = _low_sat_color(rng) * (1 - ramp) + _low_sat_color(rng) * ramp
    kind = int(rng.integers(3))
    if kind == 0:  # soft clouds
        cells = int(rng.integers(3, 9))
        coarse = Image.fromarray(rng.uniform(0, 255, (cells, cells)).astype(np.uint8))
        texture = np.asarray(coarse.resize((size, size), Image.BICUBIC), dtype=np.float64) / 255 - 0.5
    elif kind == 1:  # stripes at a random angle and period
        phi, period = rng.uniform(0, math.pi), rng.uniform(0.05, 0.2)
        texture = 0.5 * np.sin(2 * math.pi * (xx * math.cos(phi) + yy * math.sin(phi)) / period)
    else:  # checks
        period = rng.uniform(0.08, 0.25)
        texture = ((np.floor(xx / period) + np.floor(yy / period)) % 2) - 0.5
    image = image + rng.uniform(10, 30) * texture[..., None] * rng.uniform(0.6, 1.0, 3)
    return image + rng.normal(0, 4, image.shape)


def _place(rng: np.random.Generator, config: ScenesConfig, objects: list[dict], label: np.ndarray,
           areas: list[int]) -> dict | None:
    """Try to add one new object on top without hiding any earlier one too much."""
    used = {(o["color"], o["shape"]) for o in objects}
    canvas = config.size * SUPERSAMPLE
    for _ in range(30):
        obj = {"shape": _pick(rng, list(SHAPE_WORDS)), "color": _pick(rng, list(COLORS)), "size": _pick(rng, list(SIZE_WORDS))}
        if (obj["color"], obj["shape"]) in used:
            continue
        r = rng.uniform(*SIZE_RADIUS[obj["size"]]) * canvas
        margin = r + 2 * SUPERSAMPLE
        angle = rng.uniform(0, 2 * math.pi) if obj["shape"] == "moon" else math.radians(rng.uniform(-10, 10))
        obj.update(_cx=rng.uniform(margin, canvas - margin), _cy=rng.uniform(margin, canvas - margin), _r=r, _angle=angle)
        if any(o["color"] == obj["color"] and math.dist((o["_cx"], o["_cy"]), (obj["_cx"], obj["_cy"])) < o["_r"] + r + 4 * SUPERSAMPLE
               for o in objects):
            continue  # same-coloured shapes must not touch (they would read as one blob)
        mask = _object_mask(obj, canvas)
        trial = np.where(mask, len(objects) + 1, label)
        if all(np.count_nonzero(trial == k + 1) >= config.min_visible * areas[k] for k in range(len(objects))):
            label[...] = trial
            areas.append(int(mask.sum()))
            return obj
    return None


def render_scene(rng: np.random.Generator, config: ScenesConfig) -> tuple[Image.Image, list[dict]]:
    """Draw one scene; return the RGB image and its objects (name, shape, color, size, box)."""
    size, canvas = config.size, config.size * SUPERSAMPLE
    background = _background(rng, size)
    wanted = int(rng.integers(config.min_objects, config.max_objects + 1))
    label = np.zeros((canvas, canvas), dtype=np.uint8)
    objects: list[dict] = []
    areas: list[int] = []
    for _ in range(wanted):
        obj = _place(rng, config, objects, label, areas)
        if obj is not None:
            objects.append(obj)
    hi = np.array(_to_image(background).resize((canvas, canvas), Image.NEAREST))
    for k, obj in enumerate(objects):
        hi[label == k + 1] = np.clip(np.asarray(COLORS[obj["color"]]) + rng.uniform(-10, 10, 3), 0, 255)
    pixels = np.asarray(Image.fromarray(hi, "RGB").resize((size, size), Image.BOX), dtype=np.float64)
    image = _to_image(pixels + rng.normal(0, 2.5, pixels.shape))
    return image, [_describe(obj, label == k + 1, size) for k, obj in enumerate(objects)]


def _to_image(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")


def _describe(obj: dict, visible: np.ndarray, size: int) -> dict:
    """Public description of an object: the box (x1/y1 exclusive) of pixels at least half covered by it."""
    coverage = np.asarray(Image.fromarray(visible.astype(np.uint8) * 255).resize((size, size), Image.BOX))
    ys, xs = np.nonzero(coverage >= 128)
    box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    return {"name": f"{obj['size']} {obj['color']} {obj['shape']}", "shape": obj["shape"], "color": obj["color"],
            "size": obj["size"], "box": box}


# ----------------------------------------------------------------------------- captions


def _phrase(rng: np.random.Generator, obj: dict, k: int) -> list[tuple[str, dict]]:
    """``a [size] colour shape`` as (word, tag) pairs."""
    words = ([_pick(rng, SIZE_WORDS[obj["size"]])] if rng.random() < 0.6 else []) + [obj["color"], _pick(rng, SHAPE_WORDS[obj["shape"]])]
    article = "an" if words[0][0] in "aeiou" else "a"
    return [(article, {})] + [(w, {"object": k}) for w in words]


def _words(text: str) -> list[tuple[str, dict]]:
    return [(w, {}) for w in text.split()]


def _relation(a: dict, b: dict) -> str | None:
    """``left``/``above`` when ``a`` is clearly left of / above ``b``; else None."""
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a["box"], b["box"]
    dx, dy = (bx0 + bx1 - ax0 - ax1) / 2, (by0 + by1 - ay0 - ay1) / 2
    if abs(dx) > abs(dy) and dx > max(ax1 - ax0, bx1 - bx0) / 2:
        return "left"
    if abs(dy) > abs(dx) and dy > max(ay1 - ay0, by1 - by0) / 2:
        return "above"
    return None


def _spatial(rng: np.random.Generator, a: list, b: list, relation: str) -> list[tuple[str, dict]]:
    """A sentence placing phrase ``a`` left of / above phrase ``b`` (both true)."""
    if relation == "left":
        options = [a + _words("and to its right") + b, b + _words("and to its left") + a,
                   _words("to the left") + a + _words("and to the right") + b, a + _words("next to") + b]
    else:
        options = [a + _words("above") + b, b + _words("below") + a, _words("at the top") + a + _words("and at the bottom") + b]
    return _pick(rng, options)


def scene_caption(rng: np.random.Generator, objects: list[dict]) -> tuple[str, list[dict]]:
    """One caption naming 1..n of the objects; returns the text and one tag dict per word."""
    n = len(objects)
    if n == 0:
        raise VGSError("scene_caption: a scene needs at least one object")
    named = max(1, n - int(rng.choice(3, p=[0.55, 0.35, 0.10])))
    order = [int(k) for k in rng.permutation(n)[:named]]
    phrases = [_phrase(rng, objects[k], k) for k in order]
    relation = _relation(objects[order[0]], objects[order[1]]) if named == 2 else None
    if relation is not None and rng.random() < 0.4:
        body = _spatial(rng, phrases[0], phrases[1], relation)
    else:
        body = phrases[0]
        for phrase in phrases[1:]:
            body = body + _words(_pick(rng, ("and", "and", "with") if named == 2 else ("and",))) + phrase
    pairs = _words(_pick(rng, PREFIXES)) + body
    return " ".join(w for w, _ in pairs), [tag for _, tag in pairs]


# ----------------------------------------------------------------------------- data set


def _rng(config: ScenesConfig, split: str, index: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([config.seed, SPLIT_CODES[split], index, purpose])


def _png_bytes(image: Image.Image, objects: list[dict]) -> bytes:
    """PNG with fixed options and the objects embedded, so equal scenes give equal bytes."""
    info = PngImagePlugin.PngInfo()
    info.add_text(SCENE_KEY, json.dumps(objects, sort_keys=True))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6, optimize=False, pnginfo=info)
    return buffer.getvalue()


OBJECT_KEYS = ("name", "shape", "color", "size", "box")  # _describe's order: manifests keep it


def _stored_objects(path: Path) -> list[dict] | None:
    """The objects embedded in an already rendered scene, or None when it must be redrawn.

    The PNG stores them with sorted keys; they come back in :func:`_describe`'s key order, so a
    resumed build writes manifests byte-identical to a clean one.
    """
    try:
        with Image.open(path) as image:
            stored = json.loads(image.info[SCENE_KEY])
    except (OSError, KeyError, ValueError, RecursionError):
        return None
    if not isinstance(stored, list) or not all(isinstance(o, dict) and set(o) == set(OBJECT_KEYS) for o in stored):
        return None
    return [{key: obj[key] for key in OBJECT_KEYS} for obj in stored]


def ensure_scene(config: ScenesConfig, split: str, index: int, path: Path) -> list[dict]:
    """Render scene ``index`` of ``split`` to ``path`` atomically unless it is there; return its objects."""
    objects = _stored_objects(path) if path.exists() else None
    if objects is None:
        image, objects = render_scene(_rng(config, split, index, 0), config)
        write_bytes(path, _png_bytes(image, objects))
    return objects


def _check_stamp(config: ScenesConfig, out: Path) -> None:
    """Refuse to mix scenes drawn with different settings in one folder."""
    fixed = {k: v for k, v in asdict(config).items() if k not in ("images", "dev_images", "test_images")}
    fixed = json.loads(json.dumps(fixed))  # tuples -> lists, as read back
    path = out / BUILD_DIR / STAMP_FILE
    if path.exists():
        before = json.loads(path.read_text(encoding="utf-8"))
        if before != fixed:
            changed = sorted(k for k in set(before) | set(fixed) if before.get(k) != fixed.get(k))
            raise VGSError(f"{out}: already holds scenes built with other settings ({', '.join(changed)} differ); "
                           "use a new --out folder")
    else:
        write_json(path, fixed)


def _ensure_scenes(config: ScenesConfig, todo: list[tuple[str, int]], paths: list[Path], workers: int,
                   progress: bool) -> Iterator[list[dict]]:
    """The objects of each ``(split, index)`` in ``todo``, in order, rendering the missing scenes to ``paths``
    on ``workers`` processes (each scene has its own seed, so the pictures do not depend on the split)."""
    arguments = ([config] * len(todo), [split for split, _ in todo], [index for _, index in todo], paths)
    bar = tqdm(total=len(todo), desc="scenes", unit="img", disable=not progress, leave=False)
    parallel = workers > 1 and len(todo) > 64
    with bar, (ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) if parallel
               else nullcontext()) as pool:  # spawn, as for speech: no fork of a process with OpenMP threads
        results = pool.map(ensure_scene, *arguments, chunksize=32) if pool else map(ensure_scene, *arguments)
        for objects in results:
            bar.update(1)
            yield objects


def scenes_jobs(config: ScenesConfig, out: Path, report: BuildReport, progress: bool = False,
                workers: int = 1) -> list[PairJob]:
    """Render the scenes into ``out/images`` (resuming, on ``workers`` processes) and return one TTS job
    per caption."""
    config.validate()
    out = Path(out)
    _check_stamp(config, out)
    pool = voice_pool(config.voices)
    if not any(voice.engine == "espeak" for voice in pool):
        raise VGSError("scenes need word timings for localization, which only espeak gives; the voice pool has no "
                       "espeak voice (see `vgs voices`)")
    counts = {"train": config.images, "dev": config.dev_images, "test": config.test_images}
    todo = [(split, i) for split, n in counts.items() for i in range(n)]
    paths = [out / "images" / f"{split}_{index:05d}.png" for split, index in todo]
    jobs = []
    for (split, index), path, objects in zip(todo, paths, _ensure_scenes(config, todo, paths, workers, progress)):
        image_id = path.stem
        rng = _rng(config, split, index, 1)
        for c in range(config.captions_per_image):
            text, tags = scene_caption(rng, objects)
            item = f"{image_id}#{c}"
            jobs.append(PairJob(id=item, split=split, image_src=path, image_id=image_id, text=text,
                                voice=pick_voice(pool, item, config.seed), objects=objects, word_tags=tags,
                                source=f"scenes:{image_id}#{c}"))
    return jobs


def build_scenes(config: ScenesConfig, out: str | Path, workers: int = 2,
                 progress: bool = True) -> tuple[dict[str, int], BuildReport]:
    """Render, speak and write the scenes data set; return (rows per split, report)."""
    report = BuildReport()
    jobs = scenes_jobs(config, Path(out), report, progress=progress, workers=workers)
    written = build_dataset(out, jobs, report, workers=workers, progress=progress)
    return written, report
