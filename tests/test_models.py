"""Encoder output shapes, padding invariance, and checkpoint round trips."""

from __future__ import annotations

import pytest
import torch

from vgs.config import ModelConfig
from vgs.features import AudioFeatureConfig
from vgs.models import DualEncoder, build_audio_encoder
from vgs.models.image import ImageEncoder


@pytest.mark.parametrize("name,size,hw", [("efficientnet-lite0", 224, 7), ("small-cnn", 128, 8),
                                          ("vgg16", 224, 14), ("vgg19", 224, 14), ("resnet50", 224, 7)])
def test_image_encoder_shapes(name: str, size: int, hw: int) -> None:
    encoder = ImageEncoder(name, embed_dim=32, pretrained=name == "efficientnet-lite0").eval()
    with torch.no_grad():
        out = encoder(torch.randn(2, 3, size, size))
    assert out.shape == (2, 32, hw, hw)


def test_vgg19_head_is_3x3_and_vgg16_1x1() -> None:
    assert ImageEncoder("vgg19", 8, pretrained=False).head.kernel_size == (3, 3)
    assert ImageEncoder("vgg16", 8, pretrained=False).head.kernel_size == (1, 1)


@pytest.mark.parametrize("name", ["conv5", "conv6", "resdavenet", "lstm", "gru"])
def test_audio_encoder_shapes_and_lengths(name: str) -> None:
    encoder = build_audio_encoder(name, input_dim=40, embed_dim=24, channels=32, hidden=16).eval()
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
    encoder = build_audio_encoder(name, input_dim=40, embed_dim=24, channels=32, hidden=16).eval()
    short = torch.randn(1, 40, 70)
    alone, alone_len = encoder(short, torch.tensor([70]))
    batch = torch.cat([torch.nn.functional.pad(short, (0, 90)), torch.randn(1, 40, 160)])
    batch[0, :, 70:] = 5.0  # garbage in the padding
    together, together_len = encoder(batch, torch.tensor([70, 160]))
    assert together_len[0] == alone_len[0]
    torch.testing.assert_close(together[0, :, : alone_len[0]], alone[0], atol=1e-5, rtol=1e-4)


def test_dual_encoder_similarity_and_cached_path() -> None:
    model = DualEncoder(ModelConfig(image_encoder="small-cnn", pretrained=False, audio_encoder="conv5", embed_dim=16,
                                    audio_channels=32, freeze_trunk=True), AudioFeatureConfig()).eval()
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
    model = DualEncoder(ModelConfig(image_encoder="small-cnn", pretrained=False, embed_dim=8, audio_channels=32,
                                    freeze_trunk=True), AudioFeatureConfig())
    assert all(not p.requires_grad for p in model.image.trunk.parameters())
    assert all(p.requires_grad for p in model.image.head.parameters())
    model.train()
    assert not model.image.trunk.training


def test_weights_from_a_local_file(tmp_path) -> None:
    """The --image-weights path: the same loader that a download ends in."""
    from torchvision import models

    reference = models.vgg16(weights=None)
    torch.save(reference.state_dict(), tmp_path / "vgg16.pth")
    encoder = ImageEncoder("vgg16", 8, pretrained=True, weights_file=str(tmp_path / "vgg16.pth"))
    torch.testing.assert_close(encoder.trunk[0].weight, reference.features[0].weight)


def test_missing_weights_offline_gives_a_clear_error(tmp_path, monkeypatch) -> None:
    from vgs.errors import VGSError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(VGSError, match="--image-weights"):
        ImageEncoder("resnet50", 8, pretrained=True)
    torch.save({"not": "weights"}, tmp_path / "bad.pth")
    with pytest.raises(VGSError, match="state_dict"):
        ImageEncoder("vgg16", 8, pretrained=True, weights_file=str(tmp_path / "bad.pth"))


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
    from vgs.config import ModelConfig
    from vgs.features import AudioFeatureConfig
    from vgs.models.dual import DualEncoder

    for mode, expected in (("utterance", True), ("global", False)):
        config = ModelConfig(image_encoder="small-cnn", audio_encoder="resdavenet", embed_dim=16, audio_channels=32,
                             pretrained=False, freeze_trunk=False, audio_norm=mode)
        assert DualEncoder(config, AudioFeatureConfig()).audio.input_norm.per_utterance is expected
