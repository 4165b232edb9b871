"""The Whisper front end (vgs.whisper): the weights reader, the PyTorch encoder against CTranslate2's own,
the feature kind and its head."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from vgs import whisper
from vgs.errors import VGSError
from vgs.features import AudioFeatureConfig, compute_features
from vgs.models.audio import FrameHead


def _tone(seconds: float, rate: int = 16000) -> np.ndarray:
    """A gliding tone with an amplitude envelope: speech-like enough to exercise every layer."""
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def test_encoder_matches_ctranslate2():
    ctranslate2 = pytest.importorskip("ctranslate2")
    mel = whisper.log_mel(whisper.mel_power(torch.from_numpy(np.pad(_tone(2.0), (0, 30 * 16000 - 32000)))))[None, :, :3000]
    ours = whisper.load_encoder()(mel)[0].numpy()
    reference = ctranslate2.models.Whisper(str(whisper.weights_path().parent), device="cpu", compute_type="float32")
    theirs = np.array(reference.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel.numpy())), to_cpu=True))[0]
    assert ours.shape == theirs.shape == (1500, whisper.WIDTH)
    assert np.abs(ours - theirs).max() < 2e-3 * np.abs(theirs).max()


def test_mel_input_matches_whisper_definition():
    y = torch.from_numpy(_tone(1.0))
    power = whisper.mel_power(y)
    assert power.shape == (80, 100)  # N // 160 frames
    # Whisper: |STFT|^2 of a periodic Hann window, reflect padding, last frame dropped, Slaney mel filters
    frames = torch.nn.functional.pad(y[None, None], (200, 200), mode="reflect")[0, 0].unfold(0, 400, 160)[:100]
    spectrum = torch.fft.rfft(frames * torch.hann_window(400), dim=1).abs().square().T
    assert torch.allclose(power, whisper._mel_filters() @ spectrum, rtol=1e-3, atol=1e-6)
    logs = whisper.log_mel(power)
    assert float(logs.max()) == pytest.approx((float(power.max().log10()) + 4) / 4, rel=1e-5)
    assert float(logs.min()) >= float(logs.max()) - 2.0 - 1e-6  # 8 decades / 4


def test_whisper_features_shape_pooling_and_trimming():
    config = AudioFeatureConfig(kind="whisper")
    speech = _tone(1.6)
    feats = compute_features(speech, config)
    assert feats.shape == (-(-80 // whisper.POOL), whisper.WIDTH) and np.isfinite(feats).all()  # 160 mel -> 80 steps -> 20
    padded = compute_features(np.concatenate([np.zeros(16000, np.float32), speech, np.zeros(8000, np.float32)]), config)
    assert len(padded) < len(feats) + 4  # the silence was trimmed (10-frame margins)
    untrimmed = compute_features(np.concatenate([np.zeros(16000, np.float32), speech]), AudioFeatureConfig(kind="whisper", trim_db=0))
    assert len(untrimmed) == -(-130 // whisper.POOL)
    tiny = compute_features(np.ones(50, np.float32) * 0.1, config)  # shorter than one mel frame
    assert tiny.shape == (1, whisper.WIDTH)
    long = compute_features(_tone(12.0), config)  # max_frames 1024 of 10 ms: the rest is not read
    assert len(long) == -(-512 // whisper.POOL)
    assert config.dim == whisper.WIDTH and config.frame_seconds == pytest.approx(0.08)


def test_whisper_kind_is_validated():
    with pytest.raises(VGSError, match="max_frames <= 3000"):
        AudioFeatureConfig(kind="whisper", max_frames=4000).validate()
    with pytest.raises(VGSError, match="sample_rate 16000"):
        AudioFeatureConfig(kind="whisper", sample_rate=8000).validate()


def test_frame_head_lengths_and_padding_invariance():
    head = FrameHead(whisper.WIDTH, 32, 24).eval()
    x, lengths = torch.randn(3, whisper.WIDTH, 9), torch.tensor([9, 5, 1])
    out, out_lengths = head(x, lengths)
    assert out.shape == (3, 32, 5) and out_lengths.tolist() == [5, 3, 1] == head.output_lengths(lengths).tolist()
    alone, _ = head(x[1:2, :, :5], lengths[1:2])
    assert torch.allclose(out[1, :, :3], alone[0], atol=1e-5) and out[1, :, 3:].abs().max() == 0


def _ct2_file(path, variables: list[tuple[str, tuple[int, ...], int, bytes]], version: int = 6) -> None:
    def string(text: str) -> bytes:
        return struct.pack("<H", len(text) + 1) + text.encode() + b"\0"
    body = struct.pack("<I", version) + string("WhisperSpec") + struct.pack("<I", 3) + struct.pack("<I", len(variables))
    for name, shape, type_id, data in variables:
        body += string(name) + struct.pack("<B", len(shape)) + b"".join(struct.pack("<I", d) for d in shape)
        body += struct.pack("<B", type_id) + struct.pack("<I", len(data)) + data
    path.write_bytes(body + struct.pack("<I", 0))


def test_reader_reads_tensors_and_refuses_bad_files(tmp_path):
    good = tmp_path / "model.bin"
    _ct2_file(good, [("a/w", (2, 3), 0, np.arange(6, dtype=np.float32).tobytes()),
                     ("b", (4,), 4, np.ones(4, np.float16).tobytes())])
    tensors = whisper.read_ctranslate2(good)
    assert tensors["a/w"].tolist() == [[0, 1, 2], [3, 4, 5]] and tensors["b"].dtype == np.float16
    cases = {
        "version": ([("a", (1,), 0, b"\0" * 4)], 5, "binary version 6"),
        "shape": ([("a", (1 << 30, 1 << 30), 0, b"\0" * 4)], 6, "do not fit"),
        "dtype": ([("a", (1,), 9, b"\0" * 4)], 6, "unknown dtype"),
    }
    for name, (variables, version, message) in cases.items():
        path = tmp_path / f"{name}.bin"
        _ct2_file(path, variables, version)
        with pytest.raises(VGSError, match=message):
            whisper.read_ctranslate2(path)
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(good.read_bytes()[:40])
    with pytest.raises(VGSError, match="truncated|do not fit|bad string"):
        whisper.read_ctranslate2(truncated)
    with pytest.raises(VGSError, match="no tensor"):
        whisper.WhisperEncoder.from_ctranslate2(tensors)


def test_weights_path_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(whisper.WEIGHTS_ENV, str(tmp_path / "missing.bin"))
    with pytest.raises(VGSError, match="no such file"):
        whisper.weights_path()
    monkeypatch.delenv(whisper.WEIGHTS_ENV)
    assert whisper.weights_path().name == "model.bin" and whisper.weights_path().is_file()


def test_whisper_front_end_trains_and_answers_queries(tiny_scenes, tmp_path):
    """The tiny scenes with ``features.kind: whisper`` and the ``frame-head``: the cache, training, dev recall
    above the untrained model's, and a spoken query through the library's own front end."""
    from conftest import tiny_config
    from vgs.api import evaluate_run, load
    from vgs.train import train

    config = tiny_config(tiny_scenes, **{"features.kind": "whisper", "model.audio_encoder": "frame-head",
                                         "train.epochs": 4, "train.lr": 3e-3, "train.eval_every": 4, "train.workers": 2})
    run = tmp_path / "run"
    train(config, run, progress=False)
    directions = ("speech_to_image", "image_to_speech")
    trained = evaluate_run(run, split="dev", draws=5, progress=False)
    baseline = evaluate_run(run, split="dev", draws=5, untrained=True, progress=False)
    gains = [trained[d]["r10"]["mean"] - baseline[d]["r10"]["mean"] for d in directions]
    assert sum(gains) / 2 > 0.1, gains
    settings = json.loads(next((tiny_scenes / "cache").glob("audio-whisper-*/train.settings.json")).read_text())
    assert settings["front_end_sha256"] == whisper.weights_identity()  # other weights: another cache
    model = load(run)
    assert model.frame_seconds() == pytest.approx(0.16)  # 80 ms features, one stride-2 block
    rows = [json.loads(line) for line in (tiny_scenes / "dev.jsonl").read_text().splitlines()]
    images = sorted({tiny_scenes / row["image"] for row in rows})
    scores = model.similarity(images, [tiny_scenes / rows[0]["audio"]])  # images x 1
    assert scores.shape == (len(images), 1) and torch.isfinite(scores).all()
