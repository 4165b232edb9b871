"""The on-disk data set format: one JSON Lines manifest per split.

A data set is a folder holding ``train.jsonl``, ``dev.jsonl`` and/or ``test.jsonl``,
its audio files and its images (copied or linked).  Each manifest line is one
image/caption pair::

    {"id": "1000268201_693b08cb0e#0",          # unique within the data set
     "image": "images/1000268201_693b08cb0e.jpg",  # relative to the manifest
     "image_id": "1000268201_693b08cb0e",     # shared by the captions of one image
     "audio": "audio/1000268201_693b08cb0e_0.wav", # relative to the manifest
     "speaker": "espeak:en-us+f2:r175:p55",   # voice or speaker
     "text": "A child in a pink dress ...",    # optional
     "words": [{"word": "A", "start": 0.05, "end": 0.12}, ...],  # optional, seconds
     "objects": [{"name": "red circle", "box": [x0, y0, x1, y1]}, ...]}  # optional

Boxes are in pixels of the stored image, ``x1``/``y1`` exclusive.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..errors import InputError, VGSError
from ..io import write_jsonl

SPLITS = ("train", "dev", "test")
REQUIRED = {"id": str, "image": str, "image_id": str, "audio": str, "speaker": str}
OPTIONAL = {"text": (str, type(None)), "words": (list, type(None)), "objects": (list, type(None))}
KNOWN_FIELDS = set(REQUIRED) | set(OPTIONAL) | {"duration", "caption_id", "source"}
# A linked data set (the default build) holds symlinks to the source's files: such a link may point
# outside the data folder, but only at a file of its kind.  Symlinked folders must stay inside.
LINK_SUFFIXES = {
    "image": {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"},
    "audio": {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au"},
}


@dataclass
class Manifest:
    """One split's rows, with paths resolved against the manifest's folder."""

    path: Path
    rows: list[dict[str, Any]]
    problems: list[str] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.path.parent

    def audio_path(self, row: dict) -> Path:
        return self.root / row["audio"]

    def image_path(self, row: dict) -> Path:
        return self.root / row["image"]

    def __len__(self) -> int:
        return len(self.rows)

    def image_ids(self) -> list[str]:
        """Distinct image ids in first-seen order."""
        return list(dict.fromkeys(row["image_id"] for row in self.rows))


def _number(value: Any) -> bool:
    """A finite JSON number: not a bool, NaN or Infinity (Python's json reads those)."""
    return isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and math.isfinite(value)


def validate_words(words: Any, source: str | Path, line: int | None = None) -> list[dict[str, Any]]:
    """Check word times: a list of ``{"word": str, "start": s, "end": e}`` with ``0 <= start <= end`` seconds;
    raise :class:`InputError` naming the file (and line) and the first bad word."""
    if not isinstance(words, list):
        raise InputError(source, f"expected a list of word times, got {type(words).__name__}", line=line, field="words")
    for index, word in enumerate(words):
        if not (isinstance(word, dict) and isinstance(word.get("word"), str)
                and all(_number(word.get(k)) for k in ("start", "end"))
                and 0 <= word["start"] <= word["end"]):
            raise InputError(source, f"words[{index}]: expected {{'word': str, 'start': s, 'end': e}} with 0 <= start <= end", line=line, field="words")
    return words


def validate_row(row: Any, source: str | Path, line: int) -> dict[str, Any]:
    """Check one manifest row; raise :class:`InputError` naming file, line and field."""
    if not isinstance(row, dict):
        raise InputError(source, f"expected a JSON object, got {type(row).__name__}", line=line)
    for key, kind in REQUIRED.items():
        if key not in row:
            raise InputError(source, "missing required field", line=line, field=key)
        if not isinstance(row[key], kind) or not row[key]:
            raise InputError(source, f"expected a non-empty string, got {row[key]!r:.60}", line=line, field=key)
    for key, kinds in OPTIONAL.items():
        if key in row and not isinstance(row[key], kinds):
            raise InputError(source, f"expected {' or '.join(k.__name__ for k in kinds)}, got {type(row[key]).__name__}", line=line, field=key)
    unknown = set(row) - KNOWN_FIELDS
    if unknown:
        raise InputError(source, f"unknown field(s) {sorted(unknown)}; expected {sorted(KNOWN_FIELDS)}", line=line)
    validate_words(row.get("words") or [], source, line)
    for index, obj in enumerate(row.get("objects") or []):
        box = obj.get("box") if isinstance(obj, dict) else None
        if not (isinstance(obj, dict) and isinstance(obj.get("name"), str)
                and isinstance(box, list) and len(box) == 4 and all(_number(v) for v in box)):
            raise InputError(source, f"objects[{index}]: expected {{'name': str, 'box': [x0, y0, x1, y1]}}", line=line, field="objects")
    for key in ("image", "audio"):
        if Path(row[key]).is_absolute() or ".." in Path(row[key]).parts:
            raise InputError(source, "must be a path relative to the manifest, inside the data set", line=line, field=key)
    return row


def check_row_paths(row: dict[str, Any], root: Path, source: str | Path, line: int,
                    inside: dict[Path, bool] | None = None) -> None:
    """Raise InputError when a row's file escapes the data folder ``root`` (already resolved) by a symlink.

    The file's folder must resolve inside ``root``; the file itself may be a symlink to a file outside
    (linked builds) only when the target has an image (``image``) or audio (``audio``) suffix.
    ``inside`` caches the folder checks (a manifest's rows share a few folders).
    """
    inside = {} if inside is None else inside
    for key in ("image", "audio"):
        path = root / row[key]
        if path.parent not in inside:
            inside[path.parent] = path.parent.resolve().is_relative_to(root)
        if not inside[path.parent]:
            raise InputError(source, f"{row[key]!r} lies in a folder linked to outside the data set", line=line, field=key)
        if path.is_symlink():
            target = path.resolve()
            if not target.is_relative_to(root) and target.suffix.lower() not in LINK_SUFFIXES[key]:
                raise InputError(source, f"{row[key]!r} is a symlink to {target.name!r} outside the data set, "
                                 f"not an {key} file", line=line, field=key)


def read_manifest(path: str | Path, strict: bool = True) -> Manifest:
    """Read and validate a manifest.

    With ``strict`` a bad line raises :class:`InputError`; otherwise bad lines and
    duplicate ids are skipped and described in ``Manifest.problems``.
    """
    path = Path(path)
    if not path.is_file():
        raise VGSError(f"{path}: manifest not found")
    rows: list[dict] = []
    problems: list[str] = []
    seen: set[str] = set()
    root, inside = path.parent.resolve(), {}
    # Split the bytes on \n / \r only: str.splitlines() would also split on U+2028, U+0085, ... which
    # json.dumps(ensure_ascii=False) leaves raw inside strings.  Decoding per line names the bad line.
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})", line=number) from exc
            if number == 1:
                text = text.removeprefix("\ufeff")  # a UTF-8 BOM, as caption files accept
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InputError(path, f"not valid JSON ({exc.msg} at column {exc.colno})", line=number) from exc
            except (ValueError, RecursionError) as exc:  # e.g. a 5000-digit number, nesting 1000s deep
                raise InputError(path, f"not usable JSON ({str(exc)[:80]})", line=number) from exc
            validate_row(row, path, number)
            check_row_paths(row, root, path, number, inside)
            if row["id"] in seen:
                raise InputError(path, f"duplicate id {row['id']!r}", line=number, field="id")
        except InputError as exc:
            if strict:
                raise
            problems.append(str(exc))
            continue
        seen.add(row["id"])
        rows.append(row)
    return Manifest(path=path, rows=rows, problems=problems)


def write_manifest(path: str | Path, rows: Iterable[dict]) -> None:
    """Write rows atomically (temporary file, then rename)."""
    write_jsonl(path, rows)


def find_manifest(data_dir: str | Path, split: str) -> Path:
    """``DIR/<split>.jsonl``, with a clear error listing the splits that exist."""
    data_dir = Path(data_dir)
    if data_dir.suffix == ".jsonl":
        return data_dir
    path = data_dir / f"{split}.jsonl"
    if not path.is_file():
        have = sorted(p.stem for p in data_dir.glob("*.jsonl")) if data_dir.is_dir() else []
        raise VGSError(f"{path}: no {split!r} manifest; {'found ' + ', '.join(have) if have else 'no manifests in ' + str(data_dir)}"
                       + ("" if data_dir.is_dir() else " (folder does not exist)"))
    return path


def load_split(data_dir: str | Path, split: str, strict: bool = True) -> Manifest:
    return read_manifest(find_manifest(data_dir, split), strict=strict)
