"""The built-in scenes data set: ground truth, captions, reproducibility, build and resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from vgs.data.manifest import read_manifest
from vgs.data.scenes import COLORS, SHAPE_WORDS, SIZE_WORDS, ScenesConfig, _png_bytes, build_scenes, render_scene, scene_caption
from vgs.errors import VGSError
from vgs.tts import VoicePoolConfig

TINY = dict(images=8, dev_images=2, test_images=2, captions_per_image=5,
            voices=VoicePoolConfig(engines="espeak", espeak_voices=("en-us+m1", "en+f3"), rates=(150, 190), pitches=(50,)))


VOCABULARY = set(COLORS) | {w for words in (*SHAPE_WORDS.values(), *SIZE_WORDS.values()) for w in words}


def scenes(seed: int = 0, count: int = 40) -> list[tuple[object, list[dict]]]:
    config = ScenesConfig(seed=seed)
    return [render_scene(np.random.default_rng([seed, 0, i, 0]), config) for i in range(count)]


def attribute_words(obj: dict) -> set[str]:
    return {obj["color"], *SHAPE_WORDS[obj["shape"]], *SIZE_WORDS[obj["size"]]}


def test_objects_have_true_boxes() -> None:
    config = ScenesConfig()
    for image, objects in scenes():
        assert image.size == (config.size, config.size) and image.mode == "RGB"
        assert config.min_objects <= len(objects) <= config.max_objects
        assert len({(o["color"], o["shape"]) for o in objects}) == len(objects)
        pixels = np.asarray(image, dtype=np.float64)
        for obj in objects:
            x0, y0, x1, y1 = obj["box"]
            assert 0 <= x0 < x1 <= config.size and 0 <= y0 < y1 <= config.size
            assert obj["name"] == f"{obj['size']} {obj['color']} {obj['shape']}"
            crop = pixels[y0:y1, x0:x1]
            near = np.linalg.norm(crop - np.asarray(COLORS[obj["color"]]), axis=-1) < 40
            assert near.mean() > 0.15, obj  # the box holds the object's colour


def test_caption_words_match_their_objects() -> None:
    rng = np.random.default_rng(1)
    for _, objects in scenes():
        for _ in range(5):
            text, tags = scene_caption(rng, objects)
            words = text.split()
            assert len(words) == len(tags) and all(w.isalpha() for w in words)
            named = {tag["object"] for tag in tags if tag}
            assert named and named <= set(range(len(objects)))
            for word, tag in zip(words, tags):
                if tag:
                    assert word in attribute_words(objects[tag["object"]]), (text, word)
                else:
                    assert word not in VOCABULARY, (text, word)
            for k in named:  # each named object gets its colour and a shape word
                spoken = {w for w, t in zip(words, tags) if t.get("object") == k}
                assert objects[k]["color"] in spoken and spoken & set(SHAPE_WORDS[objects[k]["shape"]])


def test_captions_name_some_or_all_objects() -> None:
    rng = np.random.default_rng(2)
    counts = []
    for _, objects in scenes(count=60):
        for _ in range(5):
            _, tags = scene_caption(rng, objects)
            counts.append((len({t["object"] for t in tags if t}), len(objects)))
    assert all(1 <= named <= total for named, total in counts)
    assert any(named < total for named, total in counts)
    assert np.mean([named >= 2 for named, _ in counts]) > 0.5


def test_same_seed_same_scenes_other_seed_differs() -> None:
    def draw(seed: int) -> list[tuple[bytes, str]]:
        config = ScenesConfig(seed=seed)
        out = []
        for i in range(5):
            image, objects = render_scene(np.random.default_rng([seed, 0, i, 0]), config)
            out.append((_png_bytes(image, objects), scene_caption(np.random.default_rng([seed, 0, i, 1]), objects)[0]))
        return out

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


def test_config_is_validated() -> None:
    with pytest.raises(VGSError, match="max_objects"):
        ScenesConfig(min_objects=3, max_objects=2).validate()
    with pytest.raises(VGSError, match="size"):
        ScenesConfig(size=8).validate()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ScenesConfig, dict, object]:
    out = tmp_path_factory.mktemp("scenes")
    config = ScenesConfig(seed=5, **TINY)
    written, report = build_scenes(config, out, workers=1, progress=False)
    return out, config, written, report


def test_build_writes_valid_manifests(built) -> None:
    out, config, written, report = built
    assert report.skipped == []
    assert written == {"train": 40, "dev": 10, "test": 10}
    for split in ("train", "dev", "test"):
        manifest = read_manifest(out / f"{split}.jsonl", strict=True)
        assert len(manifest.image_ids()) == written[split] // config.captions_per_image
        for row in manifest.rows:
            assert manifest.image_path(row).is_file()
            assert row["speaker"].startswith("espeak:")
            info = sf.info(str(manifest.audio_path(row)))
            duration = info.frames / info.samplerate
            words = row["words"]
            assert [w["word"] for w in words] == row["text"].split()
            assert any("object" in w for w in words)
            for w in words:
                assert 0 <= w["start"] < w["end"] <= duration + 1e-3
                if "object" in w:
                    assert w["word"] in attribute_words(row["objects"][w["object"]])
            assert all(a["start"] < b["start"] for a, b in zip(words, words[1:]))
            assert all(set(o) >= {"name", "box", "shape", "color", "size"} for o in row["objects"])


def test_build_resumes_without_redoing_anything(built) -> None:
    out, config, written, _ = built
    images = sorted((out / "images").glob("*.png"))
    assert len(images) == 12
    before = {p: p.stat().st_mtime_ns for p in [*images, *(out / ".build").glob("*.journal.jsonl")]}
    again, report = build_scenes(config, out, workers=1, progress=False)
    assert again == written and report.skipped == []
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_same_seed_rebuilds_identical_data(built, tmp_path: Path) -> None:
    out, config, _, _ = built
    small = ScenesConfig(**{**config.__dict__, "images": 2, "dev_images": 0, "test_images": 0})
    build_scenes(small, tmp_path, workers=1, progress=False)
    for name in ("train_00000.png", "train_00001.png"):
        assert (tmp_path / "images" / name).read_bytes() == (out / "images" / name).read_bytes()
    first = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()][:10]
    second = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert second == first


def test_folder_refuses_other_settings(built) -> None:
    out, config, _, _ = built
    with pytest.raises(VGSError, match="seed"):
        build_scenes(ScenesConfig(**{**config.__dict__, "seed": 6}), out, workers=1, progress=False)


def test_rendering_on_two_processes_draws_the_same_scenes_and_jobs(tmp_path: Path) -> None:
    from vgs.data.build import BuildReport
    from vgs.data.scenes import scenes_jobs

    config = ScenesConfig(seed=3, **{**TINY, "images": 60, "dev_images": 6, "test_images": 4})  # 70 > the pool's threshold
    one = scenes_jobs(config, tmp_path / "one", BuildReport(), workers=1)
    two = scenes_jobs(config, tmp_path / "two", BuildReport(), workers=2)
    assert [(j.id, j.text, j.voice, j.objects, j.word_tags) for j in two] == \
           [(j.id, j.text, j.voice, j.objects, j.word_tags) for j in one]
    names = sorted(p.name for p in (tmp_path / "one" / "images").glob("*.png"))
    assert len(names) == 70 and names == sorted(p.name for p in (tmp_path / "two" / "images").glob("*.png"))
    assert all((tmp_path / "one" / "images" / n).read_bytes() == (tmp_path / "two" / "images" / n).read_bytes() for n in names)
