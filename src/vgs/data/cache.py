"""Where a cache lives: a data set's on-disk caches, under ``DATA/cache/``.

* audio features (``audio-<kind>-<hash>/``): every utterance of a split once, as one
  ``frames x bins`` float16 array plus offsets (:class:`AudioFeatureStore`), with the
  settings and the manifest's checksum; rebuilt when either changes, resumable chunk by chunk.
  Utterances whose audio cannot be read are listed in ``<split>.problems.json``.
* image trunk outputs (``image-<hash>/``): a frozen trunk's ``N x C x H x W`` outputs for
  each distinct image of a split, keyed by the trunk's identity and the pixel settings.

The features themselves come from the front end in :mod:`vgs.features`.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import InputError, VGSError
from .. import whisper
from ..features import AudioFeatureConfig, features_from_file
from ..images import ImageConfig, load_image_tensor
from ..io import load_npy, save_npy, sha256_file, stable_hash, write_json
from ..progress import tqdm
from .manifest import Manifest

if TYPE_CHECKING:
    from ..models.image import ImageEncoder

CACHE_DIR = "cache"


class AudioFeatureStore:
    """Cached features of one split: ``store[i]`` is ``T_i x F`` (float16, memory-mapped)."""

    def __init__(self, folder: Path, split: str):
        self.frames = load_npy(folder / f"{split}.frames.npy", mmap=True)
        self.offsets = load_npy(folder / f"{split}.offsets.npy")
        self.ids: list[str] = json.loads((folder / f"{split}.ids.json").read_text())
        self.index = {item: i for i, item in enumerate(self.ids)}
        if len(self.offsets) != len(self.ids) + 1:
            raise VGSError(f"{folder}: feature cache for {split!r} is inconsistent; delete it to rebuild")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.frames[self.offsets[i]: self.offsets[i + 1]])

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def get(self, item_id: str) -> np.ndarray:
        return self[self.index[item_id]]


def cache_folder(data_dir: Path, config: AudioFeatureConfig) -> Path:
    return Path(data_dir) / CACHE_DIR / f"audio-{config.kind}-{stable_hash(asdict(config), 10)}"


def _as_json(settings: dict) -> dict:
    """``settings`` as it reads back from JSON (tuples become lists), so it compares equal to a saved copy."""
    return json.loads(json.dumps(settings))


def _worker_init() -> None:
    torch.set_num_threads(1)  # small STFTs: threads only add overhead in a worker process


def _featurize_chunk(args: tuple[list[str], dict]) -> tuple[list[np.ndarray | None], list[str | None]]:
    paths, config_dict = args
    config = AudioFeatureConfig(**config_dict)
    feats: list[np.ndarray | None] = []
    problems: list[str | None] = []
    for path in paths:
        try:
            feats.append(features_from_file(path, config).astype(np.float16))
            problems.append(None)
        except InputError as exc:
            feats.append(None)
            problems.append(str(exc))
    return feats, problems


def build_feature_cache(manifest: Manifest, split: str, config: AudioFeatureConfig = AudioFeatureConfig(),
                        workers: int = 2, chunk: int = 512, progress: bool = True) -> AudioFeatureStore:
    """Compute (or reuse) the feature cache of one split; resumable chunk by chunk.

    Utterances whose audio cannot be read are dropped from the cache and listed in
    ``<split>.problems.json`` beside it.
    """
    config.validate()
    folder = cache_folder(manifest.root, config)
    settings = _as_json({"features": asdict(config), "manifest_sha256": sha256_file(manifest.path)})
    if config.kind == "whisper":
        settings["front_end_sha256"] = whisper.weights_identity()  # the encoder's weights shape the features too
    meta_path = folder / f"{split}.settings.json"
    if meta_path.exists() and json.loads(meta_path.read_text()) == settings and (folder / f"{split}.ids.json").exists():
        return AudioFeatureStore(folder, split)
    parts_dir = folder / f"{split}.parts-{settings['manifest_sha256'][:10]}"
    parts_dir.mkdir(parents=True, exist_ok=True)
    rows = manifest.rows
    chunks = [rows[i: i + chunk] for i in range(0, len(rows), chunk)]
    todo = [k for k in range(len(chunks)) if not (parts_dir / f"{k:05d}.json").exists()]
    done = len(rows) - sum(len(chunks[k]) for k in todo)
    bar = tqdm(total=len(rows), initial=done, desc=f"features {split}", unit="utt", disable=not progress)
    jobs = [([str(manifest.audio_path(r)) for r in chunks[k]], asdict(config)) for k in todo]
    with ProcessPoolExecutor(max_workers=workers, initializer=_worker_init) if workers > 1 else _InlineExecutor() as pool:
        for k, (feats, problems) in zip(todo, pool.map(_featurize_chunk, jobs)):
            ok = [f for f in feats if f is not None]
            save_npy(parts_dir / f"{k:05d}.npy", np.concatenate(ok) if ok else np.zeros((0, config.dim), np.float16))
            lengths = [len(f) if f is not None else -1 for f in feats]
            write_json(parts_dir / f"{k:05d}.json", {"ids": [r["id"] for r in chunks[k]], "lengths": lengths, "problems": problems})
            bar.update(len(feats))
    bar.close()
    return _merge_parts(folder, split, parts_dir, len(chunks), settings)


def _merge_parts(folder: Path, split: str, parts_dir: Path, n_parts: int, settings: dict) -> AudioFeatureStore:
    ids: list[str] = []
    lengths: list[int] = []
    problems: list[str] = []
    arrays = []
    for k in range(n_parts):
        info = json.loads((parts_dir / f"{k:05d}.json").read_text())
        arrays.append(load_npy(parts_dir / f"{k:05d}.npy"))
        for item, length, problem in zip(info["ids"], info["lengths"], info["problems"]):
            if length < 0:
                problems.append(problem)
                continue
            ids.append(item)
            lengths.append(length)
    frames = np.concatenate(arrays) if arrays else np.zeros((0, AudioFeatureConfig(**settings["features"]).dim), np.float16)
    save_npy(folder / f"{split}.frames.npy", frames)
    save_npy(folder / f"{split}.offsets.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    write_json(folder / f"{split}.ids.json", ids)
    write_json(folder / f"{split}.problems.json", problems)
    write_json(folder / f"{split}.settings.json", settings)
    for path in parts_dir.iterdir():
        path.unlink()
    parts_dir.rmdir()
    return AudioFeatureStore(folder, split)


class _InlineExecutor:
    """A stand-in for ProcessPoolExecutor that runs in-process (workers=1), on one thread.

    The caller's thread count is restored afterwards: later results must not depend on it.
    """

    def __enter__(self) -> "_InlineExecutor":
        self._threads = torch.get_num_threads()
        torch.set_num_threads(1)
        return self

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self._threads)

    def map(self, fn, items):  # noqa: ANN001, ANN201
        return map(fn, items)


# ----------------------------------------------------------------------------- image trunk outputs


def build_image_cache(manifest: Manifest, split: str, encoder: ImageEncoder, identity: dict, image_config: ImageConfig,
                      batch_size: int = 32, device: str = "cpu", progress: bool = True) -> tuple[np.ndarray, list[str], dict[str, str]]:
    """Encode each distinct image of a split once with ``encoder``'s frozen trunk; resumable.

    ``identity`` names the trunk and its weights (it keys the cache folder). Unreadable images are
    left out and reported, like unreadable audio. Returns ``(features, image_ids, problems)``: features
    ``N x C x H x W`` float16 for the readable images, their ids, and ``{image_id: reason}`` for the rest.
    """
    folder = Path(manifest.root) / CACHE_DIR / f"image-{stable_hash({'trunk': identity, 'image': asdict(image_config)}, 10)}"
    settings = _as_json({"trunk": identity, "image": asdict(image_config), "manifest_sha256": sha256_file(manifest.path)})
    ids_path = folder / f"{split}.ids.json"
    meta_path = folder / f"{split}.settings.json"
    problems_path = folder / f"{split}.image_problems.json"
    if meta_path.exists() and json.loads(meta_path.read_text()) == settings and ids_path.exists():
        problems = json.loads(problems_path.read_text()) if problems_path.exists() else {}
        return load_npy(folder / f"{split}.npy", mmap=False), json.loads(ids_path.read_text()), problems
    first_row = {}
    for row in manifest.rows:
        first_row.setdefault(row["image_id"], row)
    image_ids = list(first_row)
    parts = folder / f"{split}.parts-{settings['manifest_sha256'][:10]}"
    parts.mkdir(parents=True, exist_ok=True)
    chunk = batch_size * 8
    encoder.trunk.to(device).eval()
    with tqdm(total=len(image_ids), desc=f"image features {split}", unit="img", disable=not progress) as bar:
        for c0 in range(0, len(image_ids), chunk):
            part = parts / f"{c0 // chunk:05d}"
            if not part.with_suffix(".json").exists():
                _encode_image_chunk(image_ids[c0: c0 + chunk], first_row, manifest, encoder, image_config, batch_size,
                                    device, part, bar)
            else:
                bar.update(len(image_ids[c0: c0 + chunk]))
    infos = [json.loads((parts / f"{k:05d}.json").read_text()) for k in range(math.ceil(len(image_ids) / chunk))]
    empty = np.zeros((0, *trunk_output_shape(infos)), dtype=np.float16)
    features = np.concatenate([empty] + [load_npy(parts / f"{k:05d}.npy") for k, info in enumerate(infos) if info["ids"]])
    kept = [image_id for info in infos for image_id in info["ids"]]
    problems = {image_id: reason for info in infos for image_id, reason in info["problems"].items()}
    if not kept:
        first = next(iter(problems.items()))
        raise VGSError(f"{manifest.path}: none of the {len(problems)} images could be read; first: {first[0]}: {first[1]}")
    save_npy(folder / f"{split}.npy", features)
    write_json(problems_path, problems)
    write_json(ids_path, kept)
    write_json(meta_path, settings)
    for path in parts.iterdir():
        path.unlink()
    parts.rmdir()
    return features, kept, problems


def trunk_output_shape(infos: list[dict]) -> tuple[int, ...]:
    """``C x H x W`` of the trunk as recorded by the first chunk that encoded an image (``(0,)`` if none did)."""
    return next((tuple(info["shape"]) for info in infos if info["ids"]), (0,))


def _encode_image_chunk(ids: list[str], first_row: dict, manifest: Manifest, encoder: ImageEncoder, image_config: ImageConfig,
                        batch_size: int, device: str, part: Path, bar) -> None:
    """Encode one chunk of images into ``part.npy`` (``n x C x H x W`` float16) + ``part.json`` (ids kept,
    problems, shape); an image that cannot be read is recorded, not fatal."""
    kept, problems, outputs = [], {}, []
    for b0 in range(0, len(ids), batch_size):
        pixels = []
        for image_id in ids[b0: b0 + batch_size]:
            try:
                pixels.append(load_image_tensor(manifest.image_path(first_row[image_id]), image_config))
                kept.append(image_id)
            except VGSError as exc:
                problems[image_id] = str(exc)
        if pixels:
            with torch.no_grad():
                outputs.append(encoder.trunk_forward(torch.stack(pixels).to(device)).float().cpu().numpy().astype(np.float16))
        bar.update(len(ids[b0: b0 + batch_size]))
    if outputs:
        save_npy(part.with_suffix(".npy"), np.concatenate(outputs))
    shape = list(outputs[0].shape[1:]) if outputs else []
    write_json(part.with_suffix(".json"), {"ids": kept, "problems": problems, "shape": shape})
