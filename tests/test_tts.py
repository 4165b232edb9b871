"""Tests for vgs.tts: real espeak-ng audio, word timings, determinism, voices, worker pool."""

from __future__ import annotations

import collections
import re

import numpy as np
import pytest

from vgs.errors import VGSError
from vgs.tts import (
    Speech,
    Voice,
    VoicePoolConfig,
    WordTiming,
    _align_words,
    available_engines,
    list_voices,
    pick_voice,
    synthesize,
    synthesize_many,
    voice_pool,
)

CAPTION = "A black dog is running through the tall green grass ."
OTHER = "Two children , one in a red shirt , play with 3 balls near the water !"


def _words(text: str) -> list[str]:
    return [w for w in (re.sub(r"^[^\w']+|[^\w']+$", "", t) for t in text.split()) if w]


@pytest.fixture(scope="module")
def speech() -> Speech:
    return synthesize(CAPTION, Voice("espeak", "en-us+f2"))


def test_real_audio_comes_out(speech: Speech) -> None:
    assert speech.sample_rate == 16000 and speech.audio.dtype == np.float32 and speech.audio.ndim == 1
    assert np.sqrt(np.mean(speech.audio ** 2)) > 0.01 and np.abs(speech.audio).max() <= 1.0
    assert 10 / 6 < speech.duration < 10 / 1.5  # 10 words at 1.5-6 words per second
    assert speech.duration == len(speech.audio) / 16000


def test_silence_is_trimmed_to_margins(speech: Speech) -> None:
    edge = int(0.04 * 16000)
    assert np.abs(speech.audio[:edge]).max() < 1e-3 and np.abs(speech.audio[-edge:]).max() < 1e-3
    assert np.abs(speech.audio[edge:int(0.1 * 16000)]).max() > 1e-2  # speech starts at about 50 ms


@pytest.mark.parametrize("text", [CAPTION, OTHER, "A girl 's T-shirt is on the dog-bed , isn't it ?"])
def test_word_times_are_ordered_within_duration_and_match_text(text: str) -> None:
    result = synthesize(text, Voice("espeak", "en-gb-x-rp+m2", 190, 35))  # m2 has an echo tail
    assert result.words, "espeak gives word timings"
    assert [w.word for w in result.words] == _words(text)
    times = [t for w in result.words for t in (w.start, w.end)]
    assert times == sorted(times) and all(w.end > w.start for w in result.words)
    assert 0 <= times[0] and times[-1] <= result.duration + 1e-9
    assert all(isinstance(t, float) for t in times)
    assert result.words[0].to_dict() == {"word": result.words[0].word, "start": times[0], "end": times[1]}


def test_word_end_excludes_following_pause() -> None:
    result = synthesize("A dog , a cat", Voice("espeak", "en-us"))
    dog, after = result.words[1], result.words[2]
    assert dog.word == "dog" and after.start - dog.end > 0.05  # the comma pause belongs to neither word
    assert abs(result.words[-1].end - (result.duration - 0.05)) < 0.01  # last word: end of its sound


def test_align_words_maps_events_to_tokens() -> None:
    text = "A dog sits on the grass , 25 times ."
    events = [(0, 0), (2, 100), (6, 200), (11, 300), (18, 400), (26, 500), (27, 600), (29, 700)]
    phonemes = [0, 100, 150, 200, 250, 300, 320, 340, 360, 400, 500, 700]  # "on the": O n D @
    assert _align_words(text, events, phonemes, 800) == [
        ("A", 0), ("dog", 100), ("sits", 200), ("on", 300), ("the", 340), ("grass", 400), ("25", 500), ("times", 700)]
    assert _align_words("on the", [(0, 0)], [], 500) == [("on", 0), ("the", 200)]  # no phonemes: by letters


@pytest.mark.parametrize("text", ["to the left a red circle and to the right a blue square",
                                  "at the top a small green triangle and at the bottom a big red circle",
                                  "he is going to go out of it with a dog in the water on the grass"])
def test_one_word_timing_per_text_word(text: str) -> None:
    words = synthesize(text, Voice("espeak", "en+f3")).words
    assert [w.word for w in words] == text.split()  # espeak speaks "to the", "of a" as one: split
    assert all(w.end > w.start for w in words) and all(a.end <= b.start for a, b in zip(words, words[1:]))


@pytest.mark.parametrize("name", ["en-us", "en+f5", "en+klatt4", "en-gb-x-rp+m2"])
def test_same_caption_is_identical_whatever_came_before(name: str) -> None:
    voice = Voice("espeak", name)
    first = synthesize(CAPTION, voice)
    synthesize(OTHER, Voice("espeak", "en-029+m7", 150, 65))
    synthesize(OTHER, Voice("espeak", "en+f3"))
    again = synthesize(CAPTION, voice)
    assert np.array_equal(first.audio, again.audio)
    assert [w.to_dict() for w in first.words] == [w.to_dict() for w in again.words]


def test_voice_id_round_trip() -> None:
    voice = Voice("espeak", "en-gb-x-rp+f4", 150, 65)
    assert voice.id == "espeak:en-gb-x-rp+f4:r150:p65"
    assert Voice.from_id(voice.id) == voice
    assert Voice.from_id("espeak:en-us") == Voice("espeak", "en-us", 175, 50)


@pytest.mark.parametrize("bad", ["", "espeak", "espeak:en:r:p1", "espeak:en:p50:r175", "nope:en:r175:p50",
                                 "espeak:en:r10:p50", "espeak:en:r175:p100", "espeak::r175:p50"])
def test_malformed_voice_ids_are_rejected(bad: str) -> None:
    with pytest.raises(VGSError):
        Voice.from_id(bad)


def test_pick_voice_is_deterministic_and_spread() -> None:
    pool = voice_pool(VoicePoolConfig(engines="espeak"))
    assert len(pool) == 18 * 9 and pool == voice_pool(VoicePoolConfig(engines="espeak"))
    picks = [pick_voice(pool, f"1000268201_693b08cb0e.jpg#{i}") for i in range(2000)]
    assert picks == [pick_voice(pool, f"1000268201_693b08cb0e.jpg#{i}") for i in range(2000)]
    counts = collections.Counter(picks)
    assert len(counts) > 0.95 * len(pool) and max(counts.values()) < 40
    assert sum(pick_voice(pool, str(i), seed=1) != pick_voice(pool, str(i)) for i in range(100)) > 80
    with pytest.raises(VGSError):
        pick_voice([], "key")


def test_default_pool_voices_all_load() -> None:
    for name in VoicePoolConfig().espeak_voices:
        assert synthesize("Hello .", Voice("espeak", name)).duration > 0.2


def test_different_voices_give_different_audio(speech: Speech) -> None:
    for voice in [Voice("espeak", "en+m3"), Voice("espeak", "en-us+f2", pitch=65), Voice("espeak", "en-us+f4")]:
        other = synthesize(CAPTION, voice).audio
        assert len(other) != len(speech.audio) or not np.array_equal(other, speech.audio)


def test_rate_changes_duration() -> None:
    slow = synthesize(CAPTION, Voice("espeak", "en-us", rate=120)).duration
    normal = synthesize(CAPTION, Voice("espeak", "en-us", rate=175)).duration
    fast = synthesize(CAPTION, Voice("espeak", "en-us", rate=260)).duration
    assert slow > 1.2 * normal > 1.2 * 1.2 * fast


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_text_is_rejected(text: str) -> None:
    with pytest.raises(VGSError, match="empty"):
        synthesize(text, Voice("espeak", "en-us"))


@pytest.mark.parametrize("name", ["en-gb+f2", "xx-nope", "en-us+nosuchvariant"])
def test_unknown_voices_are_rejected(name: str) -> None:
    with pytest.raises(VGSError, match="unknown espeak-ng"):
        synthesize(CAPTION, Voice("espeak", name))
    with pytest.raises(VGSError):
        voice_pool(VoicePoolConfig(engines="espeak", espeak_voices=(name,)))


def test_unknown_or_missing_engine_is_rejected() -> None:
    with pytest.raises(VGSError, match="unknown TTS engine"):
        voice_pool(VoicePoolConfig(engines="espeak,nope"))
    with pytest.raises(VGSError, match="unknown TTS engine"):
        Voice("nope", "x")


def test_list_voices_rows() -> None:
    rows = list_voices(VoicePoolConfig(engines="espeak"))
    by_name = {(r["engine"], r["name"]): r for r in rows}
    assert by_name[("espeak", "en-us")]["description"] == "English (America)"
    assert by_name[("espeak", "en-us")]["pool"] == 4 * 9  # en-us+m1, +m3, +f2, +f4
    assert by_name[("espeak", "+f2")]["kind"] == "variant" and by_name[("espeak", "+klatt4")]["pool"] == 0
    espeak_voices = [r for r in rows if r["engine"] == "espeak" and r["kind"] == "voice"]
    assert sum(r["pool"] for r in espeak_voices) == 18 * 9
    assert all(set(r) >= {"engine", "name", "kind", "language", "description", "gender", "pool"} for r in rows)


def test_synthesize_many_in_workers_equals_in_process() -> None:
    pool = voice_pool(VoicePoolConfig(engines="espeak"))
    texts = [CAPTION, OTHER, "A man rides a bike .", "", "Dogs play in the snow ."] * 4
    jobs = [(f"c{i}", text, pick_voice(pool, f"c{i}")) for i, text in enumerate(texts)]
    jobs.append(("bad-voice", CAPTION, Voice("espeak", "en-gb+f2")))
    here = list(synthesize_many(jobs, workers=1))
    there = list(synthesize_many(jobs, workers=2, chunksize=3))
    assert [k for k, _ in there] == [job[0] for job in jobs] == [k for k, _ in here]
    for (key, a), (_, b) in zip(here, there):
        if key == "bad-voice" or key in {"c3", "c8", "c13", "c18"}:  # failures come back per caption
            assert isinstance(a, VGSError) and isinstance(b, VGSError) and str(a) == str(b)
        else:
            assert np.array_equal(a.audio, b.audio) and a.words == b.words and a.voice == b.voice


@pytest.mark.parametrize("engine", ["flite", "festival", "pico", "rhvoice", "mbrola"])
def test_external_engine_when_installed(engine: str) -> None:
    if engine not in available_engines():
        pytest.skip(f"{engine} is not installed")
    voices = voice_pool(VoicePoolConfig(engines=engine, rates=(150, 190), pitches=(50,)))
    assert voices and all(v.engine == engine for v in voices)
    voices = [v for v in voices if not v.name.endswith("_hts")] or voices  # festival's HTS voice keeps its own pace
    slow, fast = (synthesize(CAPTION, v) for v in voices[:2])
    assert slow.words is None and slow.audio.dtype == np.float32 and slow.sample_rate == 16000
    assert np.sqrt(np.mean(slow.audio ** 2)) > 0.01 and 1.0 < slow.duration < 10
    assert slow.duration > fast.duration * 1.1  # rate 150 is slower than 190
    with pytest.raises(VGSError):
        synthesize(CAPTION, Voice(engine, "no-such-voice"))


def test_word_timing_dataclass() -> None:
    assert WordTiming("dog", 0.1, 0.4).to_dict() == {"word": "dog", "start": 0.1, "end": 0.4}


def test_engines_are_balanced_and_copies_change_engine() -> None:
    import hashlib

    espeak = voice_pool(VoicePoolConfig(engines="espeak"))
    flite = [Voice("flite", name, rate) for name in ("kal16", "slt") for rate in (150, 190)]
    pool = espeak + flite  # 162 espeak voices, 4 flite: engines still get half the captions each
    counts = collections.Counter(pick_voice(pool, f"c{i}").engine for i in range(2000))
    assert 0.45 < counts["flite"] / 2000 < 0.55
    assert all(pick_voice(pool, f"c{i}", copy=1).engine != pick_voice(pool, f"c{i}").engine for i in range(200))
    # one engine: the voice is the one a single-engine pool always gave (data sets built before stay the same)
    digest = lambda key: int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")  # noqa: E731
    assert all(pick_voice(espeak, f"c{i}") == espeak[digest(f"0:c{i}") % len(espeak)] for i in range(50))
    assert all(pick_voice(espeak, f"c{i}", copy=2) == espeak[digest(f"0:c{i}@2") % len(espeak)] for i in range(50))


def test_festival_speaks_a_chunk_in_one_process_as_it_speaks_one_caption() -> None:
    if "festival" not in available_engines():
        pytest.skip("festival is not installed")
    voices = voice_pool(VoicePoolConfig(engines="festival", rates=(170,)))
    jobs = [(f"k{i}", f'A "quoted" dog number {i} runs \\ fast .', voices[i % len(voices)]) for i in range(4)]
    batched = list(synthesize_many(jobs, workers=1, chunksize=4))
    assert [key for key, _ in batched] == ["k0", "k1", "k2", "k3"]
    for (key, text, voice), (_, speech) in zip(jobs, batched):
        alone = synthesize(text, voice)
        assert isinstance(speech, Speech) and speech.voice == voice and speech.words is None
        assert abs(speech.duration - alone.duration) < 0.05
