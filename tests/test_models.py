"""Encoder output shapes, padding invariance, and checkpoint round trips."""

from __future__ import annotations

import pytest
import torch

from vgs.config import Config, ModelConfig
from vgs.models import build_audio_encoder, build_image_encoder, build_model


def dual(**model) -> "torch.nn.Module":
    return build_model(Config(model=ModelConfig(**model)))


def audio_encoder(name: str) -> "torch.nn.Module":
    return build_audio_encoder(ModelConfig(audio_encoder=name, embed_dim=24, audio_channels=32, rnn_hidden=16,
                                           rnn_subsample=4), 40)


@pytest.mark.parametrize("name,size,hw", [("efficientnet-lite0", 224, 7), ("small-cnn", 128, 8),
                                          ("vgg16", 224, 14), ("vgg19", 224, 14), ("resnet50", 224, 7)])
def test_image_encoder_shapes(name: str, size: int, hw: int) -> None:
    encoder = build_image_encoder(name, embed_dim=32, pretrained=name == "efficientnet-lite0").eval()
    with torch.no_grad():
        out = encoder(torch.randn(2, 3, size, size))
    assert out.shape == (2, 32, hw, hw)


def test_vgg19_head_is_3x3_and_vgg16_1x1() -> None:
    assert build_image_encoder("vgg19", 8, pretrained=False).head.kernel_size == (3, 3)
    assert build_image_encoder("vgg16", 8, pretrained=False).head.kernel_size == (1, 1)


@pytest.mark.parametrize("name", ["conv5", "conv6", "resdavenet", "lstm", "gru"])
def test_audio_encoder_shapes_and_lengths(name: str) -> None:
    encoder = audio_encoder(name).eval()
    lengths = torch.tensor([160, 97, 33])
    out, out_lengths = encoder(torch.randn(3, 40, 160), lengths)
    assert out.shape[:2] == (3, 24)
    assert out_lengths.tolist() == encoder.output_lengths(lengths).tolist()
    assert out.shape[2] == int(out_lengths.max())
    for b, length in enumerate(out_lengths.tolist()):
        assert out[b, :, length:].abs().sum() == 0  # padded frames are zero


@pytest.mark.parametrize("name", ["conv5", "conv6", "resdavenet", "lstm", "gru"])
def test_padding_does_not_change_frames(name: str) -> None:
    """An utterance encodes the same alone and in a batch with a longer one (eval mode)."""
    encoder = audio_encoder(name).eval()
    short = torch.randn(1, 40, 70)
    alone, alone_len = encoder(short, torch.tensor([70]))
    batch = torch.cat([torch.nn.functional.pad(short, (0, 90)), torch.randn(1, 40, 160)])
    batch[0, :, 70:] = 5.0  # garbage in the padding
    together, together_len = encoder(batch, torch.tensor([70, 160]))
    assert together_len[0] == alone_len[0]
    torch.testing.assert_close(together[0, :, : alone_len[0]], alone[0], atol=1e-5, rtol=1e-4)


def test_dual_encoder_similarity_and_cached_path() -> None:
    model = dual(image_encoder="small-cnn", pretrained=False, audio_encoder="conv5", embed_dim=16, audio_channels=32,
                 freeze_trunk=True).eval()
    images = torch.randn(3, 3, 128, 128)
    with torch.no_grad():
        direct = model.encode_images(images)
        cached = model.encode_image_features(model.image.trunk_forward(images))
        audio, lengths = model.encode_audio(torch.randn(4, 40, 128), torch.tensor([128, 100, 64, 20]))
        sim = model.similarity(direct, audio, lengths)
    torch.testing.assert_close(direct, cached)
    assert sim.shape == (3, 4)
    assert torch.all(sim.abs() <= 1.0 + 1e-5)  # normalized embeddings


def test_frozen_trunk_gets_no_gradient() -> None:
    model = dual(image_encoder="small-cnn", pretrained=False, embed_dim=8, audio_channels=32, freeze_trunk=True)
    assert all(not p.requires_grad for p in model.image.trunk.parameters())
    assert all(p.requires_grad for p in model.image.head.parameters())
    model.train()
    assert not model.image.trunk.training


def test_weights_from_a_local_file(tmp_path) -> None:
    """The --image-weights path: the same loader that a download ends in."""
    from torchvision import models

    reference = models.vgg16(weights=None)
    torch.save(reference.state_dict(), tmp_path / "vgg16.pth")
    encoder = build_image_encoder("vgg16", 8, pretrained=True, weights_file=str(tmp_path / "vgg16.pth"))
    torch.testing.assert_close(encoder.trunk[0].weight, reference.features[0].weight)


def test_missing_weights_offline_gives_a_clear_error(tmp_path, monkeypatch) -> None:
    from vgs.errors import VGSError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(VGSError, match="--image-weights"):
        build_image_encoder("resnet50", 8, pretrained=True)
    torch.save({"not": "weights"}, tmp_path / "bad.pth")
    with pytest.raises(VGSError, match="state_dict"):
        build_image_encoder("vgg16", 8, pretrained=True, weights_file=str(tmp_path / "bad.pth"))


def test_utterance_norm_ignores_level_colouring_and_padding() -> None:
    from vgs.models.audio import InputNorm

    norm = InputNorm(40, per_utterance=True)
    x = torch.randn(2, 40, 50)
    lengths = torch.tensor([50, 30])
    base = norm(x, lengths)
    coloured = norm(x * 1.0 + torch.linspace(-6, 6, 40)[None, :, None] + 3.0, lengths)  # EQ and gain in dB
    assert torch.allclose(base, coloured, atol=1e-4)
    padded = x.clone()
    padded[1, :, 30:] = 99.0  # what lies past a caption's end does not matter
    assert torch.allclose(norm(padded, lengths)[1, :, :30], base[1, :, :30], atol=1e-5)
    real = base[1, :, :30]
    assert abs(float(real.mean())) < 1e-4 and abs(float(real.std(unbiased=False)) - 1) < 1e-3


def test_dual_encoder_uses_the_configured_audio_norm() -> None:
    for mode, expected in (("utterance", True), ("global", False)):
        model = dual(image_encoder="small-cnn", audio_encoder="resdavenet", embed_dim=16, audio_channels=32,
                     pretrained=False, freeze_trunk=False, audio_norm=mode)
        assert model.audio.input_norm.per_utterance is expected


def test_registries_drive_validation_help_and_listing() -> None:
    from vgs.cli import build_parser
    from vgs.errors import VGSError
    from vgs.models import AUDIO_ENCODERS, IMAGE_ENCODERS, list_models

    listed = list_models()
    assert list(listed["image"]) == list(IMAGE_ENCODERS) and list(listed["audio"]) == list(AUDIO_ENCODERS)
    train_help = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert all(name in train_help for name in (*IMAGE_ENCODERS, *AUDIO_ENCODERS))
    with pytest.raises(VGSError, match="model.image_encoder: expected one of " + ", ".join(IMAGE_ENCODERS)):
        ModelConfig(image_encoder="alexnet").validate()
    with pytest.raises(VGSError, match="model.image_stride"):
        build_image_encoder("small-cnn", 8, pretrained=False, stride=16)


def test_the_image_encoder_owns_its_input_normalization() -> None:
    from vgs.images import IMAGENET_MEAN
    from vgs.models.factory import IMAGE_ENCODERS, pixel_config

    config = Config()
    config.model.image_encoder = "efficientnet-lite0"
    assert pixel_config(config).mean == IMAGE_ENCODERS["efficientnet-lite0"].normalization[0]
    assert config.image.mean == IMAGENET_MEAN  # decided, not written into the config
    config.model.image_encoder = "vgg16"
    assert pixel_config(config).mean == IMAGENET_MEAN
    config.image.mean = (0.5, 0.5, 0.5)  # a saved run's (or a user's) own values are kept
    config.model.image_encoder = "efficientnet-lite0"
    assert pixel_config(config).mean == (0.5, 0.5, 0.5)
