"""Smaller embeddings for a trained model: ``vgs export RUN --out OUT --embed-dim K --data DATA``.

MISA scores unit-length embeddings (``model.normalize``).  Following the model's last linear layers by
a ``K x D`` projection ``P`` with orthonormal rows, then normalizing, gives a model whose embeddings have
``K`` dimensions.  ``P`` folds into those layers (the image head's convolutions, the audio branch's
``proj``), so the result is an ordinary model of ``embed_dim`` K that every command loads; and since
``normalize(P (h / |h|)) = normalize(P h)``, the smaller model's embeddings are the projected, renormalized
embeddings of the original.

``P`` is the top ``K`` right singular vectors (uncentered) of equal-size samples of a data set's
train-split regions and caption frames: the directions both branches use most.  On Flickr8k dev, the
512-dimensional model shipped before ``runs/f8k_w2`` (``runs/f8k_whisper``), exported at K = 64, kept
its recall (``full`` R@10 0.421 / 0.405 against 0.422 / 0.400; docs/results.md, levers), and its index
of 100,000 photos took 7,872 bytes per image against 69,022, keeping 98% of exhaustive top-10s
(docs/benchmarks.md, section 8).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from .codecs import principal_basis
from .errors import VGSError

if TYPE_CHECKING:
    from .api import Model
    from .config import Config

SAMPLE = 50_000  # regions, and as many frames, the projection is fitted on
FIT_IMAGES = 2_000  # train images (and their captions) encoded to draw them from


def _check_dim(dim: int, width: int) -> None:
    if not 1 <= dim < width:
        raise VGSError(f"--embed-dim: expected 1..{width - 1} (smaller than the model's {width}), got {dim}")


def fit_projection(regions: torch.Tensor, frames: torch.Tensor, dim: int, sample: int = SAMPLE, seed: int = 0) -> torch.Tensor:
    """``m x D`` regions and ``m' x D`` frames (unit length) -> ``K x D`` orthonormal rows: the top ``dim``
    right singular vectors of up to ``sample`` of each, stacked (uncentered, like the scores)."""
    width = regions.shape[1]
    _check_dim(dim, width)
    if frames.shape[1] != width or not len(regions) or not len(frames):
        raise VGSError(f"--embed-dim: expected regions and frames of {width} dimensions to fit on, got "
                       f"{len(regions)} regions, {len(frames)} frames of {frames.shape[1]}")
    rng = np.random.default_rng(seed)
    picks = [x[torch.from_numpy(np.sort(rng.choice(len(x), min(len(x), sample), replace=False)))] for x in (regions, frames)]
    return principal_basis(torch.cat(picks), dim)


def output_layers(net: nn.Module) -> list[nn.Module]:
    """The linear layers whose outputs are the model's embeddings (before normalization): the image head's
    convolutions (summed by a multi-scale head) and the audio branch's projection.  Refuses models where a
    projection could not be folded in."""
    if not net.config.normalize:
        raise VGSError("--embed-dim: the model does not normalize its embeddings (model.normalize false), so a "
                       "projection would change its scores beyond the dropped dimensions")
    head = net.image.head
    image = [head] if isinstance(head, nn.Conv2d) else [head.fine, head.coarse]
    proj = getattr(net.audio, "proj", None)
    if not isinstance(proj, (nn.Conv1d, nn.Linear)):
        raise VGSError(f"--embed-dim: the {net.config.audio_encoder} audio encoder does not end in a linear layer; "
                       "only models whose audio branch ends in a projection can be made smaller")
    return [*image, proj]


@torch.no_grad()
def fold_projection(net: nn.Module, projection: torch.Tensor) -> dict[str, torch.Tensor]:
    """The state dict of ``net`` followed by ``projection`` (``K x D``): every output layer's weight and
    bias multiplied by it over their output channels.  Load it into a model built with ``embed_dim`` K."""
    state = {name: value.clone() for name, value in net.state_dict().items()}
    names = {id(module): name for name, module in net.named_modules()}
    for layer in output_layers(net):
        prefix = names[id(layer)]
        weight = layer.weight.float()
        state[f"{prefix}.weight"] = torch.einsum("kd,d...->k...", projection, weight).to(layer.weight.dtype)
        if layer.bias is not None:
            state[f"{prefix}.bias"] = (projection @ layer.bias.float()).to(layer.bias.dtype)
    return state


def model_projection(model: "Model", dim: int, data: str | None = None, progress: bool = True) -> torch.Tensor:
    """The ``dim x D`` projection :func:`smaller_model` folds in, fitted on the first :data:`FIT_IMAGES`
    images of ``data``'s train split (default: the data set the model was trained on) and their spoken
    captions."""
    from .data.pipeline import open_split
    from .evaluate import encode_split

    config = copy.deepcopy(model.config)
    config.data = str(data) if data else config.data
    if not config.data:
        raise VGSError("--embed-dim: give --data DIR, a data set with a train split to fit the projection on "
                       "(this model does not name the one it was trained on)")
    width = model.embed_dim
    _check_dim(dim, width)
    output_layers(model.net)  # refused before any encoding
    encoded = encode_split(model.net, open_split(config, "train", model.net.image, progress=progress), max_images=FIT_IMAGES,
                           progress=progress)
    regions = encoded.images.flatten(2).transpose(1, 2).reshape(-1, width)
    return fit_projection(regions, encoded.audio.frames, dim)


def smaller_model(model: "Model", dim: int, data: str | None = None, progress: bool = True) -> tuple[dict[str, torch.Tensor], "Config"]:
    """``model`` with ``dim``-dimensional embeddings: (its state dict with :func:`model_projection` folded
    in, its config with ``model.embed_dim`` = ``dim``)."""
    state = fold_projection(model.net, model_projection(model, dim, data, progress))
    config = copy.deepcopy(model.config)
    config.model.embed_dim = dim
    return state, config
