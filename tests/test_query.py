"""QueryService on its own (no HTTP): search, localization, decoding, speech and thumbnails."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import tiny_config
from vgs.api import build_untrained
from vgs.localize import Segment, caption_heatmaps
from vgs.query import AppLimits, QueryError, QueryService
from vgs.search import IndexWriter, SearchIndex


@pytest.fixture(scope="module")
def service(tiny_scenes, tmp_path_factory) -> QueryService:
    model = build_untrained(tiny_config(tiny_scenes), device="cpu")
    folder = tmp_path_factory.mktemp("query-index")
    IndexWriter(folder, model).add_images(sorted((tiny_scenes / "images").glob("test_*.png")), progress=False)
    return QueryService(model, SearchIndex(folder), AppLimits(max_audio_seconds=5.0, image_cache_bytes=10**6))


@pytest.fixture(scope="module")
def signal(service, tiny_scenes) -> np.ndarray:
    return service.decode((tiny_scenes / "audio" / "test_00000_0.wav").read_bytes())


def test_search_ranks_like_the_index_with_the_localize_heatmaps(service, signal) -> None:
    found = service.search(signal, k=4)
    frames = service.model.encode_audio([signal])
    expected = service.index.search_audio(service.model, frames, k=4, candidates=500)
    assert [f.hit.index for f in found] == [h.index for h in expected]
    assert [f.hit.score for f in found] == pytest.approx([h.score for h in expected])
    regions = service.index.regions_of([found[0].hit.index])[0]
    whole = caption_heatmaps(regions, frames.caption(0), [], service.model.frame_seconds()).whole
    torch.testing.assert_close(found[0].heatmap, whole)
    assert tuple(found[0].heatmap.shape) == tuple(service.grid)


def test_localize_scores_and_maps_only_what_the_model_hears(service, signal) -> None:
    late = Segment("late", service.model_seconds + 1, service.model_seconds + 2)
    result = service.localize(2, signal, [Segment("a", 0.0, 0.3), Segment("b", 0.3, 0.6), late])
    assert [s.label for s in result.segments] == ["a", "b"]
    assert tuple(result.heatmaps.segments.shape) == (2, *service.grid)
    regions = service.index.regions_of([2])
    assert result.score == pytest.approx(float(service.model.similarity(regions, service.model.encode_audio([signal]))[0, 0]))


def test_bad_queries_raise_with_their_status(service) -> None:
    with pytest.raises(QueryError) as missing:
        service.check_image(service.index.image_count)
    assert missing.value.status == 404
    with pytest.raises(QueryError) as garbage:
        service.decode(b"RIFF....not audio at all")
    assert garbage.value.status == 422
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(16000 * 7, np.float32), 16000, format="WAV")
    with pytest.raises(QueryError) as long:
        service.decode(buffer.getvalue())
    assert long.value.status == 413
    with pytest.raises(QueryError) as blank:
        service.speak(" \x00 ", "espeak:en-us:r170:p50")
    assert blank.value.status == 422


def test_speech_and_thumbnails_are_cached(service, monkeypatch) -> None:
    import vgs.query

    first = service.speak("a red  circle", "espeak:en-us:r170:p50")
    assert service.speak("a red circle", "espeak:en-us:r170:p50") is first  # printable text: the same query
    decoded = []
    real = vgs.query._thumbnail_bytes
    monkeypatch.setattr(vgs.query, "_thumbnail_bytes", lambda *a: decoded.append(a[1:3]) or real(*a))
    content, media = service.thumbnail(0, 100)  # snaps down to 96
    assert service.thumbnail(0, 97) == (content, media) and decoded == [(0, 96)]
    assert media == "image/png" and service.thumbnails.bytes == len(content)
