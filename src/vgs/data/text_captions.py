"""Reading caption text files line by line, reporting every bad line with its number."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import InputError, VGSError


@dataclass
class CaptionLine:
    """One caption from a text file: the image's file name, its index, the text, where it came from."""

    image: str
    index: int
    text: str
    line: int


def iter_lines(path: Path) -> Iterator[tuple[int, str | None]]:
    """Yield ``(line_number, text)``; text is None for a line that is not UTF-8."""
    if not path.is_file():
        raise VGSError(f"{path}: file not found")
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            yield number, raw.decode("utf-8").lstrip("\ufeff")
        except UnicodeDecodeError:
            yield number, None


def image_name_problem(name: str) -> str | None:
    """Why ``name`` is not a plain image file name (caption files name images in one folder), else None."""
    if "/" in name or "\\" in name or name in (".", "..") or "\0" in name or (len(name) > 1 and name[1] == ":"):
        return f"image {name[:60]!r} is not a plain file name (no folders, no absolute paths)"
    return None


def clean_caption(text: str) -> str:
    return " ".join(text.replace("\t", " ").split())


def parse_token_file(path: Path, errors: list[InputError]) -> list[CaptionLine]:
    """Flickr8k.token.txt: ``<image>#<n><TAB><caption>`` per line."""
    captions = []
    for number, text in iter_lines(path):
        if text is None:
            errors.append(InputError(path, "line is not valid UTF-8", line=number))
            continue
        if not text.strip():
            continue
        key, tab, caption = text.partition("\t")
        image, hash_, index = key.strip().rpartition("#")
        if not tab or not hash_ or not image or not index.isdigit():
            errors.append(InputError(path, f"unparsable line {text[:60]!r}; expected '<image>#<n><TAB><caption>'", line=number))
            continue
        caption = clean_caption(caption)
        if not caption:
            errors.append(InputError(path, f"empty caption for {key.strip()}", line=number))
            continue
        if image_name_problem(image):
            errors.append(InputError(path, image_name_problem(image), line=number))
            continue
        captions.append(CaptionLine(image, int(index), caption, number))
    return captions


def parse_csv_file(path: Path, errors: list[InputError]) -> list[CaptionLine]:
    """Kaggle captions.txt: a CSV with header ``image,caption``; indices by order per image."""
    captions = []
    counts: dict[str, int] = {}
    header_seen = False
    for number, text in iter_lines(path):
        if text is None:
            errors.append(InputError(path, "line is not valid UTF-8", line=number))
            continue
        if not text.strip():
            continue
        try:
            fields = next(csv.reader(io.StringIO(text)))
        except (csv.Error, StopIteration):
            fields = []
        if not header_seen:
            header_seen = True
            if [f.strip().lower() for f in fields[:2]] == ["image", "caption"]:
                continue
        if len(fields) < 2 or not fields[0].strip():
            errors.append(InputError(path, f"unparsable line {text[:60]!r}; expected 'image,caption'", line=number))
            continue
        image, caption = fields[0].strip(), clean_caption(",".join(fields[1:]))
        if not caption:
            errors.append(InputError(path, f"empty caption for {image}", line=number))
            continue
        if image_name_problem(image):
            errors.append(InputError(path, image_name_problem(image), line=number))
            continue
        index = counts.get(image, 0)
        counts[image] = index + 1
        captions.append(CaptionLine(image, index, caption, number))
    return captions


def parse_captions(path: str | Path, errors: list[InputError]) -> list[CaptionLine]:
    """Parse either format, chosen by content: a TAB before the first comma means token file."""
    path = Path(path)
    first = next((t for _, t in iter_lines(path) if t and t.strip()), "")
    if "\t" in first:
        return parse_token_file(path, errors)
    if "," in first:
        return parse_csv_file(path, errors)
    raise VGSError(f"{path}: unknown caption format; expected Flickr8k.token.txt ('<image>#<n><TAB><caption>') "
                   "or Kaggle captions.txt ('image,caption')")


def read_list(path: Path) -> list[str]:
    """A split list: one image file name per line."""
    return [t.strip() for _, t in iter_lines(path) if t and t.strip()]


SPLIT_LIST_NAMES = {"train": "Flickr_8k.trainImages.txt", "dev": "Flickr_8k.devImages.txt", "test": "Flickr_8k.testImages.txt"}


def read_split_lists(folders: list[Path]) -> dict[str, str] | None:
    """Image file name -> split, from the first folder holding any of :data:`SPLIT_LIST_NAMES` (None: no folder does)."""
    for folder in folders:
        lists = {split: folder / name for split, name in SPLIT_LIST_NAMES.items() if (folder / name).is_file()}
        if lists:
            mapping: dict[str, str] = {}
            for split, path in lists.items():
                for name in read_list(path):
                    mapping.setdefault(name, split)
            return mapping
    return None
