"""The two-branch ("Siamese") model: image encoder, audio encoder, matchmap similarity.

Assembled by :func:`vgs.models.factory.build_model`, which builds both branches from a config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from ..similarity import DEFAULT_CHUNK_BYTES, PackedFrames, similarity_matrix
from .audio import AudioEncoder
from .image import ImageEncoder

if TYPE_CHECKING:  # the config module reads the encoder registries: no import back at run time
    from ..config import ModelConfig


class DualEncoder(nn.Module):
    """Images ``B x 3 x S x S`` -> ``B x D x H x W``; audio ``B x F x T`` -> ``B x D x T'``."""

    def __init__(self, config: ModelConfig, image: ImageEncoder, audio: AudioEncoder):
        super().__init__()
        self.config = config
        self.image = image
        self.audio = audio

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) if self.config.normalize else x

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``B x 3 x S x S`` pixels -> ``B x D x H x W`` region embeddings."""
        return self._norm(self.image(images))

    def encode_image_features(self, trunk_features: torch.Tensor) -> torch.Tensor:
        """Cached trunk outputs ``B x C x H x W`` -> ``B x D x H x W`` region embeddings."""
        return self._norm(self.image.head_forward(trunk_features))

    def encode_audio(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``B x F x T`` features, ``B`` lengths -> (``B x D x T'`` frames, ``B`` lengths ``T'``)."""
        frames, out_lengths = self.audio(features, lengths)
        frames = self._norm(frames)
        return frames, out_lengths

    def forward(self, images: torch.Tensor, audio: torch.Tensor, lengths: torch.Tensor,
                images_are_features: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Both branches at once (what DistributedDataParallel wraps).

        Returns ``B x D x H x W`` image embeddings, ``B x D x T'`` audio embeddings and ``B`` lengths ``T'``.
        """
        image_embeddings = self.encode_image_features(images) if images_are_features else self.encode_images(images)
        audio_embeddings, out_lengths = self.encode_audio(audio, lengths)
        return image_embeddings, audio_embeddings, out_lengths

    def similarity(self, image_embeddings: torch.Tensor, audio_embeddings: torch.Tensor | PackedFrames,
                   audio_lengths: torch.Tensor | None = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> torch.Tensor:
        """``N x D x H x W`` and ``M x D x T'`` (or packed) embeddings -> ``N x M`` scores (the configured kind)."""
        return similarity_matrix(image_embeddings, audio_embeddings, audio_lengths, self.config.similarity, chunk_bytes)

    def caption_scores(self, image_embeddings: torch.Tensor, audio_embeddings: PackedFrames,
                       scores: torch.Tensor | None = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> torch.Tensor:
        """``N x M`` scores that rank captions for an image (image -> speech): :meth:`similarity` plus
        ``config.image_to_speech_sima`` times SIMA; ``scores``: :meth:`similarity` of the same pairs, when the
        caller has it already."""
        scores = self.similarity(image_embeddings, audio_embeddings, chunk_bytes=chunk_bytes) if scores is None else scores
        weight = self.config.image_to_speech_sima
        if not weight:
            return scores
        return scores + weight * similarity_matrix(image_embeddings, audio_embeddings, kind="sima", chunk_bytes=chunk_bytes).to(scores)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]
