"""Encoder output shapes, padding invariance, and checkpoint round trips."""

from __future__ import annotations

import pytest
import torch

from vgs.config import Config, ModelConfig
from vgs.errors import VGSError
from vgs.models import build_audio_encoder, build_image_encoder, build_model
from vgs.models.audio import stack_frames


def dual(**model) -> "torch.nn.Module":
    return build_model(Config(model=ModelConfig(**model)))


AUDIO_NETS = ["conv5", "conv6", "resdavenet", "resdavenet:stack2", "lstm", "gru"]


def audio_encoder(name: str) -> "torch.nn.Module":
    """``name`` from the registry, or ``resdavenet:stack2`` for two frames stacked."""
    name, _, stack = name.partition(":stack")
    return build_audio_encoder(ModelConfig(audio_encoder=name, embed_dim=24, audio_channels=32, rnn_hidden=16,
                                           rnn_subsample=4, audio_stack=int(stack or 1)), 40)


@pytest.mark.parametrize("name,size,hw", [("efficientnet-lite0", 224, 7), ("efficientnet-lite1", 224, 7),
                                          ("efficientnet-lite2", 224, 7), ("small-cnn", 128, 8),
                                          ("vgg16", 224, 14), ("vgg19", 224, 14), ("resnet50", 224, 7)])
def test_image_encoder_shapes(name: str, size: int, hw: int) -> None:
    encoder = build_image_encoder(name, embed_dim=32, pretrained=name.startswith("efficientnet-lite")).eval()
    with torch.no_grad():
        out = encoder(torch.randn(2, 3, size, size))
    assert out.shape == (2, 32, hw, hw)


def test_each_lite_variant_loads_its_own_pip_weights_and_refuses_another_variants() -> None:
    """Lite1/Lite2 load their packages' ImageNet weights (not Lite0's, not random); a wrong file is named."""
    from vgs.errors import VGSError
    from vgs.io import load_state_dict_file
    from vgs.models.image import resolve_weights_file

    stems = {}
    for name in ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"):
        path = resolve_weights_file(name, None)
        stem = build_image_encoder(name, 8, pretrained=True).trunk.net._conv_stem.weight
        torch.testing.assert_close(stem, load_state_dict_file(path)["_conv_stem.weight"])
        stems[name] = stem
    assert not torch.equal(stems["efficientnet-lite0"], stems["efficientnet-lite2"])
    lite0_file = str(resolve_weights_file("efficientnet-lite0", None))
    with pytest.raises(VGSError, match="efficientnet-lite0-.*not an efficientnet-lite2 state_dict"):
        build_image_encoder("efficientnet-lite2", 8, pretrained=True, weights_file=lite0_file)
    with pytest.raises(VGSError, match="stride 32, not 16"):
        build_image_encoder("efficientnet-lite2", 8, pretrained=False, stride=16)


def test_vgg19_head_is_3x3_and_vgg16_1x1() -> None:
    assert build_image_encoder("vgg19", 8, pretrained=False).head.kernel_size == (3, 3)
    assert build_image_encoder("vgg16", 8, pretrained=False).head.kernel_size == (1, 1)


@pytest.mark.parametrize("name", AUDIO_NETS)
def test_audio_encoder_shapes_and_lengths(name: str) -> None:
    encoder = audio_encoder(name).eval()
    lengths = torch.tensor([160, 97, 33])
    out, out_lengths = encoder(torch.randn(3, 40, 160), lengths)
    assert out.shape[:2] == (3, 24)
    assert out_lengths.tolist() == encoder.output_lengths(lengths).tolist()
    assert out.shape[2] == int(out_lengths.max())
    for b, length in enumerate(out_lengths.tolist()):
        assert out[b, :, length:].abs().sum() == 0  # padded frames are zero


@pytest.mark.parametrize("name", AUDIO_NETS)
def test_padding_does_not_change_frames(name: str) -> None:
    """An utterance encodes the same alone and in a batch with a longer one (eval mode)."""
    encoder = audio_encoder(name).eval()
    short = torch.randn(1, 40, 69)  # odd: a stack of two frames holds its last real frame and one of padding
    alone, alone_len = encoder(short, torch.tensor([69]))
    batch = torch.cat([torch.nn.functional.pad(short, (0, 91)), torch.randn(1, 40, 160)])
    batch[0, :, 69:] = 5.0  # garbage in the padding
    together, together_len = encoder(batch, torch.tensor([69, 160]))
    assert together_len[0] == alone_len[0]
    torch.testing.assert_close(together[0, :, : alone_len[0]], alone[0], atol=1e-5, rtol=1e-4)


def test_stacked_frames_hold_consecutive_frames_and_shorten_lengths() -> None:
    x = torch.arange(2 * 3 * 5, dtype=torch.float32).view(2, 3, 5)  # B x F x T
    stacked, lengths = stack_frames(x, torch.tensor([5, 3]), 2)
    assert stacked.shape == (2, 6, 3) and lengths.tolist() == [3, 2]
    torch.testing.assert_close(stacked[0, :, 1], torch.cat([x[0, :, 2], x[0, :, 3]]))  # frames 2 and 3, bands in order
    assert stacked[0, 3:, 2].abs().sum() == 0  # frame 4's partner is padding
    encoder = audio_encoder("resdavenet:stack2")
    assert encoder.downsample == 32 and encoder.output_lengths(torch.tensor([160, 33])).tolist() == [5, 2]


def test_only_resdavenet_stacks_frames() -> None:
    with pytest.raises(VGSError, match="model.audio_stack"):
        ModelConfig(audio_encoder="lstm", audio_stack=2).validate()


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


def test_the_trunk_reads_channels_last_pixels_on_cpu_and_gives_the_same_features() -> None:
    """The faster CPU layout is an implementation detail: same features (to float rounding), standard layout out."""
    encoder = build_image_encoder("efficientnet-lite0", 8, pretrained=True).eval()
    seen = []
    encoder.trunk.register_forward_pre_hook(lambda _, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    pixels = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        reference = encoder.trunk(pixels)
    features = encoder.trunk_forward(pixels)
    assert seen == [False, True]
    assert features.is_contiguous()
    torch.testing.assert_close(features, reference, atol=1e-4, rtol=1e-4)


def test_top_blocks_split_off_the_trunk_continue_it_exactly_and_train_with_frozen_statistics() -> None:
    """model.image_top_blocks: the trunk then ends below its last block (what the cache holds), the split-off top
    takes it on to the same embeddings; the top's weights train while its batch norm keeps its statistics."""
    whole = build_image_encoder("efficientnet-lite0", 8, pretrained=True).eval()
    split = build_image_encoder("efficientnet-lite0", 8, pretrained=True, top_blocks=1)
    split.head.load_state_dict(whole.head.state_dict())
    pixels = torch.randn(2, 3, 96, 96)
    below = split.eval().trunk_forward(pixels)
    assert below.shape == (2, 192, 3, 3)  # Lite0's block 14
    with torch.no_grad():
        torch.testing.assert_close(split.head_forward(below), whole(pixels))
    split.train()
    assert not split.trunk.training and not split.top.training
    statistics = split.top.bn.running_mean.clone()
    split.head_forward(below).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in split.top.parameters())
    assert not any(p.requires_grad for p in split.trunk.parameters())
    assert torch.equal(split.top.bn.running_mean, statistics)
    assert len(split.trunk.net._blocks) == 15 and not hasattr(split.trunk.net, "_conv_head")

    with pytest.raises(VGSError, match="only the efficientnet-lite trunks train top blocks, not vgg16"):
        build_image_encoder("vgg16", 8, pretrained=False, top_blocks=1)
    with pytest.raises(VGSError, match="expected 0 to 15 for this trunk's 16 blocks, got 16"):
        build_image_encoder("efficientnet-lite0", 8, pretrained=False, top_blocks=16)
    with pytest.raises(VGSError, match="needs model.image_stride 32"):
        build_image_encoder("efficientnet-lite0", 8, pretrained=False, top_blocks=1, stride=16)
    with pytest.raises(VGSError, match="needs model.freeze_trunk true"):
        ModelConfig(image_top_blocks=1, freeze_trunk=False).validate()
