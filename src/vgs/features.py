"""Audio features (log-mel filterbanks, MFCC) and the on-disk feature cache.

Defaults follow DAVEnet: 16 kHz, 25 ms Hamming window (n_fft 400), 10 ms hop,
pre-emphasis 0.97, 40 mel bands from 20 Hz, power in dB relative to the
utterance's maximum, at most 1024 frames.  The cache stores every utterance of a
split once, as one ``frames x bins`` float16 array plus offsets, together with
the settings and the manifest's checksum; it is rebuilt when either changes.
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import librosa
import numpy as np
import scipy.fft
import torch
from .progress import tqdm

from .audio import load_audio
from .data.manifest import Manifest
from .errors import InputError, VGSError
from .io import load_npy, save_npy, sha256_file, stable_hash, write_json

CACHE_DIR = "cache"


@dataclass
class AudioFeatureConfig:
    """Spectral front end. ``kind`` is ``logmel`` or ``mfcc``."""

    kind: str = "logmel"
    sample_rate: int = 16000
    n_mels: int = 40
    n_mfcc: int = 40
    window_ms: float = 25.0
    hop_ms: float = 10.0
    preemphasis: float = 0.97
    fmin: float = 20.0
    max_frames: int = 1024
    trim_db: float = 35.0  # drop leading/trailing frames this far below the loudest (0 = keep all)
    trim_margin: int = 10  # frames of silence kept at each end (100 ms: TTS captions are not cut)

    @property
    def n_fft(self) -> int:
        return int(round(self.sample_rate * self.window_ms / 1000))

    @property
    def hop(self) -> int:
        return int(round(self.sample_rate * self.hop_ms / 1000))

    @property
    def dim(self) -> int:
        """Feature bins per frame (the audio encoder's input height)."""
        return self.n_mfcc if self.kind == "mfcc" else self.n_mels

    def validate(self) -> None:
        for name in ("sample_rate", "n_mels", "window_ms", "hop_ms"):
            if not getattr(self, name) > 0:
                raise VGSError(f"features.{name}: expected a positive number, got {getattr(self, name)!r}")
        if self.n_fft < 16 or self.hop < 1:
            raise VGSError(f"features: window {self.window_ms} ms / hop {self.hop_ms} ms at {self.sample_rate} Hz "
                           "are too short (expected at least 16 samples per window)")
        if not 0 <= self.preemphasis < 1:
            raise VGSError(f"features.preemphasis: expected 0 <= value < 1, got {self.preemphasis}")
        if self.kind not in ("logmel", "mfcc"):
            raise VGSError(f"features.kind: expected 'logmel' or 'mfcc', got {self.kind!r}")
        if self.kind == "mfcc" and not 1 <= self.n_mfcc <= self.n_mels:
            raise VGSError(f"features.n_mfcc: expected 1..n_mels ({self.n_mels}), got {self.n_mfcc}")
        if self.max_frames < 16:
            raise VGSError(f"features.max_frames: expected at least 16, got {self.max_frames}")
        if not (math.isfinite(self.trim_db) and 0 <= self.trim_db <= 80):
            raise VGSError(f"features.trim_db: expected 0 (no trimming) to 80 dB, got {self.trim_db!r}")
        if not 0 <= self.trim_margin <= 1000:
            raise VGSError(f"features.trim_margin: expected 0..1000 frames, got {self.trim_margin!r}")


@lru_cache(maxsize=8)
def _mel_basis(sample_rate: int, n_fft: int, n_mels: int, fmin: float) -> torch.Tensor:
    return torch.from_numpy(librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin)).float()


@lru_cache(maxsize=8)
def _dct_matrix(n_mfcc: int, n_mels: int) -> torch.Tensor:
    basis = scipy.fft.dct(np.eye(n_mels), type=2, norm="ortho", axis=0)[:n_mfcc]  # n_mfcc x n_mels, as librosa.feature.mfcc
    return torch.from_numpy(basis).float()


def compute_features(audio: np.ndarray | torch.Tensor, config: AudioFeatureConfig = AudioFeatureConfig()) -> np.ndarray:
    """Features of one utterance. ``audio``: ``N`` samples. Returns ``T x F`` float32, T <= max_frames."""
    y = torch.as_tensor(np.asarray(audio, dtype=np.float32))
    if y.ndim != 1 or y.numel() == 0:
        raise VGSError(f"compute_features: expected a non-empty 1-D signal, got shape {tuple(y.shape)}")
    # Crop the signal before the STFT so very long inputs cost no more than max_frames.
    y = y[: (config.max_frames - 1) * config.hop + 1]
    y = y - y.mean()
    y = torch.cat([y[:1], y[1:] - config.preemphasis * y[:-1]])
    window = torch.hamming_window(config.n_fft, periodic=True)
    stft = torch.stft(y, n_fft=config.n_fft, hop_length=config.hop, win_length=config.n_fft, window=window,
                      center=True, pad_mode="constant", return_complex=True)
    power = stft.real.square() + stft.imag.square()  # (n_fft/2+1) x T
    mel = _mel_basis(config.sample_rate, config.n_fft, config.n_mels, config.fmin) @ power
    amin, top_db = 1e-10, 80.0
    mel = trim_silence(mel, config.trim_db, config.trim_margin)
    logmel = 10.0 * torch.log10(mel.clamp_min(amin))
    logmel = logmel - 10.0 * torch.log10(mel.max().clamp_min(amin))
    logmel = logmel.clamp_min(logmel.max() - top_db)
    if config.kind == "mfcc":
        logmel = _dct_matrix(config.n_mfcc, config.n_mels) @ logmel
    return logmel[:, : config.max_frames].T.contiguous().numpy()


def trim_silence(mel: torch.Tensor, trim_db: float, margin: int) -> torch.Tensor:
    """Cut leading and trailing frames quieter than ``trim_db`` below the loudest frame, keeping
    ``margin`` frames at each end (an energy VAD). ``F x T`` mel power -> ``F x T'``, ``T' >= 1``.

    A browser recording's silence before and after the words would otherwise dilute MISA's mean
    over frames; TTS captions (50 ms of silence at each end) are left as they are.
    """
    if trim_db <= 0 or mel.shape[1] == 0:
        return mel
    energy = mel.sum(dim=0)
    active = torch.nonzero(energy >= energy.max() * 10 ** (-trim_db / 10)).flatten()
    if active.numel() == 0:
        return mel
    first, last = max(int(active[0]) - margin, 0), min(int(active[-1]) + margin + 1, mel.shape[1])
    return mel[:, first:last]


def features_from_file(path: str | Path, config: AudioFeatureConfig = AudioFeatureConfig()) -> np.ndarray:
    """Load (resample, downmix) and featurize one file. Returns ``T x F``."""
    max_seconds = (config.max_frames * config.hop + config.n_fft) / config.sample_rate + 0.1
    return compute_features(load_audio(path, config.sample_rate, max_seconds=max_seconds), config)


def pad_features(features: Sequence[np.ndarray | torch.Tensor], multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ragged ``T_i x F`` features into ``B x F x T_max`` (zero padded) plus lengths ``B``.

    ``T_max`` is rounded up to ``multiple`` so strided encoders see whole windows.
    """
    lengths = torch.tensor([len(f) for f in features], dtype=torch.long)
    t_max = int(lengths.max()) if len(features) else 1
    t_max = -(-t_max // multiple) * multiple
    dim = features[0].shape[1] if len(features) else 1
    batch = torch.zeros(len(features), dim, t_max)
    for i, feats in enumerate(features):
        batch[i, :, : len(feats)] = torch.as_tensor(np.asarray(feats, dtype=np.float32)).T
    return batch, lengths


# ----------------------------------------------------------------------------- cache


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
    frames = np.concatenate(arrays) if arrays else np.zeros((0, settings["features"]["n_mels"]), np.float16)
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


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


# ----------------------------------------------------------------------------- image trunk cache


def build_image_cache(manifest: Manifest, split: str, trunk: torch.nn.Module, identity: dict, image_config,
                      batch_size: int = 32, device: str = "cpu", progress: bool = True) -> tuple[np.ndarray, list[str], dict[str, str]]:
    """Encode each distinct image of a split once with a frozen ``trunk``; resumable.

    ``identity`` names the trunk and its weights (it keys the cache folder). Unreadable images are
    left out and reported, like unreadable audio. Returns ``(features, image_ids, problems)``: features
    ``N x C x H x W`` float16 for the readable images, their ids, and ``{image_id: reason}`` for the rest.
    """
    from .images import load_image_tensor

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
    trunk = trunk.to(device).eval()
    with tqdm(total=len(image_ids), desc=f"image features {split}", unit="img", disable=not progress) as bar:
        for c0 in range(0, len(image_ids), chunk):
            part = parts / f"{c0 // chunk:05d}"
            if not part.with_suffix(".json").exists():
                _encode_image_chunk(image_ids[c0: c0 + chunk], first_row, manifest, trunk, image_config, batch_size,
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


def _encode_image_chunk(ids: list[str], first_row: dict, manifest: Manifest, trunk: torch.nn.Module, image_config,
                        batch_size: int, device: str, part: Path, bar) -> None:
    """Encode one chunk of images into ``part.npy`` (``n x C x H x W`` float16) + ``part.json`` (ids kept,
    problems, shape); an image that cannot be read is recorded, not fatal."""
    from .images import load_image_tensor

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
                outputs.append(trunk(torch.stack(pixels).to(device)).float().cpu().numpy().astype(np.float16))
        bar.update(len(ids[b0: b0 + batch_size]))
    if outputs:
        save_npy(part.with_suffix(".npy"), np.concatenate(outputs))
    shape = list(outputs[0].shape[1:]) if outputs else []
    write_json(part.with_suffix(".json"), {"ids": kept, "problems": problems, "shape": shape})
