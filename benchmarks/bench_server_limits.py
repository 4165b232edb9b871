"""Server resource figures for docs/reliability.md (issue 13): peak RSS under an audio bomb and an image
flood, and latency under 50 concurrent clients.

    python benchmarks/bench_server_limits.py setup DIR     # a tiny untrained model, an index, a big PNG
    python benchmarks/bench_server_limits.py bomb DIR      # 10 parallel 20 s / 8 ch / 384 kHz FLAC uploads
    python benchmarks/bench_server_limits.py image DIR     # 10 sizes of an 8000 x 8000 PNG
    python benchmarks/bench_server_limits.py load DIR      # 50 clients x 20 searches (half audio, half text)

Each measuring step runs in a fresh process (run them separately: ``ru_maxrss`` is a peak) against a
real uvicorn server on 127.0.0.1 in a thread, and ends with one ``RESULT`` JSON line.  Run it with
``PYTHONPATH`` pointing at another checkout's ``src`` to measure that code.
"""

from __future__ import annotations

import io
import json
import resource
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def setup(folder: Path) -> None:
    from PIL import Image

    from vgs.api import build_untrained
    from vgs.config import Config, set_value
    from vgs.io import save_checkpoint
    from vgs.config import to_dict
    from vgs.search import build_index

    photos = folder / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(30):
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(photos / f"p{i:02d}.png")
    x = np.linspace(0, 255, 8000, dtype=np.float32)
    big = np.stack([np.add.outer(x, x) / 2, np.add.outer(x, 255 - x) / 2, np.broadcast_to(x, (8000, 8000))], -1)
    Image.fromarray(big.astype(np.uint8)).save(photos / "zz-big.png", compress_level=1)
    del big
    config = Config(data=str(folder))
    for key, value in {"model.image_encoder": "small-cnn", "model.pretrained": False, "model.audio_encoder": "conv5",
                       "model.embed_dim": 64, "model.audio_channels": 64, "image.size": 128}.items():
        set_value(config, key, value)
    model = build_untrained(config.validate(), device="cpu")
    save_checkpoint(folder / "model.pt", {"config": to_dict(model.config), "model": model.net.state_dict()})
    from vgs.api import load

    build_index(load(folder / "model.pt"), folder / "index", images=photos, progress=False)


def start(folder: Path) -> tuple[str, object]:
    import torch
    import uvicorn

    from vgs.api import load
    from vgs.app import create_app
    from vgs.search import SearchIndex

    import vgs.app

    workers = getattr(getattr(vgs.app, "AppLimits")(), "workers", 1)  # as `vgs serve` does: 2 cores shared by the workers
    torch.set_num_threads(max(1, 2 // workers))
    app = create_app(load(folder / "model.pt"), SearchIndex(folder / "index"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", limit_concurrency=200))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server


def flac_bomb(seconds: float = 20.0, channels: int = 8, rate: int = 384000) -> bytes:
    import soundfile as sf

    buffer = io.BytesIO()
    block = np.zeros((rate, channels), np.float32)
    with sf.SoundFile(buffer, "w", rate, channels, format="FLAC", subtype="PCM_16") as f:
        for _ in range(int(seconds)):
            f.write(block)
    return buffer.getvalue()


def speech(seconds: float = 2.0) -> bytes:
    import soundfile as sf

    t = np.arange(int(seconds * 16000)) / 16000
    buffer = io.BytesIO()
    sf.write(buffer, (0.1 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t)).astype(np.float32), 16000,
             format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def bomb(folder: Path) -> dict:
    import httpx

    data = flac_bomb()
    url, _ = start(folder)
    with httpx.Client(base_url=url, timeout=300) as http:
        http.get("/api/health")
    before = rss_mb()

    def post(_: int) -> int:
        with httpx.Client(base_url=url, timeout=300) as http:
            return http.post("/api/search/audio", files={"file": ("b.flac", data, "audio/flac")}, data={"k": "3"}).status_code

    with ThreadPoolExecutor(10) as pool:
        codes = list(pool.map(post, range(10)))
    return {"case": "flac bomb x10", "upload_kb": round(len(data) / 1024), "codes": sorted(set(codes)),
            "rss_before_mb": round(before), "peak_rss_mb": round(rss_mb()), "growth_mb": round(rss_mb() - before)}


def image(folder: Path) -> dict:
    import httpx

    from vgs.search import SearchIndex

    big = SearchIndex(folder / "index").image_paths.index(str((folder / "photos" / "zz-big.png").resolve()))
    url, _ = start(folder)
    with httpx.Client(base_url=url, timeout=300) as http:
        http.get("/api/health")
    before = rss_mb()

    def get(size: int) -> int:
        with httpx.Client(base_url=url, timeout=300) as http:
            return http.get(f"/api/images/{big}", params={"size": size}).status_code

    with ThreadPoolExecutor(10) as pool:
        codes = list(pool.map(get, [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]))
    return {"case": "8000x8000 PNG at 10 sizes", "codes": sorted(set(codes)), "rss_before_mb": round(before),
            "peak_rss_mb": round(rss_mb()), "growth_mb": round(rss_mb() - before)}


def load(folder: Path) -> dict:
    import httpx

    url, _ = start(folder)
    blob = speech()
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(number: int) -> None:
        with httpx.Client(base_url=url, timeout=300) as http:
            for request in range(20):
                started = time.perf_counter()
                if (number + request) % 2:
                    r = http.post("/api/search/audio", files={"file": ("q.wav", blob, "audio/wav")}, data={"k": "5"})
                else:
                    r = http.post("/api/search/text", json={"text": "a red circle and a blue square", "k": 5})
                with lock:
                    latencies.append(time.perf_counter() - started)
                    if r.status_code != 200:
                        errors.append(f"{r.status_code} {r.text[:100]}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(50)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    p50, p95 = np.percentile(latencies, [50, 95])
    return {"case": "50 clients x 20 searches", "errors": len(errors), "first_error": errors[:1], "wall_s": round(wall, 1),
            "p50_ms": round(p50 * 1000), "p95_ms": round(p95 * 1000), "peak_rss_mb": round(rss_mb())}


if __name__ == "__main__":
    step, folder = sys.argv[1], Path(sys.argv[2])
    if step == "setup":
        setup(folder)
        print("RESULT", json.dumps({"setup": str(folder)}))
    else:
        print("RESULT", json.dumps({"bomb": bomb, "image": image, "load": load}[step](folder)))
