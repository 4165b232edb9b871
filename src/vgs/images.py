"""Loading images robustly and turning them into normalized tensors.

Any format Pillow reads (JPEG, PNG, ...; RGB, grayscale, RGBA, CMYK, palette) is
converted to RGB, resized to the encoder's input size and ImageNet-normalized.
Decompression bombs, truncated and 1x1 images raise :class:`~vgs.errors.InputError`.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError

from .errors import InputError, VGSError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_PIXELS = 64_000_000  # ~8000 x 8000; larger images are refused, not decoded
MIN_SIDE = 8

Image.MAX_IMAGE_PIXELS = MAX_PIXELS
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass
class ImageConfig:
    """How images become tensors: ``size`` x ``size`` RGB, normalized by ``mean``/``std``."""

    size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def validate(self) -> None:
        if self.size < 32:  # the image trunks downsample by 32
            raise VGSError(f"image.size: expected at least 32 pixels, got {self.size}")
        with np.errstate(all="ignore"):  # float32, as to_tensor computes: pixels 0 and 1 must normalize to finite values
            mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
            ends = (np.array([[0.0], [1.0]], np.float32) - mean) / std
        if mean.shape != (3,) or std.shape != (3,) or not np.all(std > 0) or not np.all(np.isfinite(ends)):
            raise VGSError(f"image.mean/std: expected 3 numbers each, std > 0, giving finite normalized pixels; "
                           f"got {self.mean} / {self.std}")


def _open(source: str | Path | bytes, label: str, draft: int | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open and decode an image, refusing bombs; ``draft``: JPEGs decode at a reduced scale of at least
    ``draft`` pixels a side (``Image.draft``); ``max_pixels``: the budget checked after that reduction."""
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise InputError(label, "image file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            if image.width * image.height > MAX_PIXELS:
                raise InputError(label, f"image too large ({image.width}x{image.height} pixels; at most {MAX_PIXELS:,})")
            if draft is not None:
                image.draft("RGB", (draft, draft))
            if image.width * image.height > max_pixels:
                raise InputError(label, f"image too large to decode here ({image.width}x{image.height} pixels; "
                                 f"at most {max_pixels:,})")
            image.load()
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(label, f"image too large (decompression bomb guard: {exc})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(label, f"unreadable or truncated image ({str(exc)[:120]}); expected JPEG/PNG") from exc
    if min(image.size) < MIN_SIDE:
        raise InputError(label, f"image is {image.width}x{image.height}; expected at least {MIN_SIDE}x{MIN_SIDE} pixels")
    return image


def load_image(source: str | Path | bytes, name: str | None = None) -> Image.Image:
    """Open any common image as RGB (CMYK, palette, RGBA, grayscale all converted)."""
    label = name or (str(source) if not isinstance(source, bytes) else "<upload>")
    return to_rgb(_open(source, label))


def load_thumbnail(source: str | Path | bytes, size: int, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """An RGB image at most ``size`` pixels a side, decoding as little as the format allows.

    JPEGs decode at a reduced scale (1/2 to 1/8); other formats decode whole, then shrink before
    the mode conversion.  Images over ``max_pixels`` (after that reduction) raise InputError.
    """
    image = _open(source, str(source) if not isinstance(source, bytes) else "<image>", draft=size, max_pixels=max_pixels)
    if image.mode in ("RGB", "L", "RGBA", "LA", "CMYK"):
        image.thumbnail((size, size))
    image = to_rgb(image)
    image.thumbnail((size, size))
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any decoded mode as RGB: 16-bit grayscale scaled to 8 bits, transparency over white."""
    if image.mode.startswith("I"):  # 16-bit grayscale PNG/TIFF ("I;16", or "I"): scale to 8 bits, Pillow would clip
        array = np.asarray(image, dtype=np.float64)
        if image.mode != "I" or array.max(initial=0) > 255:
            array = array / 257.0
        image = Image.fromarray(np.clip(array.round(), 0, 255).astype(np.uint8), "L")
    if image.mode == "RGBA" or (image.mode == "P" and "transparency" in image.info) or image.mode == "LA":
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def check_image(path: str | Path) -> None:
    """Raise InputError when ``path`` is not a usable image (decodes it fully)."""
    load_image(path)


def to_tensor(image: Image.Image, config: ImageConfig = ImageConfig(), flip: bool = False) -> torch.Tensor:
    """Resize (squash) to ``size`` x ``size``, normalize. Returns ``3 x size x size`` float32."""
    image = image.resize((config.size, config.size), Image.BICUBIC)
    if flip:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    array = np.asarray(image, dtype=np.float32) / 255.0
    mean = np.asarray(config.mean, dtype=np.float32)
    std = np.asarray(config.std, dtype=np.float32)
    return torch.from_numpy(((array - mean) / std).transpose(2, 0, 1).copy())


def load_image_tensor(source: str | Path | bytes, config: ImageConfig = ImageConfig(), flip: bool = False) -> torch.Tensor:
    """``3 x size x size`` normalized tensor from a file or bytes."""
    return to_tensor(load_image(source), config, flip)


def denormalize(tensor: torch.Tensor, config: ImageConfig = ImageConfig()) -> np.ndarray:
    """Undo normalization: ``3 x H x W`` tensor to ``H x W x 3`` uint8 array for plots."""
    mean = torch.tensor(config.mean).view(3, 1, 1)
    std = torch.tensor(config.std).view(3, 1, 1)
    array = (tensor.cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    return (array * 255).round().astype(np.uint8)
