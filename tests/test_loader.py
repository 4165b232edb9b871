"""Batching: length buckets, determinism per (seed, epoch), and voice pairs."""

from __future__ import annotations

import numpy as np

from vgs.data.loader import BucketBatchSampler


def test_batches_are_deterministic_and_cover_every_item_once() -> None:
    lengths = np.random.default_rng(0).integers(50, 500, 100)
    sampler = BucketBatchSampler(lengths, 8, seed=3)
    sampler.set_epoch(2)
    batches = sampler.all_batches()
    assert batches == sampler.all_batches() and len(batches) == len(sampler) == 12
    seen = [i for b in batches for i in b]
    assert len(seen) == len(set(seen)) == 96


def test_voice_pairs_put_two_renderings_of_a_caption_side_by_side() -> None:
    groups = np.repeat(np.arange(40), 3)  # 40 captions, 3 voices each
    lengths = np.random.default_rng(1).integers(50, 500, len(groups))
    sampler = BucketBatchSampler(lengths, 8, seed=0, groups=groups)
    assert len(sampler) == 10  # 40 captions / 4 per batch
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        batches = sampler.all_batches()
        for batch in batches:
            assert len(batch) == 8
            pairs = np.array(batch).reshape(4, 2)
            assert (groups[pairs[:, 0]] == groups[pairs[:, 1]]).all() and (pairs[:, 0] != pairs[:, 1]).all()
            assert len(set(groups[pairs[:, 0]])) == 4
        assert sorted({int(groups[i]) for b in batches for i in b}) == list(range(40))
    sampler.set_epoch(1, start_batch=4)
    assert list(sampler) == sampler.all_batches()[4:] and len(sampler) == 6


def test_few_pairs_fall_back_to_plain_batches() -> None:
    groups = np.arange(50)
    groups[1] = 0  # one repeated caption text, as synthetic captions sometimes have
    plain = BucketBatchSampler(np.arange(50) + 10, 8, seed=0).all_batches()
    assert BucketBatchSampler(np.arange(50) + 10, 8, seed=0, groups=groups).all_batches() == plain


def test_unreadable_images_are_named_and_left_out(tmp_path) -> None:
    """The image-file path (trunk not cached) checks evaluation images up front, like the trunk cache does."""
    from PIL import Image

    from vgs.data.pipeline import unreadable_images

    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "good.png")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    problems = unreadable_images({"g": str(tmp_path / "good.png"), "b": str(tmp_path / "bad.jpg")}, "test", progress=False)
    assert list(problems) == ["b"] and "bad.jpg" in problems["b"]


def test_clean_epochs_train_on_clean_speech_first(tiny_scenes) -> None:
    """augment.clean_epochs: the first epochs see the features as cached, later ones augmented."""
    from conftest import tiny_config
    from vgs.data.pipeline import open_split
    from vgs.models.factory import build_model

    config = tiny_config(tiny_scenes, **{"augment.enabled": True, "augment.clean_epochs": 1, "augment.noise_prob": 1.0,
                                         "train.spec_augment": False})
    dataset = open_split(config, "train", build_model(config).image, train=True, progress=False, workers=0)
    cached = dataset.audio[int(dataset.audio_rows[0])]
    dataset.set_epoch(0)
    np.testing.assert_array_equal(dataset[0]["audio"], cached)
    dataset.set_epoch(1)
    assert dataset[0]["audio"].shape[1] == cached.shape[1] and not np.array_equal(dataset[0]["audio"], cached)


def test_cluster_batches_hold_one_cluster_when_pools_fit_them() -> None:
    """With ``clusters``, units are pooled cluster by cluster: pools the size of a cluster give one-cluster batches."""
    rng = np.random.default_rng(0)
    clusters = rng.permutation(np.repeat(np.arange(4), 64))  # 4 clusters of 64 items, interleaved
    lengths = rng.integers(10, 100, len(clusters))
    sampler = BucketBatchSampler(lengths, 16, seed=1, pool_batches=4, clusters=clusters)
    batches = sampler.all_batches()
    assert sorted(i for b in batches for i in b) == list(range(256))
    assert all(len(set(clusters[b].tolist())) == 1 for b in batches)
    assert batches == BucketBatchSampler(lengths, 16, seed=1, pool_batches=4, clusters=clusters).all_batches()
    sampler.set_epoch(1)
    assert sampler.all_batches() != batches  # another order each epoch
    plain = BucketBatchSampler(lengths, 16, seed=1, pool_batches=4).all_batches()
    assert sum(len(set(clusters[b].tolist())) == 1 for b in plain) < len(plain) // 2


def test_cluster_batches_keep_voice_pairs_together() -> None:
    groups = np.repeat(np.arange(64), 2)  # 64 captions in two voices each
    clusters = np.repeat(np.arange(4), 32)  # 16 captions per cluster
    sampler = BucketBatchSampler(np.full(128, 50), 8, seed=0, pool_batches=4, groups=groups, clusters=clusters)
    for batch in sampler.all_batches():
        assert len(set(clusters[batch].tolist())) == 1
        assert sorted(np.bincount(groups[batch]).tolist())[-4:] == [2, 2, 2, 2]
