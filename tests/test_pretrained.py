"""The Flickr8k model that ships with the package: loads offline by name and searches a photo folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

import vgs
import vgs.tts  # vgs.tts.synthesize below: the package does not import its submodules
from vgs.cli import main
from vgs.errors import VGSError
from vgs.pretrained import pretrained_models, pretrained_path


def test_the_flickr8k_model_ships_small_and_documented() -> None:
    assert "flickr8k" in pretrained_models()
    folder = pretrained_path("flickr8k")
    assert (folder / "model.safetensors").stat().st_size <= 16 * 2**20
    card = (folder / "MODEL_CARD.md").read_text()
    for needed in ("research use", "festival", "dev"):
        assert needed in card
    with pytest.raises(VGSError, match="shipped models: flickr8k"):
        pretrained_path("nope")


def test_load_by_name_scores_images_against_speech() -> None:
    model = vgs.load("flickr8k", device="cpu")
    assert model.config.model.image_encoder == "efficientnet-lite0" and model.checkpoint.name == "model.safetensors"
    assert model.config.model.image_to_speech_sima == 0.5  # images rank captions by MISA + 0.5 SIMA (docs/results.md)
    image = Image.new("RGB", (224, 224), (40, 120, 200))
    speech = vgs.tts.synthesize("a dog runs through the grass", vgs.tts.Voice("espeak", "en-us+m1")).audio
    scores = model.similarity([image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)], [speech])
    assert scores.shape == (2, 1) and np.isfinite(scores.numpy()).all()


def _photos(folder, n: int = 6) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir()
    for i in range(n):
        image = Image.new("RGB", (160, 120), tuple(int(c) for c in rng.integers(0, 255, 3)))
        draw = ImageDraw.Draw(image)
        draw.ellipse([20 + 10 * i, 20, 90 + 10 * i, 100], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        image.save(folder / f"photo_{i}.jpg", quality=90)


def test_search_your_own_photos_end_to_end(tmp_path, capsys) -> None:
    _photos(tmp_path / "photos")
    index = tmp_path / "index"
    assert main(["index", "--model", "flickr8k", str(tmp_path / "photos"), "--out", str(index), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["search", "--model", "flickr8k", "--index", str(index), "--text", "a red ball on the grass",
                 "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 3 and all(hit["path"].endswith(".jpg") for hit in hits)
    with pytest.raises(SystemExit):
        main(["index", "--model"])
    assert main(["evaluate", "runs/x", "--model", "flickr8k"]) == 1  # a run and --model: one or the other
