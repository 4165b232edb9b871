"""Hugging Face datasets folders: export a vgs data set, import it back, byte for byte (offline)."""

from __future__ import annotations

import json
import os

import pytest

from vgs.cli import main

datasets = pytest.importorskip("datasets")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def _rows(folder, split):  # noqa: ANN001, ANN202
    return [json.loads(line) for line in (folder / f"{split}.jsonl").read_text().splitlines()]


def test_round_trip(tiny_scenes, tmp_path, capsys) -> None:
    hf = tmp_path / "hf"
    assert main(["export-data", str(tiny_scenes), "--out", str(hf)]) == 0
    loaded = datasets.load_from_disk(str(hf))
    assert set(loaded) == {"train", "dev", "test"}
    test = loaded["test"]
    assert isinstance(test.features["image"], datasets.Image) and isinstance(test.features["audio"], datasets.Audio)
    assert test.features["audio"].sampling_rate == 16000 and len(test) == len(_rows(tiny_scenes, "test"))

    back = tmp_path / "back"
    assert main(["prepare", "hf", "--from", str(hf), "--out", str(back), "--workers", "1"]) == 0
    for split in ("train", "dev", "test"):
        original, imported = _rows(tiny_scenes, split), _rows(back, split)
        assert imported == original  # same rows, same relative paths, words and object boxes
        for row in original[:5]:
            assert (back / row["audio"]).read_bytes() == (tiny_scenes / row["audio"]).read_bytes()
            assert (back / row["image"]).read_bytes() == (tiny_scenes / row["image"]).read_bytes()
    assert "features test:" in capsys.readouterr().out  # the imported set is ready to train on


def test_import_checks_rows(tiny_scenes, tmp_path) -> None:
    from vgs.errors import VGSError
    from vgs.data.hf import import_hf

    with pytest.raises(VGSError, match="not found"):
        import_hf(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VGSError, match="not a folder written by save_to_disk"):
        import_hf(tmp_path / "empty", tmp_path / "out")
    bad = datasets.Dataset.from_dict({"id": ["a"], "image_id": ["i"], "speaker": ["s"], "text": [""], "duration": [1.0],
                                      "image": [{"bytes": b"x", "path": "i.png"}], "audio": [{"bytes": b"y", "path": "a.wav"}],
                                      "words": ["{not json"], "objects": [""]})
    datasets.DatasetDict({"test": bad}).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(VGSError, match="field 'words': not valid JSON"):
        import_hf(tmp_path / "bad", tmp_path / "out")
