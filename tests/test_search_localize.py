"""Index, two-stage search, localization overlays and the pointing game, end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vgs.api import load
from vgs.cli import main
from vgs.data.manifest import load_split
from vgs.errors import VGSError
from vgs.localize import Segment, fixed_segments, frame_range, pointing_game, segment_heatmaps
from vgs.search import SearchIndex, build_index


@pytest.fixture(scope="module")
def index(tiny_run, tiny_scenes, tmp_path_factory):
    out = tmp_path_factory.mktemp("index")
    summary = build_index(load(tiny_run), out, images=tiny_scenes / "images", captions=tiny_scenes / "test.jsonl", progress=False)
    assert summary["images"] == 152 and summary["captions"] == 60 and not summary["problems"]
    return out


def test_two_stage_equals_exhaustive_when_candidates_cover_everything(tiny_run, index, tiny_scenes) -> None:
    model = load(tiny_run)
    search = SearchIndex(index)
    row = load_split(tiny_scenes, "test").rows[0]
    query = model.encode_audio([tiny_scenes / row["audio"]])
    full = search.search_audio(model, query, k=10, exhaustive=True)
    staged = search.search_audio(model, query, k=10, candidates=search.image_count)
    assert [h.index for h in full] == [h.index for h in staged]
    scores = [h.score for h in full]
    assert scores == sorted(scores, reverse=True)
    # the exhaustive scores are the model's own similarity
    direct = model.similarity([full[0].path], [tiny_scenes / row["audio"]])
    assert direct[0, 0].item() == pytest.approx(full[0].score, abs=1e-3)


def test_regions_as_stored_score_as_the_float32_regions(tiny_run, index, tiny_scenes) -> None:
    """The re-rank reads the index's float16 regions in place: the same values, the same scores."""
    model, search = load(tiny_run), SearchIndex(index)
    ids = np.array([5, 0, 151, 17])
    stored, converted = search.regions_of(ids, as_stored=True), search.regions_of(ids)
    assert stored.dtype == torch.float16 and converted.dtype == torch.float32 and stored.shape == converted.shape
    assert torch.equal(stored.float(), converted)
    captions = search.captions_of(list(range(6)))
    torch.testing.assert_close(model.scores(stored, captions), model.scores(converted, captions), atol=1e-5, rtol=1e-5)


def test_search_finds_the_right_image_often(tiny_run, index, tiny_scenes) -> None:
    model = load(tiny_run)
    search = SearchIndex(index)
    rows = load_split(tiny_scenes, "test").rows
    hits = 0
    for row in rows:
        found = search.search_audio(model, model.encode_audio([tiny_scenes / row["audio"]]), k=10, candidates=50)
        hits += any(h.path.endswith(row["image"].split("/")[-1]) for h in found)
    assert hits / len(rows) > 10 / 152 * 2  # well above chance among 152 images


def test_image_to_speech_search(tiny_run, index, tiny_scenes) -> None:
    model = load(tiny_run)
    search = SearchIndex(index)
    row = load_split(tiny_scenes, "test").rows[0]
    regions = model.encode_images([tiny_scenes / row["image"]])
    hits = search.search_image(model, regions, k=5)
    assert len(hits) == 5 and all(h.id for h in hits)
    # a model that adds SIMA when images rank captions: the search ranks by those scores
    model.net.config.image_to_speech_sima = 2.0
    every = search.captions_of(list(range(search.caption_count)))
    wanted = model.caption_scores(regions, every)[0]
    assert not torch.equal(wanted, model.scores(regions, every)[0])
    found = search.search_image(model, regions, k=5, exhaustive=True)
    assert [h.index for h in found] == torch.argsort(-wanted, stable=True)[:5].tolist()
    assert [h.score for h in found] == pytest.approx(wanted.sort(descending=True).values[:5].tolist())


def test_index_resumes_and_adds_images(tiny_run, tiny_scenes, tmp_path) -> None:
    model = load(tiny_run)
    images = tmp_path / "a"
    images.mkdir()
    for name in sorted(p.name for p in (tiny_scenes / "images").iterdir())[:5]:
        (images / name).write_bytes((tiny_scenes / "images" / name).read_bytes())
    (images / "broken.png").write_bytes(b"not an image")
    first = build_index(model, tmp_path / "idx", images=images, progress=False)
    assert first["images"] == 5 and len(first["problems"]) == 1
    again = build_index(model, tmp_path / "idx", images=images, progress=False)
    assert again["images_added"] == 0 and again["images"] == 5
    more = tmp_path / "b"
    more.mkdir()
    name = sorted(p.name for p in (tiny_scenes / "images").iterdir())[10]
    (more / name).write_bytes((tiny_scenes / "images" / name).read_bytes())
    assert build_index(model, tmp_path / "idx", images=more, progress=False)["images"] == 6


def test_index_refuses_another_model(tiny_scenes, tmp_path, index) -> None:
    from conftest import tiny_config
    from vgs.api import build_untrained
    from vgs.search import IndexWriter

    with pytest.raises(VGSError, match="another model"):
        IndexWriter(index, build_untrained(tiny_config(tiny_scenes)))


def test_index_files_hold_no_pickles(index) -> None:
    for path in index.rglob("*.npy"):
        np.load(path, allow_pickle=False)  # would raise on object arrays
    json.loads((index / "index.json").read_text())


def test_cli_search_and_localize(tiny_run, index, tiny_scenes, tmp_path, capsys) -> None:
    row = load_split(tiny_scenes, "test").rows[0]
    assert main(["search", str(index), "--audio", str(tiny_scenes / row["audio"]), "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 3 and {"index", "score", "path"} <= set(hits[0])
    assert main(["search", str(index), "--text", "a red circle", "-k", "2"]) == 0
    assert main(["localize", str(tiny_run), "--manifest", str(tiny_scenes / "test.jsonl"), "--id", row["id"],
                 "--out", str(tmp_path / "maps")]) == 0
    pngs = sorted((tmp_path / "maps").glob("*.png"))
    assert len(pngs) == len(row["words"]) + 1  # one per word, plus the whole caption
    assert main(["localize", str(tiny_run), "--image", str(tiny_scenes / row["image"]), "--audio",
                 str(tiny_scenes / row["audio"]), "--out", str(tmp_path / "win")]) == 0
    windows = fixed_segments(row["duration"])
    assert len(list((tmp_path / "win").glob("*.png"))) == len(windows) + 1


def test_frame_ranges_and_heatmaps() -> None:
    assert frame_range(0.0, 0.16, 0.16, 10) == (0, 1)
    assert frame_range(0.30, 0.50, 0.16, 10) == (1, 4)
    assert frame_range(5.0, 6.0, 0.16, 10) == (9, 10)  # past the end: the last frame
    matchmap = torch.zeros(2, 2, 4)
    matchmap[1, 0, 2:] = 1.0
    maps = segment_heatmaps(matchmap, [Segment("x", 0.32, 0.64)], 0.16)
    assert maps.shape == (1, 2, 2) and maps[0].argmax().item() == 2


def test_pointing_game_beats_random(tiny_run, tiny_scenes) -> None:
    result = pointing_game(load(tiny_run), load_split(tiny_scenes, "test"), progress=False)
    assert result.words > 100
    assert 0 < result.random_baseline < 0.2
    assert result.score > 2.5 * result.random_baseline  # a 4-epoch model on 120 images; the default model scores ~0.99


def test_pointing_game_needs_ground_truth(tiny_run, tmp_path) -> None:
    from vgs.data.manifest import read_manifest, write_manifest

    write_manifest(tmp_path / "x.jsonl", [{"id": "a", "image": "i.png", "image_id": "i", "audio": "a.wav", "speaker": "s"}])
    with pytest.raises(VGSError, match="ground truth"):
        pointing_game(load(tiny_run), read_manifest(tmp_path / "x.jsonl"), progress=False)


def test_evaluate_localization_scores_the_model_it_evaluated(tiny_run, monkeypatch, capsys) -> None:
    """`vgs evaluate --localization` loads the trained model once, and the untrained pointing game plays the
    model whose recall it reports (with the split's input statistics, which open_evaluation sets)."""
    import vgs.api as api
    import vgs.localize as localize

    loads, played = [], []
    real_load, real_game = api.load, localize.pointing_game
    monkeypatch.setattr(api, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    monkeypatch.setattr(localize, "pointing_game", lambda model, *a, **k: played.append(model) or real_game(model, *a, **k))
    for flags in ([], ["--untrained"]):
        assert main(["evaluate", str(tiny_run), "--split", "test", "--draws", "1", "--localization",
                     "--max-captions", "4", "--json", *flags]) == 0
        assert "pointing_game" in json.loads(capsys.readouterr().out)["localization"]
    assert len(loads) == 1  # the trained run, loaded once
    untrained_norm = played[1].net.audio.input_norm
    assert untrained_norm.mean.abs().sum() > 0 and not torch.all(untrained_norm.std == 1)


def test_localize_word_times_are_checked_as_word_times(tmp_path, capsys) -> None:
    from vgs.data.manifest import validate_words

    assert validate_words([{"word": "red", "start": 0.1, "end": 0.4}], "w.json")
    with pytest.raises(VGSError, match=r"w.json: field 'words': words\[1\]: expected"):
        validate_words([{"word": "red", "start": 0.1, "end": 0.4}, {"word": "x", "start": 2, "end": 1}], "w.json")
    with pytest.raises(VGSError, match="expected a list of word times"):
        validate_words({"word": "red"}, "w.json")
    path = tmp_path / "words.json"
    path.write_text(json.dumps([{"word": "red", "start": -1, "end": 0.4}]))
    assert main(["localize", str(tmp_path / "no-run"), "--words", str(path), "--image", "i.png", "--audio", "a.wav",
                 "--out", str(tmp_path / "out")]) == 1
    assert "words.json: field 'words': words[0]" in capsys.readouterr().err
