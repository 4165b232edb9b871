"""``vgs prepare facc|places|spokencoco``: import real spoken-caption corpora.

Each importer reads a corpus in its published layout and turns it into
:class:`~vgs.data.build.PairJob` lists with ``audio_src`` set; :func:`~vgs.data.build.build_dataset`
then links or converts the audio (to 16 kHz mono PCM_16), links the images, journals
progress and writes the manifests.  Problems found while parsing (a bad line, a missing
field, text that is empty or not UTF-8, an unknown image, a missing, empty or truncated
wav) go into the :class:`~vgs.data.build.BuildReport` with the file and line (or, for
JSON, the entry index); they never stop the import.

* **facc** -- Flickr Audio Caption Corpus (Harwath & Glass 2015): ``flickr_audio/``
  with ``wavs/``, ``wav2capt.txt`` and ``wav2spk.txt``, plus Flickr8k images and split lists.
* **places** -- the DAVEnet Places audio caption JSON (``train_2020.json``, ``val.json``).
* **spokencoco** -- SpokenCOCO (Hsu et al. 2021): ``SpokenCOCO_{train,val}.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from ..audio import audio_problem
from ..errors import InputError, VGSError
from .build import BuildReport, PairJob, safe_name
from .text_captions import SPLIT_LIST_NAMES, clean_caption, iter_lines, parse_captions, read_split_lists

UNKNOWN_SPEAKER = "unknown"


# --------------------------------------------------------------------------- shared helpers

def _skip(report: BuildReport, path: Path, reason: str, line: int | None = None,
          field: str | None = None, item: str | None = None) -> None:
    report.skip_error(InputError(str(path), reason, line=line, field=field), item=item)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:  # lone surrogates: raw non-UTF-8 bytes or a bad \\u escape
        return False


def _relative(text: str) -> PurePosixPath | None:
    """A path from a corpus file, if it stays inside its base folder."""
    path = PurePosixPath(text.replace("\\", "/"))
    return None if path.is_absolute() or ".." in path.parts or not path.parts else path


def _require_jobs(jobs: list[PairJob], report: BuildReport, what: str) -> list[PairJob]:
    if not jobs:
        first = "; ".join(f"{e['source']}{':' + str(e['line']) if e['line'] else ''}: {e['reason']}" for e in report.skipped[:3])
        raise VGSError(f"{what}: no usable items" + (f" ({first})" if first else ""))
    return jobs


class _Files:
    """Existence checks with a cache (many captions share one image)."""

    def __init__(self) -> None:
        self.seen: dict[Path, bool] = {}

    def exists(self, path: Path) -> bool:
        if path not in self.seen:
            self.seen[path] = path.is_file()
        return self.seen[path]


# --------------------------------------------------------------------------- facc

@dataclass
class FaccSource:
    """Where the Flickr Audio Caption Corpus, the Flickr8k images and split lists are."""

    audio_root: Path  # the flickr_audio/ folder (wavs/, wav2capt.txt, wav2spk.txt), or its parent
    images: Path  # the Flickr8k image folder
    split_lists: Path | None = None  # folder with Flickr_8k.*Images.txt; default: beside audio_root/images/captions
    captions: Path | None = None  # Flickr8k.token.txt (or captions.txt), to fill `text`


def facc_root(path: Path) -> Path:
    """The folder holding ``wav2capt.txt``: ``path`` itself or ``path/flickr_audio``."""
    for folder in (path, path / "flickr_audio"):
        if (folder / "wav2capt.txt").is_file():
            return folder
    raise VGSError(f"{path}: no wav2capt.txt; expected the flickr_audio/ folder (wavs/, wav2capt.txt, wav2spk.txt)")


def read_speakers(path: Path, report: BuildReport) -> dict[str, str]:
    """``wav2spk.txt``: wav file name -> speaker id (empty when the file is absent)."""
    speakers: dict[str, str] = {}
    if not path.is_file():
        return speakers
    for number, text in iter_lines(path):
        if text is None:
            _skip(report, path, "line is not valid UTF-8", number)
        elif text.strip():
            fields = text.split()
            if len(fields) != 2 or not fields[1].isdigit():
                _skip(report, path, f"unparsable line {text[:60]!r}; expected '<wav> <speaker id>'", number)
            else:
                speakers.setdefault(fields[0], fields[1])
    return speakers


def read_wav2capt(path: Path, report: BuildReport) -> list[tuple[int, str, str, int]]:
    """``wav2capt.txt``: ``(line, wav, image, caption index)`` per line."""
    rows = []
    for number, text in iter_lines(path):
        if text is None:
            _skip(report, path, "line is not valid UTF-8", number)
            continue
        if not text.strip():
            continue
        fields = text.split()
        ok = (len(fields) == 3 and fields[2][:1] == "#" and fields[2][1:].isdigit()
              and all(PurePosixPath(f).name == f and f not in (".", "..") for f in fields[:2]))
        if not ok:
            _skip(report, path, f"unparsable line {text[:60]!r}; expected '<wav> <image> #<n>'", number)
            continue
        rows.append((number, fields[0], fields[1], int(fields[2][1:])))
    return rows


def _caption_texts(path: Path | None, report: BuildReport) -> dict[tuple[str, int], str]:
    if path is None:
        return {}
    errors: list[InputError] = []
    captions = parse_captions(path, errors)
    for error in errors:
        report.skip_error(error)
    return {(c.image, c.index): c.text for c in captions}


def facc_jobs(source: FaccSource, report: BuildReport) -> list[PairJob]:
    """Parse the FACC into real-audio jobs; parse problems go to ``report``."""
    root = facc_root(source.audio_root)
    if not source.images.is_dir():
        raise VGSError(f"{source.images}: image folder not found")
    folders = [source.split_lists] if source.split_lists else list(dict.fromkeys(
        ([source.captions.parent] if source.captions else []) + [root.parent, source.images.parent, root]))
    splits = read_split_lists(folders)
    if splits is None:
        raise VGSError(f"none of {', '.join(SPLIT_LIST_NAMES.values())} found in {', '.join(map(str, folders))}; "
                       "give their folder with --split-lists")
    speakers = read_speakers(root / "wav2spk.txt", report)
    texts = _caption_texts(source.captions, report)
    wav2capt = root / "wav2capt.txt"
    files = _Files()
    jobs = []
    for line, wav, image, index in read_wav2capt(wav2capt, report):
        split = splits.get(image)
        if split is None:
            continue  # not in any split list
        stem = Path(image).stem
        item = f"{stem}#{index}"
        if not files.exists(source.images / image):
            _skip(report, wav2capt, f"image {image} not found in {source.images}", line, item=item)
            continue
        problem = audio_problem(root / "wavs" / wav)
        if problem:
            _skip(report, wav2capt, f"wavs/{wav}: {problem}", line, item=item)
            continue
        jobs.append(PairJob(
            id=item, split=split, image_src=source.images / image, image_id=stem, text=texts.get((image, index)),
            audio_src=root / "wavs" / wav, speaker=f"facc:{speakers.get(wav, UNKNOWN_SPEAKER)}", source=f"{wav2capt}:{line}",
        ))
    return _require_jobs(jobs, report, str(wav2capt))


# --------------------------------------------------------------------------- JSON corpora

def load_json(path: Path) -> Any:
    """Parse a JSON file; raise :class:`InputError` with the line when it is not valid JSON.

    Bytes that are not UTF-8 inside strings are kept as lone surrogates, so only the
    entries holding them are skipped (see :func:`_strings`), not the whole file.
    """
    text = path.read_bytes().decode("utf-8", errors="surrogateescape").lstrip("\ufeff")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(str(path), f"not valid JSON ({exc.msg} at column {exc.colno})", line=exc.lineno) from exc
    except RecursionError as exc:
        raise InputError(str(path), "not valid JSON (nested too deeply)") from exc


def _load_data(path: Path, report: BuildReport) -> tuple[dict, list] | None:
    """The document and its ``data`` list; report and return None when unusable."""
    try:
        doc = load_json(path)
    except InputError as exc:
        report.skip_error(exc)
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        _skip(report, path, "expected a JSON object with a 'data' list", field="data")
        return None
    return doc, doc["data"]


def _strings(entry: Any, where: str, path: Path, report: BuildReport,
             required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, str | None] | None:
    """The entry's string fields; report and return None when one is missing, empty or not UTF-8."""
    if not isinstance(entry, dict):
        _skip(report, path, f"{where}: expected a JSON object, got {type(entry).__name__}")
        return None
    values: dict[str, str | None] = {}
    uttid = entry.get("uttid")
    item = uttid if isinstance(uttid, str) and uttid and _is_utf8(uttid) else None
    for key in required + optional:
        value = entry.get(key)
        if key in optional and (value is None or not isinstance(value, str)):
            values[key] = None
            continue
        if not isinstance(value, str) or not value.strip():
            _skip(report, path, f"{where}: missing, empty or not a string", field=key, item=item)
            return None
        if not _is_utf8(value):
            _skip(report, path, f"{where}: text is not valid UTF-8", field=key, item=item)
            return None
        values[key] = value.strip()
    return values


def _base_path(doc: dict, key: str, override: Path | None, path: Path, flag: str, report: BuildReport) -> Path | None:
    """An override, else ``doc[key]`` (absolute, or relative to the JSON file's folder)."""
    if override is not None:
        return override
    value = doc.get(key)
    if not isinstance(value, str) or not value.strip():
        _skip(report, path, f"no {key!r} in the file and no {flag} given", field=key)
        return None
    base = Path(value.strip())
    return base if base.is_absolute() else path.parent / base


def _check_files(json_files: dict[str, Path]) -> list[tuple[str, Path]]:
    if not json_files:
        raise VGSError("no JSON files given")
    for split, path in json_files.items():
        if safe_name(split) != split:
            raise VGSError(f"{split!r}: a split name must be a plain word such as train, dev or test")
        if not Path(path).is_file():
            raise VGSError(f"{path}: JSON file not found (split {split!r})")
    return [(split, Path(path)) for split, path in json_files.items()]


def _media(rel_wav: str, rel_image: str, audio_base: Path, image_base: Path, where: str, path: Path,
           report: BuildReport, files: _Files, item: str) -> tuple[Path, PurePosixPath] | None:
    """Check an entry's wav and image; return (audio file, relative image path) or report."""
    wav, image = _relative(rel_wav), _relative(rel_image)
    for key, value, rel in (("wav", rel_wav, wav), ("image", rel_image, image)):
        if rel is None:
            _skip(report, path, f"{where}: {value!r} must be a relative path inside its base folder", field=key, item=item)
            return None
    assert wav is not None and image is not None
    if not files.exists(image_base / image):
        _skip(report, path, f"{where}: image {image} not found in {image_base}", field="image", item=item)
        return None
    problem = audio_problem(audio_base / wav)
    if problem:
        _skip(report, path, f"{where}: {wav}: {problem}", field="wav", item=item)
        return None
    return audio_base / wav, image


# --------------------------------------------------------------------------- places

@dataclass
class PlacesSource:
    """DAVEnet Places audio caption JSON files (split -> file), with optional base-path overrides."""

    json_files: dict[str, Path]
    images: Path | None = None  # overrides each file's image_base_path
    audio_root: Path | None = None  # overrides each file's audio_base_path


def places_jobs(source: PlacesSource, report: BuildReport) -> list[PairJob]:
    """Parse Places audio caption JSON into real-audio jobs; problems go to ``report``."""
    files = _Files()
    jobs = []
    for split, path in _check_files(source.json_files):
        loaded = _load_data(path, report)
        if loaded is None:
            continue
        doc, data = loaded
        image_base = _base_path(doc, "image_base_path", source.images, path, "--images", report)
        audio_base = _base_path(doc, "audio_base_path", source.audio_root, path, "--audio-root", report)
        if image_base is None or audio_base is None:
            continue
        for index, entry in enumerate(data):
            where = f"data[{index}]"
            values = _strings(entry, where, path, report, ("wav", "image"), ("uttid", "speaker", "asr_text"))
            if values is None:
                continue
            item = values["uttid"] or PurePosixPath(str(values["wav"])).stem
            media = _media(str(values["wav"]), str(values["image"]), audio_base, image_base, where, path, report, files, item)
            if media is None:
                continue
            audio_src, image = media
            jobs.append(PairJob(
                id=item, split=split, image_src=image_base / image, image_id=str(image.with_suffix("")),
                text=clean_caption(values["asr_text"] or "") or None,
                audio_src=audio_src, speaker=f"places:{values['speaker'] or UNKNOWN_SPEAKER}",
                source=f"{path}:{where}", image_name=str(image),
            ))
    return _require_jobs(jobs, report, ", ".join(map(str, source.json_files.values())))


# --------------------------------------------------------------------------- spokencoco

@dataclass
class SpokenCocoSource:
    """SpokenCOCO JSON files (split -> file), the SpokenCOCO root (wav paths) and the COCO images root."""

    json_files: dict[str, Path]
    audio_root: Path  # the SpokenCOCO folder holding wavs/
    images: Path  # the COCO root holding train2014/ and val2014/


def spokencoco_jobs(source: SpokenCocoSource, report: BuildReport) -> list[PairJob]:
    """Parse SpokenCOCO JSON into real-audio jobs; problems go to ``report``."""
    for folder, what in ((source.audio_root, "SpokenCOCO audio root"), (source.images, "COCO image root")):
        if not Path(folder).is_dir():
            raise VGSError(f"{folder}: {what} not found")
    files = _Files()
    jobs = []
    for split, path in _check_files(source.json_files):
        loaded = _load_data(path, report)
        for index, entry in enumerate(loaded[1] if loaded else []):
            image = _strings(entry, f"data[{index}]", path, report, ("image",))
            if image is None:
                continue
            captions = entry.get("captions")
            if not isinstance(captions, list):
                _skip(report, path, f"data[{index}]: expected a list of captions", field="captions")
                continue
            for number, caption in enumerate(captions):
                where = f"data[{index}].captions[{number}]"
                job = _spokencoco_job(caption, where, split, path, str(image["image"]), source, report, files)
                if job is not None:
                    jobs.append(job)
    return _require_jobs(jobs, report, ", ".join(map(str, source.json_files.values())))


def _spokencoco_job(caption: Any, where: str, split: str, path: Path, image_rel: str, source: SpokenCocoSource,
                    report: BuildReport, files: _Files) -> PairJob | None:
    values = _strings(caption, where, path, report, ("wav", "text"), ("uttid", "speaker"))
    if values is None:
        return None
    text = clean_caption(str(values["text"])).lower()
    item = values["uttid"] or PurePosixPath(str(values["wav"])).stem
    media = _media(str(values["wav"]), image_rel, Path(source.audio_root), Path(source.images), where, path, report, files, item)
    if media is None:
        return None
    audio_src, image = media
    return PairJob(
        id=item, split=split, image_src=Path(source.images) / image, image_id=image.stem, text=text,
        audio_src=audio_src, speaker=f"spokencoco:{values['speaker'] or UNKNOWN_SPEAKER}", source=f"{path}:{where}",
    )


IMPORTERS: dict[str, tuple[type, Callable[[Any, BuildReport], list[PairJob]]]] = {
    "facc": (FaccSource, facc_jobs),
    "places": (PlacesSource, places_jobs),
    "spokencoco": (SpokenCocoSource, spokencoco_jobs),
}
