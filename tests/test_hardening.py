"""Issue 13: resource limits and trust boundaries in the server, the index and the inputs.

Each test is named after the numbered item of the issue it pins; each fails on the code before the fix.
"""

from __future__ import annotations

import math

import pytest
import yaml

from vgs.config import Config, check_ranges, load_config, set_value, to_dict
from vgs.errors import VGSError


# ----------------------------------------------------------------------------- 10. config ranges


BAD_VALUES = [
    ("train.lr", math.inf), ("train.margin", math.nan), ("train.weight_decay", math.nan), ("train.grad_clip", math.nan),
    ("train.init_temperature", math.nan), ("features.fmin", math.nan), ("train.max_minutes", math.nan),
    ("train.weight_decay", -1.0), ("train.warmup_steps", -5), ("train.max_minutes", -1.0), ("train.eval_every", 0),
    ("train.checkpoint_every_minutes", -1.0), ("model.audio_channels", 0), ("model.audio_channels", -3),
    ("model.rnn_layers", 0), ("model.embed_dim", 10**9), ("model.embed_dim", 2**31), ("image.size", 10**6),
    ("features.max_frames", 10**9),
]


@pytest.mark.parametrize("key,value", BAD_VALUES, ids=[f"{k}={v}" for k, v in BAD_VALUES])
def test_10_config_ranges_on_yaml_set_and_checkpoint(tmp_path, key, value) -> None:
    section, name = key.split(".")
    data = to_dict(Config())
    data[section][name] = value
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(VGSError, match=rf"c\.yaml: {key}: expected a finite number"):
        load_config(tmp_path / "c.yaml")  # YAML
    with pytest.raises(VGSError, match=rf"^{key}: expected a finite number"):
        set_value(Config(), key, str(value) if not isinstance(value, float) or math.isfinite(value) else
                  (".nan" if math.isnan(value) else ".inf"))  # --set, parsed as YAML
    config = Config()
    setattr(getattr(config, section), name, value)
    with pytest.raises(VGSError, match=key):
        config.validate()  # what a checkpoint's config goes through (api.load, run_config)


def test_10_checkpoint_with_a_huge_embed_dim_is_refused_before_building(tmp_path) -> None:
    from vgs.api import load
    from vgs.io import save_checkpoint

    data = to_dict(Config())
    data["model"]["embed_dim"] = 2**31
    save_checkpoint(tmp_path / "big.pt", {"config": data, "model": {}})
    with pytest.raises(VGSError, match=r"big\.pt: config: model\.embed_dim: expected a finite number >= 1 and <= 16384"):
        load(tmp_path / "big.pt")


def test_10_unlisted_numeric_fields_must_be_finite_and_defaults_pass() -> None:
    from dataclasses import dataclass

    @dataclass
    class Extra:
        new_field: float = math.nan

    with pytest.raises(VGSError, match="x.new_field: expected a finite number"):
        check_ranges(Extra(), "x.")
    Config().validate()


# ----------------------------------------------------------------------------- 11. localize --window


@pytest.mark.parametrize("window", [0.001, 0.0, -1.0, math.nan, math.inf])
def test_11_localize_window_is_validated_and_windows_are_bounded(window) -> None:
    from vgs.localize import MAX_WINDOWS, fixed_segments

    with pytest.raises(VGSError, match="--window"):
        fixed_segments(600.0, window)  # old code: 600,000 windows (39 GB of overlays), or a ValueError for nan
    assert len(fixed_segments(600.0, 2.0)) == 300 <= MAX_WINDOWS
    with pytest.raises(VGSError, match="at most 400"):
        fixed_segments(600.0, 0.5)


def test_11_cli_localize_rejects_a_bad_window_in_one_line(tmp_path, capsys) -> None:
    from vgs.cli import main

    for window in ("nan", "0.001"):
        code = main(["localize", str(tmp_path / "run"), "--image", "x.png", "--audio", "x.wav", "--window", window,
                     "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert code == 1 and "--window" in err and len(err.strip().splitlines()) == 1, err


# ----------------------------------------------------------------------------- 9. manifests and caption files


def _row(i: int, image: str = "images/a.png", audio: str = "audio/a.wav") -> str:
    import json

    return json.dumps({"id": f"r{i}", "image": image, "image_id": "a", "audio": audio, "speaker": "s"})


def test_9_manifest_symlinks_out_of_the_data_set_are_rejected_naming_the_line(tmp_path) -> None:
    from vgs.data.manifest import read_manifest

    outside, data = tmp_path / "outside", tmp_path / "data"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret.txt").write_text("secret")
    (outside / "photo.png").write_bytes(b"png")
    for sub in ("images", "audio"):
        (data / sub).mkdir(parents=True)
    (data / "images" / "evil.png").symlink_to(outside / "secret.txt")  # a link to a non-image outside
    (data / "audio" / "evil.wav").symlink_to(outside / "secret.txt")
    (data / "linked").symlink_to(outside / "dir", target_is_directory=True)  # a linked folder
    (outside / "dir" / "x.png").write_bytes(b"png")
    (data / "images" / "ok.png").symlink_to(outside / "photo.png")  # what a linked build makes: accepted
    lines = [_row(1, image="images/ok.png"), _row(2, image="images/evil.png"), _row(3, audio="audio/evil.wav"),
             _row(4, image="linked/x.png")]
    (data / "train.jsonl").write_text("\n".join(lines) + "\n")
    manifest = read_manifest(data / "train.jsonl", strict=False)
    assert [r["id"] for r in manifest.rows] == ["r1"]
    assert len(manifest.problems) == 3
    for line, problem in zip((2, 3, 4), manifest.problems):
        assert f"train.jsonl:{line}:" in problem and "\n" not in problem
    with pytest.raises(VGSError, match=r"train\.jsonl:2: field 'image'"):
        read_manifest(data / "train.jsonl")


def test_9_manifest_with_a_utf8_bom_is_read(tmp_path) -> None:
    from vgs.data.manifest import read_manifest

    (tmp_path / "m.jsonl").write_bytes(b"\xef\xbb\xbf" + (_row(1) + "\n" + _row(2) + "\n").encode())
    assert [r["id"] for r in read_manifest(tmp_path / "m.jsonl").rows] == ["r1", "r2"]


@pytest.mark.parametrize("content", [
    "../../x.png#0\ta dog runs\n1000.jpg#0\ta cat sits\n",
    "/etc/passwd#0\ta dog runs\n1000.jpg#0\ta cat sits\n",
    "image,caption\n../../x.png,a dog runs\n1000.jpg,a cat sits\n",
    "image,caption\n/etc/passwd,a dog runs\n1000.jpg,a cat sits\n",
])
def test_9_caption_files_naming_paths_are_rejected_naming_the_line(tmp_path, content) -> None:
    from vgs.data.text_captions import parse_captions

    (tmp_path / "captions.txt").write_text(content)
    errors: list = []
    captions = parse_captions(tmp_path / "captions.txt", errors)
    assert [c.image for c in captions] == ["1000.jpg"]
    assert len(errors) == 1 and errors[0].line == (2 if content.startswith("image,") else 1)
    assert "not a plain file name" in str(errors[0])


# ----------------------------------------------------------------------------- 13. stale .tmp files, resumed manifests


def test_13_resumed_scenes_build_is_byte_identical_and_stale_tmp_files_go(tmp_path) -> None:
    import json

    from vgs.data.scenes import ScenesConfig, build_scenes
    from vgs.tts import VoicePoolConfig

    config = ScenesConfig(images=6, dev_images=0, test_images=0, size=64, captions_per_image=2,
                          voices=VoicePoolConfig(engines="espeak", espeak_voices=("en-us+m1",), rates=(170,), pitches=(50,)))
    build_scenes(config, tmp_path / "clean", workers=1, progress=False)
    build_scenes(config, tmp_path / "killed", workers=1, progress=False)
    killed = tmp_path / "killed"
    journal = killed / ".build" / "train.journal.jsonl"
    lines = journal.read_text().splitlines()
    journal.write_text("\n".join(lines[:5]) + "\n")  # as if killed after 5 of 12 captions (images already drawn)
    (killed / "train.jsonl").unlink()
    stale = [killed / ".train.jsonl.a1b2c3.tmp", killed / "audio" / ".x.wav.tmp", killed / ".build" / ".j.tmp"]
    for path in stale:
        path.write_bytes(b"half-written")
    build_scenes(config, killed, workers=1, progress=False)
    assert (killed / "train.jsonl").read_bytes() == (tmp_path / "clean" / "train.jsonl").read_bytes()
    assert not [p for p in stale if p.exists()]
    row = json.loads((killed / "train.jsonl").read_text().splitlines()[-1])
    assert list(row["objects"][0]) == ["name", "shape", "color", "size", "box"]


def test_13_index_writer_removes_stale_tmp_files(tiny_scenes, tmp_path) -> None:
    from conftest import tiny_config
    from vgs.api import build_untrained
    from vgs.search import IndexWriter

    folder = tmp_path / "idx"
    (folder / "images").mkdir(parents=True)
    stale = [folder / ".index.json.k3j4.tmp", folder / "images" / ".chunk-00000.regions.npy.x9.tmp",
             folder / ".faiss-images.index.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    (folder / "keep.tmp").write_bytes(b"not ours")
    IndexWriter(folder, build_untrained(tiny_config(tiny_scenes), device="cpu"))
    assert not [p for p in stale if p.exists()] and (folder / "keep.tmp").exists()


# ----------------------------------------------------------------------------- 6-8. the index is input too


@pytest.fixture(scope="module")
def indexed(tiny_scenes, tmp_path_factory):
    """Checkpoint A (an untrained tiny model), checkpoint B (same weights, other bytes), and an index built with A."""
    import shutil

    from conftest import tiny_config
    from vgs.api import build_untrained, load
    from vgs.io import save_checkpoint
    from vgs.search import build_index

    root = tmp_path_factory.mktemp("hardening-index")
    model = build_untrained(tiny_config(tiny_scenes), device="cpu")
    payload = {"config": to_dict(model.config), "model": model.net.state_dict()}
    save_checkpoint(root / "a.pt", payload)
    save_checkpoint(root / "b.pt", {**payload, "note": "another model"})
    images = root / "photos"
    images.mkdir()
    for path in sorted((tiny_scenes / "images").glob("test_*.png"))[:6]:
        shutil.copy(path, images / path.name)
    build_index(load(root / "a.pt"), root / "idx", images=images, captions=tiny_scenes / "test.jsonl", progress=False)
    return root


def _copy_index(indexed, tmp_path):
    import shutil

    shutil.copytree(indexed / "idx", tmp_path / "idx", symlinks=True)
    return tmp_path / "idx"


def test_6_chunk_names_cannot_leave_the_index_folder(indexed, tmp_path) -> None:
    import json

    from vgs.search import SearchIndex

    folder = _copy_index(indexed, tmp_path)
    meta = json.loads((folder / "index.json").read_text())
    meta["image_chunks"] = ["../../../outside/evil"]
    (folder / "index.json").write_text(json.dumps(meta))
    with pytest.raises(VGSError, match=r"index\.json: field 'image_chunks'"):
        SearchIndex(folder)
    meta["image_chunks"] = ["chunk-00000"]
    (folder / "index.json").write_text(json.dumps(meta))
    (tmp_path / "outside").mkdir()
    target = folder / "images" / "chunk-00000.pooled.npy"
    target.rename(tmp_path / "outside" / "p.npy")
    target.symlink_to(tmp_path / "outside" / "p.npy")  # a chunk file linked to outside
    with pytest.raises(VGSError, match="outside the index folder"):
        SearchIndex(folder)


def test_6_served_files_stay_inside_the_indexed_image_folder(indexed, tmp_path) -> None:
    import json

    from fastapi.testclient import TestClient

    from vgs.api import load
    from vgs.app import create_app
    from vgs.search import SearchIndex, list_images

    folder = _copy_index(indexed, tmp_path)
    secret = tmp_path / "private" / "secret.png"
    secret.parent.mkdir()
    from PIL import Image

    Image.new("RGB", (40, 40), (200, 10, 10)).save(secret)
    chunk = folder / "images" / "chunk-00000.json"
    info = json.loads(chunk.read_text())
    info["paths"][0] = str(secret)  # a chunk naming a file outside the indexed folder
    chunk.write_text(json.dumps(info))
    index = SearchIndex(folder)
    client = TestClient(create_app(load(indexed / "a.pt"), index), base_url="http://127.0.0.1")
    assert client.get("/api/images/0").status_code == 404
    assert client.get("/api/images/1").status_code == 200
    # a symlink inside --images pointing outside is not indexed
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "inside.png").write_bytes((indexed / "photos" / "test_00000.png").read_bytes())
    (photos / "link.png").symlink_to(secret)
    assert [p.name for p in list_images(photos)] == ["inside.png"]


CORRUPTIONS = {
    "faiss file": ("faiss-images.index", b"garbage" * 10),
    "chunk json": ("images/chunk-00000.json", b'{"paths": 3}'),
    "chunk json not json": ("images/chunk-00000.json", b"{oops"),
    "regions shape": ("images/chunk-00000.regions.npy", None),
    "pooled shape": ("images/chunk-00000.pooled.npy", None),
    "caption lengths": ("captions/chunk-00000.lengths.npy", None),
    "index.json embed_dim": ("index.json", None),
    "missing chunk": ("images/chunk-00000.pooled.npy", b""),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_7_corrupt_index_fails_in_one_line_naming_the_file(indexed, tmp_path, capsys, name) -> None:
    import json

    import numpy as np

    from vgs.cli import main

    folder = _copy_index(indexed, tmp_path)
    rel, data = CORRUPTIONS[name]
    path = folder / rel
    if name == "missing chunk":
        path.unlink()
    elif data is not None:
        path.write_bytes(data)
    elif rel == "index.json":
        meta = json.loads(path.read_text())
        meta["embed_dim"] = "64"
        path.write_text(json.dumps(meta))
    else:
        array = np.load(path)
        np.save(path, array[:, :-1] if array.ndim > 1 else array[:-1])
    code = main(["search", str(folder), "--run", str(indexed / "a.pt"), "--text", "a red circle", "-k", "2"])
    out = capsys.readouterr()
    if name == "faiss file":  # a derived file: rebuilt from the chunks
        assert code == 0, out.err
        return
    assert code == 1, out.err
    assert len(out.err.strip().splitlines()) == 1 and "unexpected" not in out.err
    assert path.name in out.err


def test_8_search_and_serve_refuse_another_models_checkpoint(indexed, tmp_path, capsys) -> None:
    from vgs.search import open_index

    model, index = open_index(indexed / "idx")  # the run it was built with
    assert index.image_count == 6 and model.checkpoint.name == "a.pt"
    with pytest.raises(VGSError, match="built with another model"):
        open_index(indexed / "idx", indexed / "b.pt")
    from vgs.cli import main

    code = main(["search", str(indexed / "idx"), "--run", str(indexed / "b.pt"), "--text", "a red circle"])
    assert code == 1 and "built with another model" in capsys.readouterr().err
