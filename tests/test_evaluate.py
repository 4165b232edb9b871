"""Recall@k and median rank on hand-built similarity matrices."""

from __future__ import annotations

import pytest
import torch

from vgs.evaluate import draw_pairs, format_table, image_to_speech, mean_recall, speech_to_image


def test_speech_to_image_hand_built() -> None:
    # 3 images x 4 captions; captions 0,1 belong to image 0, caption 2 to image 1, caption 3 to image 2.
    sim = torch.tensor([[0.9, 0.1, 0.5, 0.0],
                        [0.2, 0.8, 0.9, 0.3],
                        [0.1, 0.7, 0.1, 0.2]])
    truth = torch.tensor([0, 0, 1, 2])
    # ranks of the true image per caption: c0 -> 1, c1 -> 3 (0.8 and 0.7 beat 0.1), c2 -> 1, c3 -> 2
    out = speech_to_image(sim, truth, ks=(1, 2, 3))
    assert out["r1"] == pytest.approx(2 / 4)
    assert out["r2"] == pytest.approx(3 / 4)
    assert out["r3"] == pytest.approx(1.0)
    assert out["median_rank"] == pytest.approx(1.5)


def test_image_to_speech_any_own_caption_counts() -> None:
    sim = torch.tensor([[0.9, 0.1, 0.5, 0.0],
                        [0.2, 0.8, 0.9, 0.3],
                        [0.1, 0.7, 0.1, 0.2]])
    truth = torch.tensor([0, 0, 1, 2])
    # image 0: best own caption c0 (0.9) ranks 1; image 1: c2 (0.9) ranks 1; image 2: c3 (0.2) ranks 2 (behind 0.7)
    out = image_to_speech(sim, truth, ks=(1, 2))
    assert out["r1"] == pytest.approx(2 / 3)
    assert out["r2"] == pytest.approx(1.0)
    assert out["median_rank"] == pytest.approx(1.0)


def test_constant_scores_give_chance_not_perfect_recall() -> None:
    n = 100
    sim = torch.zeros(n, n)
    truth = torch.arange(n)
    s2i = speech_to_image(sim, truth)
    i2s = image_to_speech(sim, truth)
    for out in (s2i, i2s):
        assert out["r1"] == pytest.approx(0.01)
        assert out["r5"] == pytest.approx(0.05)
        assert out["r10"] == pytest.approx(0.10)


def test_ties_with_several_own_captions() -> None:
    # One image, 2 own captions and 2 others, all tied: P(an own caption first) = 1 - (2/4)(1/3)... = 1 - C(2,1)/C(4,1)
    sim = torch.zeros(2, 4)
    truth = torch.tensor([0, 0, 1, 1])
    out = image_to_speech(sim, truth, ks=(1, 2))
    assert out["r1"] == pytest.approx(1 - 2 / 4)
    assert out["r2"] == pytest.approx(1 - (2 * 1) / (4 * 3))


def test_perfect_diagonal() -> None:
    sim = torch.eye(10)
    assert speech_to_image(sim, torch.arange(10))["r1"] == 1.0
    assert image_to_speech(sim, torch.arange(10))["r1"] == 1.0


def test_draw_pairs_distinct_images_one_caption_each() -> None:
    caption_image = torch.arange(300) // 5  # 60 images x 5 captions
    picks = draw_pairs(caption_image, 50, seed=3)
    assert len(picks) == 50
    assert len(set(caption_image[picks].tolist())) == 50
    assert torch.equal(picks, draw_pairs(caption_image, 50, seed=3))
    assert not torch.equal(picks, draw_pairs(caption_image, 50, seed=4))


def test_mean_recall_and_table() -> None:
    result = {"protocol": "full", "speech_to_image": {"r1": 0.1, "r5": 0.2, "r10": 0.3},
              "image_to_speech": {"r1": 0.3, "r5": 0.4, "r10": 0.5}}
    assert mean_recall(result) == pytest.approx(0.3)
    assert "| m | full | 0.100 |" in format_table({"m": result})
