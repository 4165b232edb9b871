"""Issue 13: resource limits and trust boundaries in the server, the index and the inputs.

Each test is named after the numbered item of the issue it pins; each fails on the code before the fix.
"""

from __future__ import annotations

import math
from pathlib import Path

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
        try:  # argparse's type check (usage + one error line, exit 2) or the library's range check (one line, exit 1)
            code = main(["localize", str(tmp_path / "run"), "--image", "x.png", "--audio", "x.wav", "--window", window,
                         "--out", str(tmp_path / "out")])
        except SystemExit as exc:
            code = exc.code
        err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("usage:")
               and not line.startswith("  ")]
        assert code in (1, 2) and "--window" in err[-1] and len(err) == 1, err


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
    code = main(["search", str(indexed / "a.pt"), "--index", str(folder), "--text", "a red circle", "-k", "2"])
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


# ----------------------------------------------------------------------------- 1-5, 12. the server


def _flac_bomb(seconds: int = 20, channels: int = 8, rate: int = 192000) -> bytes:
    import io

    import numpy as np
    import soundfile as sf

    buffer = io.BytesIO()
    block = np.zeros((rate, channels), np.float32)
    with sf.SoundFile(buffer, "w", rate, channels, format="FLAC", subtype="PCM_16") as f:
        for _ in range(seconds):
            f.write(block)
    return buffer.getvalue()


def test_1_audio_bomb_decodes_in_bounded_memory() -> None:
    import tracemalloc

    from vgs.audio import load_audio

    data = _flac_bomb()  # 20 s x 8 channels x 192 kHz: 123 MB as float32, a few KB as FLAC
    assert len(data) < 200_000
    tracemalloc.start()
    try:
        signal = load_audio(data, 16000, max_seconds=20.25, name="upload")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(signal) == 20 * 16000
    assert peak < 40 * 2**20, f"peak {peak / 2**20:.0f} MB"  # old code: ~140 MB (all channels decoded at once)


@pytest.fixture(scope="module")
def app_parts(indexed):
    from vgs.api import load
    from vgs.search import SearchIndex

    return load(indexed / "a.pt"), SearchIndex(indexed / "idx")


def _client(app):
    from fastapi.testclient import TestClient

    return TestClient(app, base_url="http://127.0.0.1")


def test_1_concurrent_audio_decodes_are_bounded(app_parts, monkeypatch, tiny_scenes) -> None:
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    import vgs.query
    from vgs.app import AppLimits, create_app

    real, active, peak, lock = vgs.query.load_audio, [0], [0], threading.Lock()

    def slow_load(*args, **kwargs):  # noqa: ANN002, ANN003
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.3)
        try:
            return real(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(vgs.query, "load_audio", slow_load)
    client = _client(create_app(*app_parts, AppLimits(max_decodes=2)))
    wav = (tiny_scenes / "audio" / "test_00000_0.wav").read_bytes()

    def post(_: int) -> int:
        return client.post("/api/search/audio", files={"file": ("q.wav", wav, "audio/wav")}, data={"k": "2"}).status_code

    with ThreadPoolExecutor(6) as pool:
        assert set(pool.map(post, range(6))) == {200}
    assert peak[0] == 2


def _image_index(indexed, tmp_path):
    import numpy as np
    from PIL import Image

    from vgs.api import load
    from vgs.search import SearchIndex, build_index

    photos = tmp_path / "photos"
    photos.mkdir()
    x = np.linspace(0, 255, 2000, dtype=np.float32)
    pixels = np.stack([np.add.outer(x[:1500], x) / 2] * 3, -1).astype(np.uint8)  # 2000 x 1500
    Image.fromarray(pixels).save(photos / "a.jpg", quality=90)
    Image.fromarray(pixels).save(photos / "b.png", compress_level=1)
    model = load(indexed / "a.pt")
    build_index(model, tmp_path / "idx", images=photos, progress=False)
    index = SearchIndex(tmp_path / "idx")
    return model, index, [Path(p).name for p in index.image_paths]


def test_2_images_snap_to_few_sizes_decode_under_a_pixel_budget_and_cache_in_bytes(indexed, tmp_path, monkeypatch) -> None:
    import io

    from PIL import Image

    import vgs.query
    from vgs.app import AppLimits, create_app
    from vgs.query import THUMBNAIL_SIZES

    model, index, names = _image_index(indexed, tmp_path)
    jpeg, png = names.index("a.jpg"), names.index("b.png")
    decodes: list[tuple[int, int]] = []
    real = vgs.query._thumbnail_bytes

    def counting(index, i, size, max_pixels):  # noqa: ANN001
        decodes.append((i, size))
        return real(index, i, size, max_pixels)

    monkeypatch.setattr(vgs.query, "_thumbnail_bytes", counting)
    # budget 1 Mpx: the 3 Mpx JPEG is decoded at half scale (draft), the 3 Mpx PNG cannot be reduced: 413
    app = create_app(model, index, AppLimits(max_image_pixels=1_000_000, image_cache_bytes=200_000))
    client = _client(app)
    sizes = [100, 150, 200, 250, 300, 350, 400, 450, 500, 511]
    for size in sizes:
        response = client.get(f"/api/images/{jpeg}", params={"size": size})
        assert response.status_code == 200, response.text
        assert max(Image.open(io.BytesIO(response.content)).size) <= size
    assert len(decodes) == len({max(s for s in THUMBNAIL_SIZES if s <= size) for size in sizes}) == 5  # old: 10
    assert app.state.service.thumbnails.bytes <= 200_000
    assert client.get(f"/api/images/{png}", params={"size": 256}).status_code == 413


def test_3_host_header_must_name_the_server(app_parts) -> None:
    from fastapi.testclient import TestClient

    from vgs.app import create_app

    app = create_app(*app_parts)
    evil = TestClient(app, base_url="http://evil.example:8000")
    response = evil.get("/api/images/0")
    assert response.status_code == 400 and "Host" in response.json()["detail"]
    assert evil.get("/").status_code == 400
    for base in ("http://127.0.0.1:8000", "http://localhost", "http://[::1]:8000"):
        assert TestClient(app, base_url=base).get("/api/images/0").status_code == 200
    extra = create_app(*app_parts, allowed_hosts=["photos.example.org"])
    assert TestClient(extra, base_url="http://photos.example.org").get("/api/health").status_code == 200
    assert TestClient(extra, base_url="http://127.0.0.1").get("/api/health").status_code == 400


def test_3_cli_serve_takes_allowed_hosts() -> None:
    from vgs.cli import build_parser

    args = build_parser().parse_args(["serve", "--index", "x", "--allowed-hosts", "a.example, b.example"])
    assert args.allowed_hosts == "a.example, b.example"


def test_4_slow_bodies_get_408(app_parts) -> None:
    import asyncio
    import time

    from vgs.app import AppLimits, create_app

    app = create_app(*app_parts, AppLimits(body_seconds=0.5))
    sent: list[dict] = []

    async def receive() -> dict:  # one byte every 0.2 s, forever
        await asyncio.sleep(0.2)
        return {"type": "http.request", "body": b"x", "more_body": True}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/api/search/text", "raw_path": b"/api/search/text", "root_path": "", "query_string": b"",
             "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    started = time.monotonic()
    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout=5))  # old code: never returns
    assert sent[0]["status"] == 408 and time.monotonic() - started < 2


def test_4_slow_headers_are_cut_off(app_parts) -> None:
    import socket
    import threading
    import time

    import uvicorn

    from vgs.app import create_app, server_config

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(server_config(create_app(*app_parts), "127.0.0.1", port, "warning", header_seconds=1.0))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        trickle = socket.create_connection(("127.0.0.1", port))
        started = time.monotonic()
        closed_after = None
        for byte in b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100:
            try:
                trickle.sendall(bytes([byte]))
                trickle.settimeout(0.3)
                if trickle.recv(1) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                continue
            except OSError:
                closed_after = time.monotonic() - started
                break
        assert closed_after is not None and closed_after < 4, closed_after
        with socket.create_connection(("127.0.0.1", port)) as fast:  # a normal request still works
            fast.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert fast.recv(64).startswith(b"HTTP/1.1 200")
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_5_independent_queries_run_concurrently(app_parts, monkeypatch, tiny_scenes) -> None:
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from vgs.app import AppLimits, create_app

    model, index = app_parts
    active, peak, lock = [0], [0], threading.Lock()
    real = model.encode_audio

    def slow_encode(*args, **kwargs):  # noqa: ANN002, ANN003
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.3)
        try:
            return real(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(model, "encode_audio", slow_encode)
    client = _client(create_app(model, index, AppLimits(workers=3)))
    wav = (tiny_scenes / "audio" / "test_00000_0.wav").read_bytes()
    baseline = client.post("/api/search/audio", files={"file": ("q.wav", wav, "audio/wav")}, data={"k": "3"}).json()

    def post(_: int) -> dict:
        return client.post("/api/search/audio", files={"file": ("q.wav", wav, "audio/wav")}, data={"k": "3"}).json()

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(post, range(6)))
    assert peak[0] == 3  # old code: one query at a time (a global lock)
    assert all(r["hits"] == baseline["hits"] for r in results)  # and the same answers


def test_12_text_queries_are_held_to_the_audio_limit_and_cuts_are_flagged(app_parts, tiny_scenes) -> None:
    from vgs.app import AppLimits, create_app

    client = _client(create_app(*app_parts, AppLimits(max_audio_seconds=3.0)))
    text = "a small red circle above a large blue square and a green triangle beside a yellow star " * 2
    result = client.post("/api/search/text", json={"text": text, "k": 2})
    assert result.status_code == 200, result.text
    query = result.json()["query"]
    assert query["duration"] <= 3.0 and query["truncated"] is True  # old code: ~10 s spoken and searched
    assert all(w["start"] < 3.0 and w["end"] <= 3.0 for w in query["words"])
    short = client.post("/api/search/text", json={"text": "a red circle", "k": 2}).json()["query"]
    assert short["truncated"] is False and short["searched_seconds"] == short["duration"]
    # audio longer than the model reads (max_frames) is flagged too
    import io

    import numpy as np
    import soundfile as sf

    model, _ = app_parts
    reads = model.config.features.max_frames * model.config.features.hop_ms / 1000
    buffer = io.BytesIO()
    sf.write(buffer, 0.1 * np.sin(np.arange(int((reads + 2) * 16000)) / 10), 16000, format="WAV")
    long = _client(create_app(*app_parts)).post("/api/search/audio", files={"file": ("q.wav", buffer.getvalue())})
    assert long.status_code == 200 and long.json()["query"]["truncated"] is True
    assert long.json()["query"]["searched_seconds"] == pytest.approx(reads, abs=0.01)
