"""From a data set folder and a config to a ready :class:`PairDataset` (caches built once)."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from ..augment import VoiceAugment
from ..config import Config
from ..errors import VGSError
from ..images import check_image
from ..models.factory import pixel_config
from ..models.image import ImageEncoder
from ..progress import tqdm
from .cache import build_feature_cache, build_image_cache
from .loader import CachedImages, ImageFiles, PairDataset
from .manifest import Manifest, load_split


def trunk_identity(config: Config, trunk: torch.nn.Module) -> dict:
    """What determines a frozen trunk's outputs: its name and a hash of its exact weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(trunk.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    identity = {"encoder": config.model.image_encoder, "stride": config.model.image_stride, "weights_sha256": digest.hexdigest()[:20]}
    if config.model.image_top_blocks:  # the trunk ends below its split-off top (older caches keep their keys)
        identity["below_top_blocks"] = config.model.image_top_blocks
    return identity


def uses_image_cache(config: Config) -> bool:
    return config.model.freeze_trunk and config.train.cache_image_features


def open_split(config: Config, split: str, image_encoder: ImageEncoder | None = None, train: bool = False,
               device: str = "cpu", progress: bool = True, workers: int = 2,
               images: CachedImages | ImageFiles | None = None) -> PairDataset:
    """Load a split's manifest, its cached audio features and its images (cached trunk outputs or files).

    ``images``: another split's image source to reuse when it holds every image of this one (the
    sets of a cross-voice evaluation share their images).
    """
    manifest = load_split(config.data, split, strict=False)
    if manifest.problems:
        print(f"warning: {manifest.path}: skipped {len(manifest.problems)} bad line(s); first: {manifest.problems[0]}")
    if not manifest.rows:
        raise VGSError(f"{manifest.path}: no usable rows")
    audio = build_feature_cache(manifest, split, config.features, workers=workers, progress=progress)
    if len(audio) == 0:
        raise VGSError(f"{manifest.path}: none of the audio files could be featurized")
    if not (isinstance(images, CachedImages) and {row["image_id"] for row in manifest.rows} <= images.index.keys()):
        images = _open_images(config, manifest, split, image_encoder, train, device, progress)
    augment = None
    if train and config.augment.enabled and config.features.kind == "logmel":
        augment = VoiceAugment(config.augment, config.features.n_mels, config.features.fmin, config.features.sample_rate,
                               config.features.hop_ms / 1000, config.features.preemphasis)
    dataset = PairDataset(manifest, audio, images, seed=config.train.seed, spec_augment=train and config.train.spec_augment,
                          voice_augment=augment)
    if len(dataset) == 0:
        raise VGSError(f"{manifest.path}: no caption has both readable audio and a readable image"
                       + (f"; first image problem: {dataset.image_skips[0]}" if dataset.image_skips else ""))
    return dataset


def _open_images(config: Config, manifest: Manifest, split: str, image_encoder: ImageEncoder | None, train: bool,
                 device: str, progress: bool) -> CachedImages | ImageFiles:
    """Cached trunk outputs (frozen, cached trunk) or image files, for the images of ``manifest``."""
    if uses_image_cache(config):
        if image_encoder is None:
            raise VGSError("an image encoder is needed to build the trunk-feature cache")
        features, ids, problems = build_image_cache(manifest, split, image_encoder,
                                                    trunk_identity(config, image_encoder.trunk), pixel_config(config),
                                                    device=device, progress=progress)
        return CachedImages(features, ids, problems)
    paths = {row["image_id"]: str(manifest.image_path(row)) for row in manifest.rows}
    problems = {} if train else unreadable_images(paths, split, progress)
    readable = {image_id: path for image_id, path in paths.items() if image_id not in problems}
    return ImageFiles(readable, pixel_config(config), augment=train and config.train.augment_images, problems=problems)


def unreadable_images(paths: dict[str, str], split: str, progress: bool) -> dict[str, str]:
    """``{image_id: reason}`` for the images that do not decode (each is decoded once, fully).
    Training leaves this to the first epoch, which decodes every image anyway and names a bad file."""
    problems = {}
    for image_id, path in tqdm(paths.items(), desc=f"check images {split}", unit="img", disable=not progress):
        try:
            check_image(path)
        except VGSError as exc:
            problems[image_id] = str(exc)
    return problems


def feature_statistics(dataset: PairDataset, max_items: int = 2000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-band mean and std of the audio features over (a sample of) a split. Returns two ``F`` tensors."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(dataset.audio_rows), size=min(max_items, len(dataset.audio_rows)), replace=False)
    frames = np.concatenate([dataset.audio[int(dataset.audio_rows[i])].astype(np.float32) for i in picks])
    return torch.from_numpy(frames.mean(0)), torch.from_numpy(frames.std(0))


def describe(config: Config) -> str:
    m = config.model
    return (f"{m.image_encoder}{' (frozen)' if m.freeze_trunk else ''} + {m.audio_encoder}, D={m.embed_dim}, "
            f"{m.similarity}, {config.train.loss}, batch {config.train.batch_size}, lr {config.train.lr:g}")

