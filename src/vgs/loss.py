"""Contrastive losses over a ``B x B`` similarity matrix ``S[i, j] = s(image_i, caption_j)``.

The diagonal holds the true pairs.  ``same[i, j]`` marks pairs whose image ids are
equal (two captions of one image in the batch): those are never impostors.

* ``hinge_sampled`` (paper Eq. 2): for each pair, one impostor caption and one
  impostor image drawn at random from the batch,
  ``max(0, m - S_ii + S_i,imp) + max(0, m - S_ii + S_imp,i)``.
* ``hinge_all``: the same hinge averaged over every valid in-batch impostor.
* ``infonce``: symmetric cross-entropy over ``S / temperature`` (learnable); with
  :class:`Impostors` from past batches (a queue, :mod:`vgs.negatives`) appended to the
  candidates of each direction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


def same_image_mask(image_ids: torch.Tensor) -> torch.Tensor:
    """``B`` integer image ids -> ``B x B`` bool, True where two pairs share an image."""
    return image_ids[:, None] == image_ids[None, :]


def _sample_impostors(valid: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """For each row of ``valid`` (``B x B`` bool) pick one True column uniformly. Rows with none pick themselves."""
    weights = valid.float()
    empty = weights.sum(1) == 0
    weights[empty] = torch.eye(valid.shape[0], device=valid.device)[empty]
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)


def hinge_sampled(sim: torch.Tensor, same: torch.Tensor, margin: float = 1.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Paper Eq. 2 with one sampled impostor image and caption per pair. Returns a scalar."""
    valid = ~same
    positive = sim.diagonal()
    caption_imp = _sample_impostors(valid, generator)  # for image i, a caption of another image
    image_imp = _sample_impostors(valid, generator)  # for caption i, an image of another pair
    rows = torch.arange(sim.shape[0], device=sim.device)
    has = valid.any(1).float()
    loss = F.relu(margin - positive + sim[rows, caption_imp]) + F.relu(margin - positive + sim[image_imp, rows])
    return (loss * has).sum() / has.sum().clamp_min(1.0)


def hinge_all(sim: torch.Tensor, same: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Margin hinge averaged over all in-batch impostors, both directions. Returns a scalar."""
    valid = (~same).float()
    positive = sim.diagonal()
    image_to_caption = F.relu(margin - positive[:, None] + sim) * valid
    caption_to_image = F.relu(margin - positive[None, :] + sim) * valid
    per_pair = valid.sum().clamp_min(1.0)
    return (image_to_caption.sum() + caption_to_image.sum()) / per_pair


@dataclass
class Impostors:
    """Extra candidates for InfoNCE, scored against the batch.

    ``captions``: ``B x Qc`` scores of each batch image against ``Qc`` extra captions;
    ``images``: ``Qi x B`` scores of ``Qi`` extra images against each batch caption;
    ``captions_same`` / ``images_same``: the same shapes, True where the pair shares an image
    (a stale positive, masked out rather than pushed away).
    """

    captions: torch.Tensor
    captions_same: torch.Tensor
    images: torch.Tensor
    images_same: torch.Tensor


def info_nce(sim: torch.Tensor, same: torch.Tensor, logit_scale: torch.Tensor,
             impostors: Impostors | None = None) -> torch.Tensor:
    """Symmetric InfoNCE; other captions of the same image are masked out. Returns a scalar.

    With ``impostors``, image ``i`` is scored against the ``B`` batch captions then the ``Qc`` extra
    ones, and caption ``j`` against the ``B`` batch images then the ``Qi`` extra ones.
    """
    scale = logit_scale.exp().clamp(max=100.0)
    off_diagonal_same = same & ~torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device)
    logits = (sim * scale).masked_fill(off_diagonal_same, float("-inf"))
    per_image, per_caption = logits, logits.T
    if impostors is not None:
        per_image = torch.cat([per_image, (impostors.captions * scale).masked_fill(impostors.captions_same, float("-inf"))], 1)
        per_caption = torch.cat([per_caption, (impostors.images * scale).masked_fill(impostors.images_same, float("-inf")).T], 1)
    targets = torch.arange(sim.shape[0], device=sim.device)
    return 0.5 * (F.cross_entropy(per_image, targets) + F.cross_entropy(per_caption, targets))


def voice_info_nce(pooled: torch.Tensor, groups: torch.Tensor, scale: float = 10.0) -> torch.Tensor:
    """Speech-to-speech InfoNCE: renderings of one caption (same ``groups`` id) are positives.

    ``pooled``: ``B x D`` unit-length caption embeddings; ``groups``: ``B`` ids.  For each caption
    with at least one other rendering in the batch, ``-log(sum_pos exp(s) / sum_others exp(s))``
    over ``scale * cosine``; the mean over those captions (0 when there are none).  Returns a scalar.
    """
    eye = torch.eye(len(groups), dtype=torch.bool, device=pooled.device)
    positive = (groups[:, None] == groups[None, :]) & ~eye
    logits = (scale * pooled @ pooled.T).masked_fill(eye, float("-inf"))
    has = positive.any(1)
    if not has.any():
        return pooled.sum() * 0.0
    log_all = torch.logsumexp(logits, dim=1)
    log_pos = torch.logsumexp(logits.masked_fill(~positive, float("-inf")), dim=1)
    return (log_all - log_pos)[has].mean()


class ContrastiveLoss(nn.Module):
    """The configured loss; owns InfoNCE's learnable log-scale ``log(1 / temperature)``."""

    def __init__(self, kind: str = "infonce", margin: float = 1.0, init_temperature: float = 0.07):
        super().__init__()
        if kind not in ("hinge_sampled", "hinge_all", "infonce"):
            raise ValueError(f"unknown loss {kind!r}")
        self.kind = kind
        self.margin = margin
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)), requires_grad=kind == "infonce")

    def forward(self, sim: torch.Tensor, image_ids: torch.Tensor, generator: torch.Generator | None = None,
                impostors: Impostors | None = None) -> torch.Tensor:
        """``B x B`` scores and ``B`` image ids -> scalar loss; ``impostors`` only with InfoNCE."""
        if impostors is not None and self.kind != "infonce":
            raise ValueError(f"extra impostors need the infonce loss, not {self.kind!r}")
        same = same_image_mask(image_ids.to(sim.device))
        if self.kind == "hinge_sampled":
            return hinge_sampled(sim, same, self.margin, generator)
        if self.kind == "hinge_all":
            return hinge_all(sim, same, self.margin)
        return info_nce(sim, same, self.logit_scale, impostors)
