"""Loss properties: zero when positives win by the margin, masking of same-image pairs, gradients."""

from __future__ import annotations

import pytest
import torch

from vgs.loss import ContrastiveLoss, Impostors, hinge_all, hinge_sampled, info_nce, same_image_mask


def separated(b: int = 6, gap: float = 1.5) -> torch.Tensor:
    sim = torch.rand(b, b) * 0.1
    sim.diagonal().add_(gap)
    return sim


def test_hinges_are_zero_when_every_positive_wins_by_the_margin() -> None:
    sim = separated()
    same = same_image_mask(torch.arange(6))
    assert hinge_all(sim, same, margin=1.0) == 0
    assert hinge_sampled(sim, same, margin=1.0) == 0


def test_hinges_are_positive_otherwise() -> None:
    sim = separated(gap=0.5)
    same = same_image_mask(torch.arange(6))
    assert hinge_all(sim, same, 1.0) > 0
    assert hinge_sampled(sim, same, 1.0) > 0


def test_captions_of_the_same_image_are_never_impostors() -> None:
    # Pairs 0 and 1 share an image; their cross scores are huge but must not count.
    ids = torch.tensor([0, 0, 1, 2])
    sim = separated(4)
    sim[0, 1] = sim[1, 0] = 50.0
    same = same_image_mask(ids)
    assert hinge_all(sim, same) == 0
    for seed in range(20):
        assert hinge_sampled(sim, same, generator=torch.Generator().manual_seed(seed)) == 0
    other = sim.clone()
    other[0, 1] = other[1, 0] = -50.0
    torch.testing.assert_close(info_nce(sim, same, torch.tensor(2.0)), info_nce(other, same, torch.tensor(2.0)))


def test_infonce_decreases_with_separation() -> None:
    same = same_image_mask(torch.arange(6))
    scale = torch.tensor(2.0)
    assert info_nce(separated(gap=3.0), same, scale) < info_nce(separated(gap=0.1), same, scale)


@pytest.mark.parametrize("kind", ["hinge_sampled", "hinge_all", "infonce"])
def test_gradients_reach_both_branches(kind: str) -> None:
    from vgs.similarity import similarity_matrix

    images = torch.randn(4, 8, 3, 3, requires_grad=True)
    audio = torch.randn(4, 8, 6, requires_grad=True)
    loss = ContrastiveLoss(kind)(similarity_matrix(images, audio, torch.tensor([6, 5, 4, 3])), torch.arange(4))
    loss.backward()
    assert images.grad.abs().sum() > 0 and audio.grad.abs().sum() > 0


def test_temperature_is_learnable_only_for_infonce() -> None:
    assert ContrastiveLoss("infonce").logit_scale.requires_grad
    assert not ContrastiveLoss("hinge_all").logit_scale.requires_grad


def _voice_info_nce_naive(pooled: torch.Tensor, groups: torch.Tensor, scale: float) -> torch.Tensor:
    losses = []
    for i in range(len(groups)):
        others = [j for j in range(len(groups)) if j != i]
        positives = [j for j in others if groups[j] == groups[i]]
        if not positives:
            continue
        s = lambda j: torch.exp(scale * pooled[i] @ pooled[j])  # noqa: E731
        losses.append(-torch.log(sum(s(j) for j in positives) / sum(s(j) for j in others)))
    return torch.stack(losses).mean()


def test_voice_info_nce_matches_the_naive_reference() -> None:
    from vgs.loss import voice_info_nce

    pooled = torch.nn.functional.normalize(torch.randn(8, 5), dim=1)
    groups = torch.tensor([0, 0, 1, 1, 2, 3, 3, 3])  # item 4 has no other rendering: left out
    assert torch.allclose(voice_info_nce(pooled, groups, 10.0), _voice_info_nce_naive(pooled, groups, 10.0), atol=1e-5)
    assert voice_info_nce(pooled, torch.arange(8)) == 0  # no pairs: nothing to pull together
    together = torch.nn.functional.normalize(torch.eye(4).repeat_interleave(2, 0), dim=1)
    assert voice_info_nce(together, torch.arange(4).repeat_interleave(2), 10.0) < 0.01


def _info_nce_naive(sim, ids, scale, impostors):
    """Loop reference: each image against the batch captions then the extra ones, each caption likewise."""
    b = len(ids)
    total = 0.0
    for i in range(b):
        candidates = [sim[i, j] for j in range(b) if j == i or ids[j] != ids[i]]
        candidates += [impostors.captions[i, q] for q in range(impostors.captions.shape[1]) if not impostors.captions_same[i, q]]
        total += -(scale * sim[i, i] - torch.logsumexp(scale * torch.stack(candidates), 0)) / (2 * b)
    for j in range(b):
        candidates = [sim[i, j] for i in range(b) if i == j or ids[i] != ids[j]]
        candidates += [impostors.images[q, j] for q in range(impostors.images.shape[0]) if not impostors.images_same[q, j]]
        total += -(scale * sim[j, j] - torch.logsumexp(scale * torch.stack(candidates), 0)) / (2 * b)
    return total


def test_info_nce_with_queued_impostors_matches_the_naive_reference() -> None:
    generator = torch.Generator().manual_seed(3)
    ids = torch.tensor([0, 0, 1, 2, 3, 3])
    sim = torch.rand(6, 6, generator=generator)
    queued_caption_ids, queued_image_ids = torch.tensor([1, 5, 6, 0]), torch.tensor([7, 2, 8])
    impostors = Impostors(torch.rand(6, 4, generator=generator), ids[:, None] == queued_caption_ids[None, :],
                          torch.rand(3, 6, generator=generator), queued_image_ids[:, None] == ids[None, :])
    assert impostors.captions_same.any() and impostors.images_same.any()  # stale positives are in the test
    scale = torch.tensor(2.0)
    got = info_nce(sim, same_image_mask(ids), scale, impostors)
    assert torch.allclose(got, _info_nce_naive(sim, ids, scale.exp(), impostors), atol=1e-5)
    assert got > info_nce(sim, same_image_mask(ids), scale)  # more impostors, a larger loss


def test_masked_impostors_change_nothing_and_need_infonce() -> None:
    ids = torch.arange(5)
    sim = torch.rand(5, 5)
    masked = Impostors(torch.rand(5, 3), torch.ones(5, 3, dtype=torch.bool), torch.rand(2, 5), torch.ones(2, 5, dtype=torch.bool))
    scale = torch.tensor(1.5)
    assert torch.allclose(info_nce(sim, same_image_mask(ids), scale, masked), info_nce(sim, same_image_mask(ids), scale))
    with pytest.raises(ValueError, match="infonce"):
        ContrastiveLoss("hinge_all")(sim, ids, impostors=masked)
