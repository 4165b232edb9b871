"""Recall@k and median rank on hand-built similarity matrices."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from vgs import api
from vgs.config import ModelConfig
from vgs.evaluate import (EncodedSplit, draw_pairs, format_table, full_protocol, image_to_speech, mean_recall,
                          pairs_protocol, speech_to_image)
from vgs.models.dual import DualEncoder
from vgs.similarity import PackedFrames, similarity_matrix


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


class _Summed:
    """A model whose every score is MISA + 0.5 SIMA, both ways."""

    def similarity(self, images: torch.Tensor, audio: PackedFrames) -> torch.Tensor:
        return similarity_matrix(images, audio, kind="misa") + 0.5 * similarity_matrix(images, audio, kind="sima")

    def caption_scores(self, images: torch.Tensor, audio: PackedFrames, scores: torch.Tensor) -> torch.Tensor:
        return scores


def test_images_rank_captions_with_sima_when_the_model_asks() -> None:
    """``model.image_to_speech_sima``: image -> speech ranks by MISA + w SIMA in both protocols, speech -> image
    by MISA alone; w = 0 leaves every figure as it was."""
    gen = torch.Generator().manual_seed(0)
    images = F.normalize(torch.randn(12, 8, 2, 3, generator=gen), dim=1)
    lengths = torch.randint(1, 6, (24,), generator=gen)
    audio = PackedFrames.from_padded(F.normalize(torch.randn(24, 8, 5, generator=gen), dim=1), lengths)
    caption_image = torch.arange(24) % 12
    encoded = EncodedSplit(images, [str(i) for i in range(12)], audio, caption_image, [str(j) for j in range(24)])
    plain, both = (DualEncoder(ModelConfig(image_to_speech_sima=w), None, None) for w in (0.0, 0.5))
    misa, sima = (similarity_matrix(images, audio, kind=kind) for kind in ("misa", "sima"))
    assert torch.equal(plain.caption_scores(images, audio), misa)
    torch.testing.assert_close(both.caption_scores(images, audio), misa + 0.5 * sima)
    full, full_plain = full_protocol(encoded, both), full_protocol(encoded, plain)
    assert full["speech_to_image"] == full_plain["speech_to_image"] == speech_to_image(misa, caption_image)
    assert full["image_to_speech"] == pytest.approx(image_to_speech(misa + 0.5 * sima, caption_image))
    assert full["image_to_speech"] != full_plain["image_to_speech"]
    pairs, pairs_plain = (pairs_protocol(encoded, m, n_pairs=8, draws=3) for m in (both, plain))
    assert pairs["speech_to_image"] == pairs_plain["speech_to_image"]
    summed = pairs_protocol(encoded, _Summed(), n_pairs=8, draws=3)["image_to_speech"]
    assert {k: v["mean"] for k, v in pairs["image_to_speech"].items()} == pytest.approx({k: v["mean"] for k, v in summed.items()})


def test_caption_ranking_sweep_scores_misa_plus_a_share_of_sima(tiny_run, tiny_scenes, capsys) -> None:
    """benchmarks/caption_ranking.py: weight 0 is the model's own figures both ways (its scores are MISA), and
    weight w is image -> speech by MISA + w SIMA, as a model with ``image_to_speech_sima = w`` evaluates."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from caption_ranking import sweep

    got = sweep(tiny_run, tiny_scenes, "test", [0.0, 0.5], draws=3)
    assert len(capsys.readouterr().out.splitlines()) == 4  # header, columns, two weights
    evaluation = api.open_evaluation(tiny_run, tiny_scenes, "test", progress=False)
    plain = evaluation.score("full", 3, 0)
    for direction, short in (("speech_to_image", "s2i"), ("image_to_speech", "i2s")):
        assert got[0.0]["full"][short] == pytest.approx([plain[direction][k] for k in ("r1", "r5", "r10", "median_rank")])
    evaluation.model.net.config.image_to_speech_sima = 0.5
    weighted = evaluation.score("full", 3, 0)
    assert got[0.5]["full"]["i2s"] == pytest.approx([weighted["image_to_speech"][k] for k in ("r1", "r5", "r10", "median_rank")])
    assert weighted["speech_to_image"] == plain["speech_to_image"]  # images ranked for a caption by MISA alone
    pairs = evaluation.score("pairs100", 3, 0)
    assert got[0.5]["pairs100"]["i2s"] == pytest.approx([pairs["image_to_speech"][k]["mean"] for k in ("r1", "r5", "r10")])
