"""Tests for vgs.augment: waveform corruptions (test sets) and voice augmentation (training)."""

from __future__ import annotations

import numpy as np
import pytest

from vgs.augment import (
    AugmentConfig,
    VoiceAugment,
    add_noise,
    change_speed,
    corrupt,
    draw_corruptions,
    item_rng,
    parse_corruptions,
    reverberate,
    speech_power,
    telephone,
)
from vgs.errors import VGSError
from vgs.features import AudioFeatureConfig, compute_features
from vgs.tts import Voice, synthesize


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return synthesize("A brown dog runs across the green grass .", Voice("espeak", "en-us+m1")).audio


def test_parse_corruptions_and_errors() -> None:
    effects = parse_corruptions("noise:10, reverb:0.5,speed:0.9,telephone,gain:-6,noise:5:pink")
    assert [e.kind for e in effects] == ["noise", "reverb", "speed", "telephone", "gain", "noise"]
    assert [e.label for e in effects] == ["noise10dB", "reverb0.5s", "speed0.9", "telephone", "gain-6dB", "noise5dB-pink"]
    for bad in ("noise", "speed:5", "reverb:nan", "echo:3", "", "noise:10:brown"):
        with pytest.raises(VGSError, match="--corrupt"):
            parse_corruptions(bad)


def test_noise_hits_the_requested_snr(speech) -> None:
    rng = np.random.default_rng(0)
    for kind in ("white", "pink"):
        noisy = add_noise(speech, 10.0, rng, kind)
        assert noisy.shape == speech.shape and np.isfinite(noisy).all()
        snr = 10 * np.log10(speech_power(speech) / np.mean((noisy - speech) ** 2))
        assert abs(snr - 10.0) < 1.5, (kind, snr)
    babble = add_noise(speech, 0.0, rng, "babble", babble=[speech[::-1].copy(), speech * 0.5])
    assert babble.shape == speech.shape and np.isfinite(babble).all()
    with pytest.raises(VGSError, match="babble"):
        add_noise(speech, 0.0, rng, "babble")


def test_speed_changes_length_and_pitch_not_content(speech) -> None:
    slow, fast = change_speed(speech, 0.9), change_speed(speech, 1.1)
    assert abs(len(slow) - len(speech) / 0.9) < 16 and abs(len(fast) - len(speech) / 1.1) < 16
    assert np.isfinite(slow).all() and np.isfinite(fast).all()


def test_reverb_and_telephone_keep_length_and_are_finite(speech) -> None:
    wet = reverberate(speech, 0.6, np.random.default_rng(1))
    narrow = telephone(speech)
    for out in (wet, narrow):
        assert out.shape == speech.shape and np.isfinite(out).all() and np.abs(out).max() <= 1.0
    assert not np.allclose(wet, speech)
    spectrum = np.abs(np.fft.rfft(narrow)) ** 2
    freqs = np.fft.rfftfreq(len(narrow), 1 / 16000)
    assert spectrum[freqs > 4500].sum() < 0.01 * spectrum.sum()  # nothing above the telephone band


def test_corrupt_is_seeded_by_item(speech) -> None:
    effects = parse_corruptions("noise:10,reverb:0.4")
    a = corrupt(speech, effects, item_rng("caption#1"))
    b = corrupt(speech, effects, item_rng("caption#1"))
    c = corrupt(speech, effects, item_rng("caption#2"))
    assert np.array_equal(a, b) and not np.array_equal(a, c) and np.abs(a).max() <= 1.0


def test_voice_augment_shapes_seeding_and_range(speech) -> None:
    feats = compute_features(speech, AudioFeatureConfig())
    augment = VoiceAugment(AugmentConfig(stretch_prob=1.0, warp_prob=1.0, reverb_prob=1.0, noise_prob=1.0))
    babble = lambda rng: feats[::-1]  # noqa: E731
    out = augment(feats, np.random.default_rng([0, 0, 5]), babble)
    again = augment(feats, np.random.default_rng([0, 0, 5]), babble)
    other = augment(feats, np.random.default_rng([0, 1, 5]), babble)
    assert np.array_equal(out, again) and not np.array_equal(out, other)
    assert out.shape[1] == feats.shape[1] and abs(len(out) - len(feats)) <= 0.2 * len(feats) + 1
    assert np.isfinite(out).all() and out.max() == 0.0 and out.min() >= -80.0


def test_voice_augment_effects_do_what_they_say(speech) -> None:
    feats = compute_features(speech, AudioFeatureConfig()).astype(np.float32)
    augment = VoiceAugment(AugmentConfig())
    assert len(augment.stretch(feats, 1.25)) == round(len(feats) / 1.25)
    warped = augment.warp(feats, 1.2)  # energy moves up in frequency
    centroid = lambda x: (10 ** (x / 10) * np.arange(x.shape[1])).sum() / (10 ** (x / 10)).sum()  # noqa: E731
    assert centroid(warped) > centroid(feats)
    noisy = augment.add_noise(10 ** (feats / 10.0), 0.0, np.random.default_rng(0))
    assert (noisy >= 10 ** (feats / 10.0)).all()
    tail = augment.reverberate(10 ** (feats / 10.0), 0.8, np.random.default_rng(0))
    silent_after = tail[-3:].sum() >= (10 ** (feats[-3:] / 10.0)).sum()
    assert silent_after and tail.shape == feats.shape


def test_augment_config_validation() -> None:
    for bad in (dict(noise_prob=1.5), dict(stretch=(1.2, 0.9)), dict(snr_db=(float("nan"), 3.0)), dict(eq_db=-1.0),
                dict(clean_epochs=-1), dict(clean_epochs=0.5)):
        with pytest.raises(VGSError, match="augment"):
            AugmentConfig(**bad).validate()


@pytest.mark.parametrize("snr_db", [5.0, 15.0])
def test_feature_noise_matches_waveform_noise_through_the_front_end(snr_db) -> None:
    """White noise mixed into features looks like white noise mixed into the waveform at the same SNR:
    the pre-emphasis tilt (+32 dB across the bands) and the SNR's reference are the front end's."""
    from vgs.augment import add_noise
    from vgs.features import AudioFeatureConfig, compute_features

    config = AudioFeatureConfig(trim_db=0.0)
    t = np.arange(32000) / 16000
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 3 * t))  # syllable-rate loudness changes
    voiced = sum(np.sin(2 * np.pi * 120 * k * t) / k for k in range(1, 30))  # a 120 Hz voice, falling harmonics
    speech = (0.1 * envelope * voiced).astype(np.float32)
    clean = compute_features(speech, config)
    waveform = np.mean([compute_features(add_noise(speech, snr_db, np.random.default_rng(s)), config)
                        for s in range(3)], axis=0)
    augment = VoiceAugment(AugmentConfig(), config.n_mels, config.fmin, config.sample_rate, 0.01, config.preemphasis)
    feature = []
    for s in range(3):
        rng = np.random.default_rng(s)
        power = augment.add_noise(10.0 ** (clean.astype(np.float64) / 10), snr_db, _WhiteOnly(rng))
        x = 10 * np.log10(power)
        feature.append(np.maximum(x - x.max(), -80.0))
    gap = np.abs(np.mean(feature, axis=0).mean(axis=0) - waveform.mean(axis=0))  # per band, dB
    assert np.median(gap) < 1.5 and gap.max() < 4.0, np.round(gap, 1)
    flat = VoiceAugment(AugmentConfig(), config.n_mels, config.fmin, config.sample_rate, 0.01, preemphasis=0.0)
    assert np.ptp(10 * np.log10(flat.white)) < 1e-9 and np.ptp(10 * np.log10(augment.white)) > 25


class _WhiteOnly:
    """An rng whose ``random()`` always picks white noise (the shape choice draws ``random() < 0.5``)."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def random(self) -> float:
        return 0.0

    def __getattr__(self, name):
        return getattr(self.rng, name)


def test_draw_corruptions_follows_the_training_ranges() -> None:
    """Effect rates match the augmentation's probabilities; values stay in its ranges; all parse back."""
    config = AugmentConfig()
    draws = [draw_corruptions(config, np.random.default_rng(k)) for k in range(2000)]
    rate = lambda kind: np.mean([any(e.kind == kind for e in d) for d in draws])  # noqa: E731
    assert rate("speed") == pytest.approx(config.stretch_prob, abs=0.04)
    assert rate("reverb") == pytest.approx(config.reverb_prob, abs=0.04)
    assert rate("noise") == pytest.approx(config.noise_prob, abs=0.04)
    noises = [e for d in draws for e in d if e.kind == "noise"]
    assert np.mean([e.noise == "babble" for e in noises]) == pytest.approx(config.babble_share, abs=0.05)
    assert all(config.snr_db[0] <= e.value <= config.snr_db[1] for e in noises)
    assert all(config.stretch[0] <= e.value <= config.stretch[1] for d in draws for e in d if e.kind == "speed")
    spec = ",".join(f"{e.kind}:{e.value:g}:{e.noise}" if e.kind == "noise" else e.kind if e.kind == "telephone"
                    else f"{e.kind}:{e.value:g}" for e in noises[:1] + [e for d in draws[:50] for e in d if e.kind != "noise"])
    assert parse_corruptions(spec)  # drawn values are in the --corrupt bounds
    off = AugmentConfig(stretch_prob=0, reverb_prob=0, telephone_prob=0, noise_prob=0)
    assert draw_corruptions(off, np.random.default_rng(0)) == []
