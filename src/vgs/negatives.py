"""Harder impostors: batches drawn from clusters of similar images, or a queue of past batches.

**Batches from image clusters** (``train.batch_clusters``): :func:`image_clusters` groups the
training images by their cached trunk features (spherical k-means on the mean-pooled, centred
features); the batch sampler then fills each pool of batches from one or a few clusters, so a
caption's in-batch impostors are images like its own (dogs among dogs) rather than random ones.
Free per step.

**The queue** (``train.negative_queue``):
A batch of ``B`` pairs gives each caption ``B`` candidate images (about ``B / 2`` distinct ones
when it holds two voices per caption).  The queue keeps the embeddings of the last ``batches``
batches, detached (no gradient flows into them), so each caption is also ranked against their
images and each image against their captions: more, and staler, impostors at the cost of scoring
them (``train.negative_queue``; in the spirit of MoCo's queue and cross-batch memory).

Each queued batch keeps one entry per image id: its image and the first of its captions in the
batch (the others, often the same caption in another voice, would mostly repeat it and cost as
much to score), the captions as packed real frames.  Across batches an image is kept once (the
newest embedding).  A batch with a non-finite embedding is not queued.  The queue is not checkpointed: after
a resume it refills in ``batches`` steps.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from .centroids import kmeans
from .similarity import PackedFrames

CLUSTER_ITERATIONS = 20
CLUSTER_CHUNK = 1024  # images pooled at a time (memory)


def image_clusters(features: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """A cluster for each image: ``features`` ``N x C x H x W`` cached trunk outputs, ``rows`` the ``I``
    images' rows in it -> ``I`` labels in ``[0, min(k, I))``.

    Deterministic (:func:`vgs.centroids.kmeans`): mean-pooled over regions, centred, unit length,
    clustered by inner product.
    """
    pooled = torch.cat([torch.from_numpy(np.asarray(features[rows[c: c + CLUSTER_CHUNK]], dtype=np.float32)).mean((2, 3))
                        for c in range(0, len(rows), CLUSTER_CHUNK)])
    pooled = torch.nn.functional.normalize(pooled - pooled.mean(0), dim=1)
    centroids, _ = kmeans(pooled[None], min(k, len(pooled)), iterations=CLUSTER_ITERATIONS)
    return (pooled @ centroids[0].T).argmax(1).numpy()


@dataclass
class QueuedBatch:
    """One batch's detached embeddings: ``U x D x H x W`` images with ``U`` distinct ids and one caption of each, packed."""

    images: torch.Tensor
    image_ids: torch.Tensor
    captions: PackedFrames


def first_of_each(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``N`` ids -> (``U`` positions of each distinct id's first occurrence, ``N`` inverse: ids == ids[first][inverse])."""
    unique, inverse = torch.unique(ids, return_inverse=True)
    positions = torch.arange(len(ids), device=ids.device)
    first = torch.full((len(unique),), len(ids), dtype=torch.long, device=ids.device).scatter_reduce(
        0, inverse, positions, reduce="amin")
    return first, inverse


def distinct_rows(images: torch.Tensor, image_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Score each image of a batch once: ``B x D x H x W`` embeddings, ``B`` ids -> (``U`` rows, ``B`` expand).

    ``images[rows][expand]`` equals ``images``: when every copy of an id (two voices of one caption) has
    the same embedding, ``rows`` holds one copy per id; otherwise (copies flipped differently) every row.
    """
    first, inverse = first_of_each(image_ids)
    if len(first) < len(image_ids) and torch.equal(images[first][inverse], images):
        return first, inverse
    every = torch.arange(len(image_ids), device=image_ids.device)
    return every, every


class ImpostorQueue:
    """The last ``batches`` batches' embeddings (first in, first out)."""

    def __init__(self, batches: int):
        if batches < 1:
            raise ValueError(f"an impostor queue holds at least one batch, got {batches}")
        self.entries: deque[QueuedBatch] = deque(maxlen=batches)

    def __len__(self) -> int:
        return len(self.entries)

    def push(self, images: torch.Tensor, image_ids: torch.Tensor, audio: torch.Tensor, lengths: torch.Tensor) -> bool:
        """Queue a batch: ``B x D x H x W`` images with ``B`` ids, ``B x D x T'`` frames with ``B`` lengths.

        Returns False (and queues nothing) when an embedding is not finite.
        """
        images, audio = images.detach().float(), audio.detach().float()
        if not (torch.isfinite(images).all() and torch.isfinite(audio).all()):
            return False
        first, _ = first_of_each(image_ids)
        self.entries.append(QueuedBatch(images[first].clone(), image_ids[first].clone(),
                                        PackedFrames.from_padded(audio[first], lengths[first])))
        return True

    def images(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(``Qi x D x H x W`` queued images, ``Qi`` ids), one per id, the newest embedding of each."""
        images = torch.cat([e.images for e in reversed(self.entries)])
        ids = torch.cat([e.image_ids for e in reversed(self.entries)])
        first, _ = first_of_each(ids)
        return images[first], ids[first]

    def captions(self) -> tuple[PackedFrames, torch.Tensor]:
        """(the ``Qc`` queued captions, packed, and their images' ``Qc`` ids)."""
        return (PackedFrames.cat([e.captions for e in self.entries]),
                torch.cat([e.image_ids for e in self.entries]))
