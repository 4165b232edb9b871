"""Audio features agree with a reference librosa computation; the cache is built once and rebuilt on change."""

from __future__ import annotations

import json

import librosa
import numpy as np
import pytest
import soundfile as sf

from vgs.data.manifest import read_manifest, write_manifest
from vgs.errors import VGSError
from vgs.data.cache import build_feature_cache
from vgs.features import AudioFeatureConfig, compute_features, pad_features


def davenet_reference(y: np.ndarray) -> np.ndarray:
    """DAVEnet's own recipe (dataloaders/image_caption_dataset.py), with librosa."""
    y = y - y.mean()
    y = np.append(y[0], y[1:] - 0.97 * y[:-1])
    spec = np.abs(librosa.stft(y, n_fft=400, hop_length=160, win_length=400, window="hamming")) ** 2
    mel = librosa.filters.mel(sr=16000, n_fft=400, n_mels=40, fmin=20) @ spec
    return librosa.power_to_db(mel, ref=np.max).T


def test_logmel_matches_reference() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(16000 * 2) / 16000
    y = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)
    ours = compute_features(y)
    ref = davenet_reference(y)
    assert ours.shape == ref.shape == (201, 40)
    np.testing.assert_allclose(ours, ref, atol=1e-3)


def test_mfcc_option_and_cropping() -> None:
    y = np.random.default_rng(1).standard_normal(16000 * 12).astype(np.float32)
    config = AudioFeatureConfig(kind="mfcc", n_mfcc=13)
    feats = compute_features(y, config)
    assert feats.shape == (1024, 13)  # 12 s would be 1201 frames: cropped to max_frames
    mel = compute_features(y, AudioFeatureConfig(max_frames=1024))
    expected = librosa.feature.mfcc(S=mel.T, n_mfcc=13, dct_type=2, norm="ortho").T
    np.testing.assert_allclose(feats, expected, atol=1e-3)


def test_pad_features() -> None:
    batch, lengths = pad_features([np.ones((5, 3)), np.ones((9, 3))], multiple=4)
    assert batch.shape == (2, 3, 12) and lengths.tolist() == [5, 9]
    assert batch[0, :, 5:].abs().sum() == 0


def _tiny_dataset(root, n: int = 3):
    rows = []
    (root / "audio").mkdir(parents=True)
    for i in range(n):
        sf.write(root / "audio" / f"{i}.wav", np.random.default_rng(i).standard_normal(4000 + 1600 * i).astype(np.float32) * 0.1, 16000)
        rows.append({"id": f"u{i}", "image": "images/x.png", "image_id": "x", "audio": f"audio/{i}.wav", "speaker": "s"})
    write_manifest(root / "train.jsonl", rows)
    return read_manifest(root / "train.jsonl")


def test_cache_built_once_and_rebuilt_when_settings_change(tmp_path, monkeypatch) -> None:
    manifest = _tiny_dataset(tmp_path)
    store = build_feature_cache(manifest, "train", workers=1, progress=False)
    assert len(store) == 3 and store.get("u2").shape == (46, 40)
    calls = []
    import vgs.data.cache as cache

    original = cache.features_from_file
    monkeypatch.setattr(cache, "features_from_file", lambda *a, **k: calls.append(1) or original(*a, **k))
    build_feature_cache(manifest, "train", workers=1, progress=False)
    assert calls == []  # reused
    build_feature_cache(manifest, "train", AudioFeatureConfig(n_mels=24), workers=1, progress=False)
    assert len(calls) == 3  # new settings, recomputed
    settings = json.loads(next(tmp_path.glob("cache/audio-logmel-*/train.settings.json")).read_text())
    assert settings["features"]["n_mels"] in (40, 24)


def test_cache_skips_unreadable_audio(tmp_path) -> None:
    manifest = _tiny_dataset(tmp_path)
    (tmp_path / "audio" / "1.wav").write_bytes(b"RIFF....garbage")
    store = build_feature_cache(manifest, "train", workers=1, progress=False)
    assert store.ids == ["u0", "u2"]
    problems = json.loads(next(tmp_path.glob("cache/audio-*/train.problems.json")).read_text())
    assert len(problems) == 1 and "1.wav" in problems[0]


@pytest.mark.parametrize("workers", [2])
def test_cache_with_workers_equals_inline(tmp_path, workers: int) -> None:
    manifest = _tiny_dataset(tmp_path / "a")
    inline = build_feature_cache(manifest, "train", workers=1, progress=False)
    manifest_b = _tiny_dataset(tmp_path / "b")
    pooled = build_feature_cache(manifest_b, "train", workers=workers, chunk=1, progress=False)
    np.testing.assert_array_equal(inline.frames, pooled.frames)


def test_silence_is_trimmed_at_the_ends_but_tts_margins_are_kept() -> None:
    from vgs.tts import Voice, synthesize

    speech = synthesize("a red circle", Voice("espeak", "en-us+m1")).audio
    rng = np.random.default_rng(0)
    padded = np.concatenate([rng.normal(0, 1e-4, 16000), speech, rng.normal(0, 1e-4, 24000)]).astype(np.float32)
    config = AudioFeatureConfig()
    tts, recorded = compute_features(speech, config), compute_features(padded, config)
    assert abs(len(tts) - (len(speech) // config.hop + 1)) <= 1  # 50 ms margins: nothing cut
    assert len(recorded) < len(tts) + 2 * config.trim_margin + 4  # 2.5 s of room noise gone
    untrimmed = compute_features(padded, AudioFeatureConfig(trim_db=0.0))
    assert len(untrimmed) == len(padded) // config.hop + 1
    with pytest.raises(VGSError, match="trim_db"):
        AudioFeatureConfig(trim_db=float("nan")).validate()
