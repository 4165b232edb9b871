"""Image and audio encoders and the two-branch model; :mod:`.factory` builds them from a config."""

from .audio import AudioEncoder
from .dual import DualEncoder
from .factory import AUDIO_ENCODERS, IMAGE_ENCODERS, build_audio_encoder, build_image_encoder, build_model, list_models
from .image import ImageEncoder

__all__ = ["AUDIO_ENCODERS", "IMAGE_ENCODERS", "AudioEncoder", "DualEncoder", "ImageEncoder", "build_audio_encoder",
           "build_image_encoder", "build_model", "list_models"]
