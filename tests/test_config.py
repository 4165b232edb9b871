"""Config round trips, overrides and clear errors."""

from __future__ import annotations

import pytest

from vgs.config import Config, apply_preset, load_config, parse_overrides, save_config, set_value, to_dict
from vgs.errors import VGSError


def test_yaml_round_trip(tmp_path) -> None:
    config = Config(data="x")
    set_value(config, "train.lr", "3e-4")
    set_value(config, "model.bidirectional", "false")
    save_config(config, tmp_path / "c.yaml")
    loaded = load_config(tmp_path / "c.yaml")
    assert to_dict(loaded) == to_dict(config)
    assert loaded.train.lr == pytest.approx(3e-4) and loaded.model.bidirectional is False


def test_paper_preset() -> None:
    config = Config()
    apply_preset(config, "paper")
    assert (config.model.image_encoder, config.model.audio_encoder) == ("vgg16", "conv5")
    assert (config.train.batch_size, config.train.lr, config.train.margin, config.train.loss) == (4, 1e-4, 1.0, "hinge_sampled")
    assert config.train.optimizer == "adam" and config.model.similarity == "misa"


@pytest.mark.parametrize("key,value,message", [
    ("train.lr", "fast", "expected a number"),
    ("train.epochs", "1.5", "expected an integer"),
    ("model.freeze_trunk", "maybe", "expected true or false"),
    ("model.nope", "1", "unknown field 'nope'"),
    ("nope.lr", "1", "no config section 'nope'"),
])
def test_bad_overrides_name_the_key(key: str, value: str, message: str) -> None:
    with pytest.raises(VGSError, match=message):
        set_value(Config(), key, value)


def test_validation_rejects_unknown_choices() -> None:
    config = Config()
    config.model.audio_encoder = "transformer"
    with pytest.raises(VGSError, match="model.audio_encoder"):
        config.validate()


@pytest.mark.parametrize("weight,similarity,message", [
    (-0.1, "misa", "expected 0 <= weight <= 10"),
    (float("nan"), "misa", "expected a finite number"),
    (11.0, "misa", "expected 0 <= weight <= 10"),
    (0.5, "sisa", "adds SIMA to misa only"),
])
def test_image_to_speech_sima_is_range_checked(weight: float, similarity: str, message: str) -> None:
    config = Config()
    config.model.image_to_speech_sima, config.model.similarity = weight, similarity
    with pytest.raises(VGSError, match=f"model.image_to_speech_sima: {message}"):
        config.validate()
    config.model.image_to_speech_sima, config.model.similarity = 0.5, "misa"
    config.validate()


@pytest.mark.parametrize("text,message", [
    ("train: {lr: abc}", "train.lr: expected a number"),
    ("model: {colour: red}", "unknown field"),
    ("train: [1, 2]", "expected a mapping"),
    ("{{{", "not valid YAML"),
])
def test_bad_config_files(tmp_path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(VGSError, match=message):
        load_config(path)


def test_parse_overrides() -> None:
    assert parse_overrides(["a.b=1", "c.d= x"]) == [("a.b", "1"), ("c.d", " x")]
    with pytest.raises(VGSError, match="key=value"):
        parse_overrides(["novalue"])


def test_saved_runs_keep_the_behaviour_they_were_trained_with(tmp_path) -> None:
    from vgs.config import load_config, run_config_from_dict, save_config, to_dict

    old = to_dict(Config())
    del old["model"]["audio_norm"], old["features"]["trim_db"], old["augment"]
    config = run_config_from_dict(old)
    assert config.model.audio_norm == "global" and config.features.trim_db == 0.0 and not config.augment.enabled
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml", saved_run=True) == config
    partial = tmp_path / "partial.yaml"
    partial.write_text("model:\n  embed_dim: 256\n")
    user = load_config(partial)  # a user's file gets today's defaults
    assert user.augment.enabled and user.features.trim_db > 0 and user.train.voice_pairs


def test_compose_config_layers_each_win_over_the_one_before(tmp_path) -> None:
    from vgs.config import PRESETS, compose_config

    path = tmp_path / "partial.yaml"
    path.write_text("train: {lr: 0.01, epochs: 7}\nmodel: {embed_dim: 96}\n")
    assert compose_config().train.lr == Config().train.lr  # defaults
    preset = compose_config(preset="scenes")
    assert preset.train.lr == PRESETS["scenes"]["train.lr"] and preset.model.embed_dim == 256
    filed = compose_config(preset="scenes", config_file=path)
    assert (filed.train.lr, filed.train.epochs, filed.model.embed_dim) == (0.01, 7, 96)  # the file wins...
    assert filed.model.audio_channels == PRESETS["scenes"]["model.audio_channels"]  # ...and keeps what it does not set
    flagged = compose_config(preset="scenes", config_file=path, flags={"train.lr": 0.02, "train.seed": None}, data="d")
    assert (flagged.train.lr, flagged.train.epochs, flagged.train.seed, flagged.data) == (0.02, 7, 0, "d")
    final = compose_config(preset="scenes", config_file=path, flags={"train.lr": 0.02}, overrides=["train.lr=0.03"])
    assert (final.train.lr, final.train.epochs, final.model.embed_dim) == (0.03, 7, 96)
    base = Config(data="saved")
    base.train.epochs = 11
    assert compose_config(base=base, flags={"train.lr": 0.5}).train.epochs == 11  # a resumed run's own config


def test_cli_preset_then_partial_config_file_keeps_the_preset(tmp_path) -> None:
    """`vgs train --preset scenes --config partial.yaml` used to replace the preset with the file."""
    from vgs.cli import build_parser, config_from_args

    path = tmp_path / "partial.yaml"
    path.write_text("train:\n  epochs: 2\n")
    args = build_parser().parse_args(["train", "--out", str(tmp_path / "run"), "--preset", "scenes", "--config", str(path)])
    config = config_from_args(args)
    assert config.train.epochs == 2
    assert (config.model.image_stride, config.model.embed_dim, config.train.lr) == (16, 256, 2e-3)  # the preset's


def test_config_file_errors_name_the_file(tmp_path) -> None:
    from vgs.config import compose_config

    path = tmp_path / "bad.yaml"
    path.write_text("train: {lr: abc}\n")
    with pytest.raises(VGSError, match=r"bad.yaml: train.lr: expected a number"):
        compose_config(preset="scenes", config_file=path)
