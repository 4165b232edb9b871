"""From a data set folder and a config to a ready :class:`PairDataset` (caches built once)."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from ..augment import VoiceAugment
from ..config import Config
from ..errors import VGSError
from ..models.factory import pixel_config
from ..models.image import ImageEncoder
from .cache import build_feature_cache, build_image_cache
from .loader import CachedImages, ImageFiles, PairDataset
from .manifest import Manifest, load_split


def trunk_identity(config: Config, trunk: torch.nn.Module) -> dict:
    """What determines a frozen trunk's outputs: its name and a hash of its exact weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(trunk.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return {"encoder": config.model.image_encoder, "stride": config.model.image_stride, "weights_sha256": digest.hexdigest()[:20]}


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
                               config.features.hop_ms / 1000)
    return PairDataset(manifest, audio, images, seed=config.train.seed, spec_augment=train and config.train.spec_augment,
                       voice_augment=augment)


def _open_images(config: Config, manifest: Manifest, split: str, image_encoder: ImageEncoder | None, train: bool,
                 device: str, progress: bool) -> CachedImages | ImageFiles:
    """Cached trunk outputs (frozen, cached trunk) or image files, for the images of ``manifest``."""
    if uses_image_cache(config):
        if image_encoder is None:
            raise VGSError("an image encoder is needed to build the trunk-feature cache")
        features, ids = build_image_cache(manifest, split, image_encoder.trunk, trunk_identity(config, image_encoder.trunk),
                                          pixel_config(config), device=device, progress=progress)
        return CachedImages(features, ids)
    paths = {row["image_id"]: str(manifest.image_path(row)) for row in manifest.rows}
    return ImageFiles(paths, pixel_config(config), augment=train and config.train.augment_images)


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

