"""Image and audio encoders and the two-branch model."""

from .audio import AudioEncoder, build_audio_encoder
from .dual import DualEncoder
from .image import ImageEncoder

__all__ = ["AudioEncoder", "DualEncoder", "ImageEncoder", "build_audio_encoder"]
