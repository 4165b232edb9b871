"""Hugging Face ``datasets`` folders: export a vgs data set, import one back (offline).

Export writes ``DatasetDict.save_to_disk(OUT)`` with one split per manifest and the columns::

    id, image_id, speaker, text, duration: strings / float
    image: Image()                        the image file's bytes (and its original name)
    audio: Audio(sampling_rate=16000)     the audio file's bytes (and its original name)
    words, objects: JSON strings          ("" when absent)

Import reads such a folder with ``load_from_disk`` and writes the vgs layout (``<split>.jsonl``,
``audio/``, ``images/``).  Media bytes are copied as they are (no decoding, so no audio codec
library is needed) and every row is validated like any manifest row.  Needs the ``datasets``
package (``pip install datasets``); nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import InputError, VGSError
from ..io import write_bytes, write_jsonl
from .manifest import SPLITS, find_manifest, read_manifest, validate_row

JSON_FIELDS = ("words", "objects")


def _datasets():  # noqa: ANN202
    try:
        import datasets
    except ImportError as exc:
        raise VGSError("Hugging Face export/import needs the 'datasets' package: pip install datasets") from exc
    from ..progress import interactive

    if not interactive():
        datasets.disable_progress_bars()  # its bars would fill a log with carriage returns
    return datasets


def _features(datasets: Any) -> Any:
    """Media as plain ``{bytes, path}`` structs; cast to ``Image``/``Audio`` afterwards at the Arrow level
    (``Audio.encode_example`` would need torchcodec even for ready-made bytes)."""
    media = {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}
    return datasets.Features({
        "id": datasets.Value("string"), "image_id": datasets.Value("string"), "speaker": datasets.Value("string"),
        "text": datasets.Value("string"), "duration": datasets.Value("float64"), "image": dict(media),
        "audio": dict(media), "words": datasets.Value("string"), "objects": datasets.Value("string")})


def _split_dataset(datasets: Any, data_dir: Path, split: str) -> Any:
    plain = datasets.Dataset.from_dict(_split_columns(data_dir, split), features=_features(datasets))
    return plain.cast_column("image", datasets.Image(decode=False)).cast_column(
        "audio", datasets.Audio(sampling_rate=16000, decode=False))


def _split_columns(data_dir: Path, split: str) -> dict[str, list]:
    manifest = read_manifest(find_manifest(data_dir, split), strict=False)
    columns: dict[str, list] = {k: [] for k in ("id", "image_id", "speaker", "text", "duration", "image", "audio", *JSON_FIELDS)}
    for row in manifest.rows:
        image, audio = manifest.image_path(row), manifest.audio_path(row)
        columns["id"].append(row["id"])
        columns["image_id"].append(row["image_id"])
        columns["speaker"].append(row["speaker"])
        columns["text"].append(row.get("text") or "")
        columns["duration"].append(float(row.get("duration") or 0.0))
        columns["image"].append({"bytes": image.read_bytes(), "path": Path(row["image"]).name})
        columns["audio"].append({"bytes": audio.read_bytes(), "path": Path(row["audio"]).name})
        for key in JSON_FIELDS:
            columns[key].append(json.dumps(row[key]) if key in row else "")
    return columns


def export_hf(data_dir: str | Path, out: str | Path) -> dict[str, int]:
    """Write the data set at ``data_dir`` as a ``DatasetDict`` folder at ``out``. Returns rows per split."""
    datasets = _datasets()
    data_dir, out = Path(data_dir), Path(out)
    splits = [s for s in SPLITS if (data_dir / f"{s}.jsonl").is_file()]
    if not splits:
        raise VGSError(f"{data_dir}: no manifests (expected some of {', '.join(f'{s}.jsonl' for s in SPLITS)})")
    parts = {s: _split_dataset(datasets, data_dir, s) for s in splits}
    datasets.DatasetDict(parts).save_to_disk(str(out))
    return {s: len(d) for s, d in parts.items()}


def _media_name(item: dict | None, fallback: str, where: str, field: str) -> tuple[str, bytes]:
    if not isinstance(item, dict) or not isinstance(item.get("bytes"), (bytes, bytearray)) or not item["bytes"]:
        raise InputError(where, "expected the file's bytes", field=field)
    name = Path(str(item.get("path") or "")).name
    name = name if name and name not in (".", "..") else fallback
    return name, bytes(item["bytes"])


def _row(example: dict, where: str) -> tuple[dict, tuple[str, bytes], tuple[str, bytes]]:
    """A manifest row and the (name, bytes) of its image and audio from one example."""
    row: dict[str, Any] = {k: example.get(k) for k in ("id", "image_id", "speaker")}
    if example.get("text"):
        row["text"] = example["text"]
    if example.get("duration"):
        row["duration"] = float(example["duration"])
    for key in JSON_FIELDS:
        if example.get(key):
            try:
                row[key] = json.loads(example[key])
            except (ValueError, RecursionError) as exc:
                raise InputError(where, f"not valid JSON ({exc})", field=key) from exc
    image = _media_name(example.get("image"), f"{row['image_id']}.png", where, "image")
    audio = _media_name(example.get("audio"), f"{row['id']}.wav".replace("#", "_"), where, "audio")
    return row, image, audio


def _unique(relative: str, owner: str, owners: dict[str, str]) -> str:
    """``relative``, or a name prefixed with a counter when another image/caption already owns it."""
    candidate, k = relative, 0
    while owners.setdefault(candidate, owner) != owner:
        k += 1
        folder, _, name = relative.partition("/")
        candidate = f"{folder}/{k}_{name}"
    return candidate


def import_hf(folder: str | Path, out: str | Path) -> dict[str, int]:
    """Write the vgs layout at ``out`` from a ``DatasetDict`` folder saved by :func:`export_hf`. Returns rows per split."""
    datasets = _datasets()
    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise VGSError(f"{folder}: Hugging Face data set folder not found")
    try:
        loaded = datasets.load_from_disk(str(folder))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise VGSError(f"{folder}: not a folder written by save_to_disk ({exc})") from exc
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    written: dict[str, int] = {}
    owners: dict[str, str] = {}  # file in images/ or audio/ -> the image_id or caption id it holds
    for split, part in loaded.items():
        if split not in SPLITS:
            raise VGSError(f"{folder}: split {split!r}; expected some of {', '.join(SPLITS)}")
        part = part.cast_column("image", datasets.Image(decode=False)).cast_column("audio", datasets.Audio(decode=False))
        rows = []
        for number, example in enumerate(part, start=1):
            where = f"{folder}:{split}"
            row, (image_name, image_bytes), (audio_name, audio_bytes) = _row(example, where)
            row["image"] = _unique(f"images/{image_name}", row["image_id"], owners)
            row["audio"] = _unique(f"audio/{audio_name}", f"caption:{row['id']}", owners)
            validate_row(row, where, number)
            if not (out / row["image"]).exists():
                write_bytes(out / row["image"], image_bytes)
            write_bytes(out / row["audio"], audio_bytes)
            rows.append({k: row[k] for k in ("id", "image", "image_id", "audio", "speaker", "duration", "text", "words",
                                              "objects") if k in row})
        write_jsonl(out / f"{split}.jsonl", rows)
        written[split] = len(rows)
    return written


__all__ = ["export_hf", "import_hf"]
