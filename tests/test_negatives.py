"""Harder impostors: image clusters for batches; the queue (first-in first-out, one entry per image, nothing
non-finite); scoring each image once."""

from __future__ import annotations

import torch

import numpy as np

from vgs.negatives import ImpostorQueue, distinct_rows, first_of_each, image_clusters


def test_first_of_each_finds_each_ids_first_position() -> None:
    ids = torch.tensor([5, 3, 5, 9, 3, 3, 1])
    first, inverse = first_of_each(ids)
    assert torch.equal(ids[first][inverse], ids)
    assert sorted(first.tolist()) == [0, 1, 3, 6]
    for position in first.tolist():
        assert position == ids.tolist().index(ids[position].item())


def _batch(ids: list[int], fill: float, lengths: list[int]) -> tuple[torch.Tensor, ...]:
    b = len(ids)
    images = torch.full((b, 4, 2, 2), fill) + torch.tensor(ids, dtype=torch.float)[:, None, None, None]
    audio = torch.arange(b, dtype=torch.float)[:, None, None].expand(b, 4, 5).clone() + fill
    return images, torch.tensor(ids), audio, torch.tensor(lengths)


def test_queue_keeps_the_last_batches_one_entry_per_image_the_newest_winning() -> None:
    queue = ImpostorQueue(2)
    assert queue.push(*_batch([0, 0, 1, 1], 0.0, [5, 3, 2, 4]))
    assert queue.push(*_batch([1, 1, 2, 2], 100.0, [1, 2, 3, 4]))
    images, ids = queue.images()
    assert sorted(ids.tolist()) == [0, 1, 2]
    assert images[ids.tolist().index(1), 0, 0, 0].item() == 101.0  # image 1: the newer batch's embedding
    captions, caption_ids = queue.captions()
    assert caption_ids.tolist() == [0, 1, 1, 2]  # the first caption of each image in each batch
    assert captions.lengths.tolist() == [5, 2, 1, 3]
    assert captions.frames.shape == (11, 4) and captions.frames[5, 0].item() == 2.0  # batch 1, pair 2's frames
    assert queue.push(*_batch([7, 8], 200.0, [1, 1]))  # the first batch drops out
    assert len(queue) == 2 and sorted(queue.images()[1].tolist()) == [1, 2, 7, 8]


def test_a_non_finite_batch_is_not_queued() -> None:
    queue = ImpostorQueue(3)
    images, ids, audio, lengths = _batch([0, 1], 0.0, [2, 2])
    audio[1, 0, 1] = float("nan")
    assert not queue.push(images, ids, audio, lengths)
    assert len(queue) == 0


def test_distinct_rows_scores_each_image_once_only_when_its_copies_are_equal() -> None:
    ids = torch.tensor([4, 4, 2, 2, 9])
    images = torch.randn(5, 3, 2, 2)
    images[1], images[3] = images[0], images[2]
    rows, expand = distinct_rows(images, ids)
    assert len(rows) == 3 and torch.equal(images[rows][expand], images)
    images[3] = images[3].flip(-1)  # the second copy of image 2 flipped: every row is scored
    rows, expand = distinct_rows(images, ids)
    assert rows.tolist() == [0, 1, 2, 3, 4] and torch.equal(images[rows][expand], images)


def test_image_clusters_group_images_by_their_pooled_features() -> None:
    rng = np.random.default_rng(0)
    features = rng.random((40, 8, 3, 3)).astype(np.float16) * 0.1
    features[:20, 2] += 1.0  # two kinds of image: channel 2 strong, or channel 5
    features[20:, 5] += 1.0
    rows = rng.permutation(40)
    labels = image_clusters(features, rows, 2)
    kind = rows < 20
    assert len(set(labels[kind].tolist())) == 1 and len(set(labels[~kind].tolist())) == 1
    assert labels[kind][0] != labels[~kind][0]
    assert set(image_clusters(features, rows[:3], 8).tolist()) <= {0, 1, 2}  # more clusters than images
