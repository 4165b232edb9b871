"""PyTorch datasets and batching for image/caption pairs.

Audio comes from the feature cache (:class:`~vgs.data.cache.AudioFeatureStore`); images
either from the trunk-feature cache (:class:`CachedImages`, a frozen trunk) or from
files (:class:`ImageFiles`).  :class:`BucketBatchSampler` groups captions of similar
length, so a 3-second caption does not pay for 1024 frames, and is deterministic
per ``(seed, epoch)`` so an interrupted run resumes on the very same batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..augment import VoiceAugment
from ..features import pad_features
from ..images import ImageConfig, load_image_tensor
from .cache import AudioFeatureStore
from .manifest import Manifest


class CachedImages:
    """Trunk outputs of a frozen image encoder: ``features[k]`` is ``C x H x W`` (float16)."""

    is_features = True

    def __init__(self, features: np.ndarray, ids: Sequence[str], problems: dict[str, str] | None = None):
        self.features = features
        self.index = {image_id: k for k, image_id in enumerate(ids)}
        self.problems = dict(problems or {})  # image_id -> why it is not here

    def __contains__(self, image_id: str) -> bool:
        return image_id in self.index

    def get(self, image_id: str, rng: np.random.Generator | None = None) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.features[self.index[image_id]]))


class ImageFiles:
    """Images loaded from disk and normalized; horizontal flips when ``augment``."""

    is_features = False

    def __init__(self, paths: dict[str, str], config: ImageConfig, augment: bool = False,
                 problems: dict[str, str] | None = None):
        self.paths = paths
        self.config = config
        self.augment = augment
        self.problems = dict(problems or {})  # image_id -> why it is not here

    def __contains__(self, image_id: str) -> bool:
        return image_id in self.paths

    def get(self, image_id: str, rng: np.random.Generator | None = None) -> torch.Tensor:
        flip = bool(self.augment and rng is not None and rng.random() < 0.5)
        return load_image_tensor(self.paths[image_id], self.config, flip=flip)


def spec_augment(features: np.ndarray, rng: np.random.Generator, time_masks: int = 2, freq_masks: int = 2,
                 max_time: float = 0.1, max_freq: int = 6) -> np.ndarray:
    """SpecAugment-style masking of a ``T x F`` array (masked cells set to the array's mean)."""
    out = features.astype(np.float32, copy=True)
    t, f = out.shape
    fill = float(out.mean())
    for _ in range(freq_masks):
        width = int(rng.integers(0, max_freq + 1))
        start = int(rng.integers(0, max(1, f - width)))
        out[:, start: start + width] = fill
    for _ in range(time_masks):
        width = int(rng.integers(0, max(1, int(t * max_time)) + 1))
        start = int(rng.integers(0, max(1, t - width)))
        out[start: start + width, :] = fill
    return out


class PairDataset(Dataset):
    """Image/caption pairs of one split.

    Items: ``{"audio": T x F, "image": ..., "image_index": int, "caption_index": int, "index": int}``;
    ``caption_index`` is shared by the renderings (voices) of one caption: same image, same text.
    """

    def __init__(self, manifest: Manifest, audio: AudioFeatureStore, images: CachedImages | ImageFiles,
                 seed: int = 0, spec_augment: bool = False, voice_augment: VoiceAugment | None = None):
        self.root = manifest.root  # image and audio paths in rows are relative to this folder
        with_audio = [row for row in manifest.rows if row["id"] in audio.index]
        self.rows = [row for row in with_audio if row["image_id"] in images]
        # one reason per caption left out because its image could not be read
        self.image_skips = [f"{row['id']}: image {row['image_id']}: {images.problems.get(row['image_id'], 'not available')}"
                            for row in with_audio if row["image_id"] not in images]
        self.audio = audio
        self.audio_rows = np.array([audio.index[row["id"]] for row in self.rows], dtype=np.int64)
        self.images = images
        self.image_ids = list(dict.fromkeys(row["image_id"] for row in self.rows))
        image_number = {image_id: k for k, image_id in enumerate(self.image_ids)}
        self.image_index = np.array([image_number[row["image_id"]] for row in self.rows], dtype=np.int64)
        captions: dict[tuple, int] = {}
        self.caption_index = np.array([captions.setdefault((row["image_id"], row.get("text") or row["id"]), len(captions))
                                       for row in self.rows], dtype=np.int64)
        self.seed = seed
        self.epoch = 0
        self.spec_augment = spec_augment
        self.voice_augment = voice_augment

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def lengths(self) -> np.ndarray:
        return self.audio.lengths()[self.audio_rows]

    def __len__(self) -> int:
        return len(self.rows)

    def _babble(self, rng: np.random.Generator) -> np.ndarray:
        """Another caption's features (``T x F``), drawn with ``rng``: babble noise for augmentation."""
        return self.audio[int(self.audio_rows[int(rng.integers(len(self.audio_rows)))])].astype(np.float32)

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        feats = self.audio[int(self.audio_rows[i])]
        if self.voice_augment is not None and self.epoch >= self.voice_augment.config.clean_epochs:
            feats = self.voice_augment(feats, rng, self._babble)
        if self.spec_augment:
            feats = spec_augment(feats, rng)
        image = self.images.get(self.rows[i]["image_id"], rng)
        return {"audio": feats, "image": image, "image_index": int(self.image_index[i]),
                "caption_index": int(self.caption_index[i]), "index": i}


@dataclass
class Batch:
    """A padded batch: ``audio`` ``B x F x T``, ``lengths`` ``B``, ``images`` ``B x 3 x S x S`` or ``B x C x H x W``;
    ``image_index``, ``caption_index`` and ``index`` are ``B`` integers."""

    audio: torch.Tensor
    lengths: torch.Tensor
    images: torch.Tensor
    image_index: torch.Tensor
    index: torch.Tensor
    caption_index: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(*(None if t is None else t.to(device, non_blocking=True)
                       for t in (self.audio, self.lengths, self.images, self.image_index, self.index, self.caption_index)))


def collate(items: list[dict], multiple: int) -> Batch:
    """Dataset items -> a :class:`Batch`; audio ``B x F x T`` padded to a multiple of the audio encoder's ``downsample``."""
    audio, lengths = pad_features([item["audio"] for item in items], multiple)
    images = torch.stack([item["image"] for item in items]).float()
    return Batch(audio, lengths, images, torch.tensor([item["image_index"] for item in items]),
                 torch.tensor([item["index"] for item in items]),
                 torch.tensor([item.get("caption_index", item["index"]) for item in items]))


class BucketBatchSampler(Sampler[list[int]]):
    """Length-bucketed, shuffled batches, deterministic per ``(seed, epoch)``; shards across DDP ranks.

    Each epoch: shuffle, cut into pools of ``batch_size * pool_batches`` items, sort
    each pool by length, cut into batches, shuffle the batches.  ``start_batch``
    skips the first batches (resuming mid-epoch).

    With ``groups`` (``N`` ids, e.g. :attr:`PairDataset.caption_index`), the units are groups of
    two or more items (renderings of one caption): each epoch two members of every such group are
    drawn and sit side by side in a batch, so a batch of ``B`` holds ``B / 2`` captions in two
    voices each.  Items whose group has one member are left out then; when fewer than half of
    the items have a partner, batching is as without ``groups``.

    With ``clusters`` (``N`` labels, e.g. of each item's image, :func:`vgs.negatives.image_clusters`),
    the shuffled units are ordered cluster by cluster (clusters in a random order) before the pools
    are cut, so each pool, and each batch, holds units of one or a few clusters: harder impostors.
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int = 0, pool_batches: int = 32,
                 rank: int = 0, world_size: int = 1, drop_last: bool = True, groups: np.ndarray | None = None,
                 clusters: np.ndarray | None = None):
        self.lengths = np.asarray(lengths)
        self.clusters = None if clusters is None else np.asarray(clusters)
        self.batch_size = batch_size
        self.seed = seed
        self.pool = batch_size * pool_batches
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self.start_batch = 0
        self.members: list[np.ndarray] | None = None
        if groups is not None:
            groups = np.asarray(groups)
            order = np.argsort(groups, kind="stable")
            cuts = np.flatnonzero(np.diff(groups[order])) + 1
            members = [m for m in np.split(order, cuts) if len(m) >= 2]
            paired = sum(len(m) for m in members)
            # Pair only data built with several voices per caption (not the odd repeated caption text).
            self.members = members if batch_size >= 4 and paired >= 0.5 * len(groups) else None

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def _units(self, rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray, int]:
        """(units of item indices, their lengths, units per batch) for this epoch."""
        if self.members is None:
            return [np.array([i]) for i in range(len(self.lengths))], self.lengths, self.batch_size
        units = [rng.choice(m, 2, replace=False) for m in self.members]
        return units, np.array([self.lengths[u].max() for u in units]), self.batch_size // 2

    def all_batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch, 7919])
        units, lengths, per_batch = self._units(np.random.default_rng([self.seed, self.epoch, 104729]))
        order = rng.permutation(len(units))
        if self.clusters is not None:
            cluster_rank = rng.permutation(int(self.clusters.max()) + 1)
            unit_cluster = self.clusters[[int(u[0]) for u in units]]
            order = order[np.argsort(cluster_rank[unit_cluster[order]], kind="stable")]
        pool_units = self.pool // (self.batch_size // per_batch)
        batches: list[list[int]] = []
        for p0 in range(0, len(order), pool_units):
            pool = order[p0: p0 + pool_units]
            pool = pool[np.argsort(lengths[pool], kind="stable")]
            for b0 in range(0, len(pool), per_batch):
                chosen = pool[b0: b0 + per_batch]
                if len(chosen) == per_batch or (not self.drop_last and len(chosen)):
                    batches.append([int(i) for u in chosen for i in units[u]])
        rng.shuffle(batches)
        usable = len(batches) - len(batches) % self.world_size if self.world_size > 1 else len(batches)
        return batches[self.rank: usable: self.world_size]

    def _units_count(self) -> tuple[int, int]:
        if self.members is None:
            return len(self.lengths), self.batch_size
        return len(self.members), self.batch_size // 2

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.all_batches()[self.start_batch:]

    def __len__(self) -> int:
        n, per_batch = self._units_count()
        full = n // per_batch if self.drop_last else math.ceil(n / per_batch)
        return max(0, full // self.world_size - self.start_batch)
