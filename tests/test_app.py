"""The web app's JSON API (`vgs serve`): every endpoint, and every way a request can be bad."""

from __future__ import annotations

import asyncio
import io
import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient
from PIL import Image

from conftest import tiny_config
from vgs.api import build_untrained
from vgs.app import AppLimits, create_app
from vgs.search import IndexWriter, SearchIndex

LEAKS = ("root:", "/bin/", "[boot loader]", "daemon:")  # what /etc/passwd or win.ini would show


def make_index(scenes: Path, folder: Path):
    """A tiny untrained model and an index of the scenes' test images and captions."""
    model = build_untrained(tiny_config(scenes), device="cpu")
    writer = IndexWriter(folder, model)
    writer.add_images(sorted((scenes / "images").glob("test_*.png")), progress=False)
    writer.add_captions(scenes / "test.jsonl", progress=False)
    return model, SearchIndex(folder)


@pytest.fixture(scope="module")
def served(tiny_scenes, tmp_path_factory):
    model, index = make_index(tiny_scenes, tmp_path_factory.mktemp("index"))
    return model, index, create_app(model, index)


@pytest.fixture(scope="module")
def client(served):
    return TestClient(served[2], base_url="http://127.0.0.1")


@pytest.fixture(scope="module")
def wav(tiny_scenes) -> bytes:
    return (tiny_scenes / "audio" / "test_00000_0.wav").read_bytes()


def wav_bytes(seconds: float, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    t = np.arange(int(seconds * rate)) / rate
    sf.write(buffer, (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def check_heatmap(heatmap: dict, grid: tuple[int, int]) -> None:
    assert (heatmap["rows"], heatmap["cols"]) == tuple(grid)
    values = np.asarray(heatmap["values"])
    assert values.shape == tuple(grid) and values.min() >= 0 and values.max() <= 1
    assert heatmap["low"] <= heatmap["high"]
    assert all(0 <= p <= 1 for p in heatmap["peak"])


def assert_clean_4xx(response, *codes: int) -> dict:
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    if codes:
        assert response.status_code in codes, (response.status_code, response.text[:300])
    assert not any(leak in response.text for leak in LEAKS)
    if response.headers.get("content-type", "").startswith("application/json"):
        body = response.json()
        assert isinstance(body["detail"], str) and body["detail"]
        return body
    return {}


# ----------------------------------------------------------------------------- the endpoints


def test_health_and_page(client, served) -> None:
    _, index, _ = served
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["images"] == index.image_count == 12
    assert health["captions"] == index.caption_count > 0
    assert health["grid"] == list(index.grid) and health["limits"]["max_k"] == 50
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="audio-file"' in page.text and "Content-Security-Policy" in page.headers
    assert "http://" not in page.text.replace('http://"', "") and "https://" not in page.text  # nothing from elsewhere
    for name, kind in (("app.js", "javascript"), ("style.css", "css")):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
        assert response.headers["x-content-type-options"] == "nosniff"
    assert "decodeAudioData" in client.get("/static/app.js").text


def test_openapi_describes_the_api(client) -> None:
    spec = client.get("/openapi.json").json()
    for path in ("/api/health", "/api/search/audio", "/api/search/text", "/api/localize/audio", "/api/localize/text",
                 "/api/images/{i}"):
        assert path in spec["paths"], path
    schemas = spec["components"]["schemas"]
    assert {"SearchOut", "LocalizeOut", "HeatmapOut", "HealthOut", "ErrorOut", "TextSearchIn"} <= set(schemas)
    assert schemas["TextSearchIn"]["properties"]["k"]["maximum"] == 50
    assert schemas["TextSearchIn"]["properties"]["text"]["maxLength"] == 300
    assert "413" in spec["paths"]["/api/search/audio"]["post"]["responses"]
    assert client.get("/docs").status_code == 200


def test_search_by_audio(client, served, wav) -> None:
    model, index, _ = served
    response = client.post("/api/search/audio", files={"file": ("q.wav", wav, "audio/wav")}, data={"k": "5"})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["query"]["kind"] == "audio" and result["query"]["duration"] > 0.5
    hits = result["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    direct = index.search_audio(model, model.encode_audio([wav]), k=5)
    assert [h["image"] for h in hits] == [h.index for h in direct]
    for hit in hits:
        check_heatmap(hit["heatmap"], index.grid)
        assert hit["image_url"] == f"/api/images/{hit['image']}" and hit["name"].endswith(".png")
        assert "/" not in hit["name"]  # no folders of the server leak out


def test_search_by_text(client, served) -> None:
    response = client.post("/api/search/text", json={"text": "a small red circle", "k": 3})
    assert response.status_code == 200, response.text
    result = response.json()
    assert len(result["hits"]) == 3
    query = result["query"]
    assert query["kind"] == "text" and query["voice"] == "espeak:en-us:r170:p50"
    assert [w["word"] for w in query["words"]] == ["a", "small", "red", "circle"]
    check_heatmap(result["hits"][0]["heatmap"], served[1].grid)
    other = client.post("/api/search/text", json={"text": "a small red circle", "k": 3, "voice": "espeak:en-us+f2:r150"})
    assert other.status_code == 200 and other.json()["query"]["voice"] == "espeak:en-us+f2:r150"


def test_localize_by_text_gives_words(client, served) -> None:
    response = client.post("/api/localize/text", json={"image": 3, "text": "a big blue square, left of a circle"})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["segment_kind"] == "word" and result["image"] == 3
    assert [s["label"] for s in result["segments"]] == ["a", "big", "blue", "square", "left", "of", "a", "circle"]
    starts = [s["start"] for s in result["segments"]]
    assert starts == sorted(starts) and all(s["end"] > s["start"] for s in result["segments"])
    for segment in result["segments"]:
        check_heatmap(segment["heatmap"], served[1].grid)
    check_heatmap(result["whole"], served[1].grid)


def test_localize_by_audio_gives_windows(client, served, wav) -> None:
    duration = sf.info(io.BytesIO(wav)).duration
    response = client.post("/api/localize/audio", files={"file": ("q.wav", wav, "audio/wav")},
                           data={"image": "0", "window": "0.5"})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["segment_kind"] == "window"
    assert len(result["segments"]) == math.ceil(duration / 0.5 - 1e-9)
    assert result["segments"][0]["label"] == "0.0-0.5s" and result["segments"][0]["start"] == 0.0
    # the whole query's heatmap is the one the search showed for this image
    search = client.post("/api/search/audio", files={"file": ("q.wav", wav)}, data={"k": "12"}).json()
    hit = next(h for h in search["hits"] if h["image"] == 0)
    assert np.allclose(hit["heatmap"]["values"], result["whole"]["values"], atol=2e-3)
    assert result["score"] == pytest.approx(hit["score"], abs=1e-4)


def test_images_are_served_by_position(client, served) -> None:
    _, index, _ = served
    response = client.get("/api/images/2")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    served_image = Image.open(io.BytesIO(response.content))
    with Image.open(index.image_paths[2]) as original:
        assert served_image.size == original.size
        assert np.array_equal(np.asarray(served_image.convert("RGB")), np.asarray(original.convert("RGB")))
    small = Image.open(io.BytesIO(client.get("/api/images/2?size=32").content))
    assert max(small.size) == 32


def test_concurrent_searches_agree(client, wav) -> None:
    def one(_: int) -> list[int]:
        response = client.post("/api/search/audio", files={"file": ("q.wav", wav)}, data={"k": "4"})
        assert response.status_code == 200, response.text
        return [h["image"] for h in response.json()["hits"]]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(16)))
    assert all(r == results[0] for r in results)


# ----------------------------------------------------------------------------- limits


def test_oversized_uploads_get_413(client) -> None:
    limit = AppLimits().max_upload_bytes
    just_over = client.post("/api/search/audio", files={"file": ("q.wav", b"\0" * (limit + 1))})
    assert_clean_4xx(just_over, 413)
    far_over = client.post("/api/localize/audio", files={"file": ("q.wav", b"\0" * (limit + 2 * 2**20))}, data={"image": "0"})
    assert "too large" in assert_clean_4xx(far_over, 413)["detail"]
    big_json = client.post("/api/search/text", content=json.dumps({"text": "a" * 200_000}),
                           headers={"content-type": "application/json"})
    assert_clean_4xx(big_json, 413)


def test_body_is_capped_while_read_not_by_content_length(served) -> None:
    """A client declaring a small Content-Length but streaming on is cut off once the cap is passed."""
    app = served[2]
    sent: list[dict] = []
    reads = 0

    async def receive() -> dict:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b"\0" * 2**20, "more_body": True}  # endless

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/api/search/audio", "raw_path": b"/api/search/audio", "root_path": "", "query_string": b"",
             "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"multipart/form-data; boundary=x"),
                         (b"content-length", b"100")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413
    assert reads <= AppLimits().max_upload_bytes // 2**20 + 2


def test_too_long_audio(client) -> None:
    long = wav_bytes(25.0)
    assert len(long) < AppLimits().max_upload_bytes
    body = assert_clean_4xx(client.post("/api/search/audio", files={"file": ("q.wav", long)}), 413)
    assert "20 s" in body["detail"]
    assert client.post("/api/search/audio", files={"file": ("q.wav", wav_bytes(3.0))}).status_code == 200
    small = TestClient(create_app(*_model_index(client), AppLimits(max_audio_seconds=2.0)), base_url="http://127.0.0.1")
    assert_clean_4xx(small.post("/api/localize/audio", files={"file": ("q.wav", wav_bytes(3.0))}, data={"image": "0"}), 413)


def _model_index(client):
    return client.app.state.model, client.app.state.index


@pytest.mark.parametrize("data", [b"this is not audio at all" * 10, b"RIFF\x10\x00\x00\x00WAVEfmt ", b"\x00" * 4000,
                                  b"RIFF" + b"\xff" * 60, b"\x1aE\xdf\xa3" + b"\x00" * 200],
                         ids=["text", "truncated-wav", "zeros", "bad-riff", "webm-header"])
def test_garbage_audio_is_a_clear_422(client, data) -> None:
    body = assert_clean_4xx(client.post("/api/search/audio", files={"file": ("q.wav", data)}), 422)
    assert "audio" in body["detail"].lower()


def test_empty_and_too_short_audio(client) -> None:
    assert "empty" in assert_clean_4xx(client.post("/api/search/audio", files={"file": ("q.wav", b"")}), 422)["detail"]
    assert_clean_4xx(client.post("/api/search/audio", files={"file": ("q.wav", wav_bytes(0.01))}), 422)


def test_wrong_content_type_is_415(client, wav) -> None:
    assert_clean_4xx(client.post("/api/search/text", content=b'{"text": "a red circle"}',
                                 headers={"content-type": "text/plain"}), 415)
    assert_clean_4xx(client.post("/api/search/text", data={"text": "a red circle"}), 415)  # form-encoded
    assert_clean_4xx(client.post("/api/search/text", content=b'{"text": "a red circle"}'), 415)  # no content type
    assert_clean_4xx(client.post("/api/search/audio", json={"k": 3}), 415)
    assert_clean_4xx(client.post("/api/localize/audio", content=wav, headers={"content-type": "audio/wav"}), 415)
    assert_clean_4xx(client.post("/api/localize/text", files={"file": ("q.wav", wav)}), 415)


def test_malformed_and_wrong_json(client) -> None:
    body = assert_clean_4xx(client.post("/api/search/text", content=b'{"text": "a red', headers={"content-type": "application/json"}), 400)
    assert "malformed JSON" in body["detail"]
    assert_clean_4xx(client.post("/api/search/text", content=b'\xff\xfe{"text"', headers={"content-type": "application/json"}), 400)
    spoken = client.post("/api/search/text", json={"text": "\u0000a\u0001 red\ncircle\u200b"})
    assert spoken.status_code == 200 and spoken.json()["query"]["text"] == "a red circle"
    for payload in ([], "text", 5, {}, {"txt": "a red circle"}, {"text": "a", "k": 3, "extra": 1}, {"text": None},
                    {"text": 5}, {"text": "a", "k": "three"}, {"text": "a", "voice": 5}):
        assert_clean_4xx(client.post("/api/search/text", json=payload), 422)
    assert_clean_4xx(client.post("/api/localize/text", json={"text": "a red circle"}), 422)  # no image
    assert_clean_4xx(client.post("/api/localize/text", json={"image": 1.5, "text": "a"}), 422)


def test_text_limits(client) -> None:
    assert_clean_4xx(client.post("/api/search/text", json={"text": "a" * 301}), 422)
    assert client.post("/api/search/text", json={"text": "red " * 75}).status_code == 200  # 300 characters
    assert "blank" in assert_clean_4xx(client.post("/api/search/text", json={"text": "   \n\t "}), 422)["detail"]
    assert_clean_4xx(client.post("/api/search/text", json={"text": ""}), 422)
    for voice in ("espeak:nosuchvoice", "nosuchengine:x", "flite", "espeak:en-us:r999", "", "espeak:en us"):
        assert_clean_4xx(client.post("/api/search/text", json={"text": "a red circle", "voice": voice}), 422)


@pytest.mark.parametrize("k", ["0", "-1", "51", "1000000000000", "abc", "1.5", "nan", "[]"])
def test_k_out_of_range(client, wav, k) -> None:
    body = assert_clean_4xx(client.post("/api/search/audio", files={"file": ("q.wav", wav)}, data={"k": k}), 422)
    assert body["detail"].startswith("k: ")
    try:
        number = json.loads(k)
    except ValueError:
        number = k
    assert_clean_4xx(client.post("/api/search/text", json={"text": "a red circle", "k": number}), 422)


def test_k_larger_than_the_collection(client) -> None:
    result = client.post("/api/search/text", json={"text": "a red circle", "k": 50}).json()
    assert len(result["hits"]) == 12


def test_image_index_out_of_range_is_404(client, wav) -> None:
    for i in ("12", "-1", "99999999999999999999"):
        assert_clean_4xx(client.get(f"/api/images/{i}"), 404, 422)
    assert_clean_4xx(client.get("/api/images/12"), 404)
    assert_clean_4xx(client.get("/api/images/-1"), 404)
    assert_clean_4xx(client.post("/api/localize/text", json={"image": 12, "text": "a red circle"}), 404)
    assert_clean_4xx(client.post("/api/localize/text", json={"image": -3, "text": "a red circle"}), 404)
    assert_clean_4xx(client.post("/api/localize/audio", files={"file": ("q.wav", wav)}, data={"image": "99"}), 404)
    assert_clean_4xx(client.post("/api/localize/audio", files={"file": ("q.wav", wav)}, data={"image": "0", "window": "0"}), 422)
    assert_clean_4xx(client.get("/api/images/0?size=100000"), 422)
    assert client.get("/api/search/text").status_code == 405


TRAVERSALS = ["../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/etc/passwd",
              "%2Fetc%2Fpasswd", "....//....//etc/passwd", "..\\..\\windows\\win.ini", "C:\\Windows\\win.ini",
              "file:///etc/passwd", "0/../../../etc/passwd", "%252e%252e%252fetc%252fpasswd", "0%00.png"]


@pytest.mark.parametrize("attack", TRAVERSALS)
def test_path_traversal_never_reaches_the_filesystem(client, served, wav, attack) -> None:
    index = served[1]
    for url in (f"/api/images/{attack}", f"/api/images/0?size={attack}", f"/static/{attack}", f"/{attack}",
                f"/api/images/{attack}?size=64", f"/api/{attack}"):
        assert_clean_4xx(client.get(url))
    assert_clean_4xx(client.get(f"/api/images/{index.image_paths[0]}"))  # even a real image's path
    posts = [
        client.post("/api/search/audio", files={"file": ("q.wav", wav)}, data={"k": attack}),
        client.post("/api/search/audio", files={"file": ("q.wav", attack.encode())}),
        client.post("/api/localize/audio", files={"file": ("q.wav", wav)}, data={"image": attack}),
        client.post("/api/localize/audio", files={"file": ("q.wav", wav)}, data={"image": "0", "window": attack}),
        client.post("/api/localize/text", json={"image": attack, "text": "a red circle"}),
        client.post("/api/search/text", json={"text": "a red circle", "voice": attack}),
        client.post("/api/search/text", json={"text": "a red circle", "voice": f"espeak:{attack}"}),
        client.post("/api/search/text", json={"text": "a red circle", "k": attack}),
    ]
    for response in posts:
        assert_clean_4xx(response)
    # a file name is only a label: the upload's content is what is read
    named = client.post("/api/search/audio", files={"file": (attack, wav)}, data={"k": "2"})
    assert named.status_code == 200 and not any(leak in named.text for leak in LEAKS)
    # text is spoken, never opened
    spoken = client.post("/api/search/text", json={"text": attack, "k": 2})
    assert spoken.status_code in (200, 422) and not any(leak in spoken.text for leak in LEAKS)


def test_speak_returns_the_speech_of_a_typed_query(client) -> None:
    response = client.post("/api/speak", json={"text": "a red circle"})
    assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
    audio, rate = sf.read(io.BytesIO(response.content))
    assert rate == 16000 and 0.3 < len(audio) / rate < 5
    assert_clean_4xx(client.post("/api/speak", json={"text": "  "}), 422)
    assert_clean_4xx(client.post("/api/speak", json={"text": "x", "voice": "nope"}), 422)


def test_docs_need_no_network(client) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "<script" not in page.text and "cdn" not in page.text.lower() and "https://" not in page.text
    assert "/api/search/audio" in page.text and "SearchOut" in page.text
    assert "script-src" not in page.headers["content-security-policy"] or "'none'" in page.headers["content-security-policy"]
