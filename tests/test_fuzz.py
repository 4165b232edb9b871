"""Property / fuzz tests for bad input (hypothesis).

Audio, images, manifests, configs and the CLI are fed random bytes, cut and spliced
files, random headers, random JSON and YAML.  Each case must give a clear
:class:`~vgs.errors.VGSError` (``InputError`` naming the file for data), a skip with a
report, or a correct result: no other exception type ever escapes, nothing hangs.

The number of cases tried per area is printed at the end of the module and, when the
environment variable ``VGS_FUZZ_REPORT`` names a file, written there as JSON:
``{"audio": n, "images": n, "manifests": n, "configs": n, "cli": n}``.  ``VGS_FUZZ_SCALE=10``
multiplies every property's number of examples for a deeper run.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import re
import string
import struct
import time
import zlib
from collections import Counter
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import soundfile as sf
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from vgs import cli
from vgs.audio import load_audio
from vgs.config import Config, load_config, set_value, to_dict
from vgs.data.manifest import KNOWN_FIELDS, read_manifest, write_manifest
from vgs.errors import InputError, VGSError
from vgs.features import AudioFeatureConfig, compute_features, features_from_file
from vgs.images import MAX_PIXELS, ImageConfig, load_image, load_image_tensor, to_tensor

AREAS = ("audio", "images", "manifests", "configs", "cli")
CASES: Counter = Counter()  # area -> examples tried
BY_PROPERTY: Counter = Counter()  # test name -> examples tried


def _count(area: str, name: str) -> None:
    CASES[area] += 1
    BY_PROPERTY[f"{area}:{name}"] += 1


SCALE = float(os.environ.get("VGS_FUZZ_SCALE", "1"))  # e.g. 10 for a deeper (slower) run


def fuzz(n: int):
    """Hypothesis settings for one property: ``n`` examples (times VGS_FUZZ_SCALE), no deadline (shared machine)."""
    return settings(max_examples=max(1, round(n * SCALE)), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module", autouse=True)
def _fuzz_report(request):
    yield
    summary = {area: CASES[area] for area in AREAS}
    path = os.environ.get("VGS_FUZZ_REPORT")
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"fuzz cases tried: {json.dumps(summary)} (total {sum(summary.values())})"]
    lines += [f"  {name}: {n}" for name, n in sorted(BY_PROPERTY.items())]
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\n" + "\n".join(lines))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A folder for files written inside hypothesis examples (function-scoped tmp_path would be shared anyway)."""
    return tmp_path_factory.mktemp("fuzz")


_names = itertools.count()


def _write(folder: Path, data: bytes, suffix: str) -> Path:
    path = folder / f"case{next(_names)}{suffix}"
    path.write_bytes(data)
    return path


def _one_line(message: str) -> None:
    assert message and "\n" not in message and "Traceback" not in message, message


# ============================================================================ audio

AUDIO_SUBTYPES = ("PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE")
COMMON_RATES = (8000, 11025, 16000, 22050, 32000, 44100, 48000, 96000)
MAGICS = (b"", b"RIFF", b"RIFX", b"RF64", b"fLaC", b"OggS", b"FORM", b".snd", b"caff", b"RIFF\x24\x00\x00\x00WAVEfmt ")


def _encode_audio(signal: np.ndarray, rate: int, subtype: str, fmt: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, signal, rate, subtype=subtype, format=fmt)
    return buffer.getvalue()


def _check_loaded(audio: np.ndarray) -> None:
    assert isinstance(audio, np.ndarray) and audio.ndim == 1 and audio.dtype == np.float32
    assert audio.shape[0] >= 400
    assert np.all(np.isfinite(audio)) and float(np.abs(audio).max(initial=0)) <= 1.0


def _load_or_input_error(source, folder: Path, as_file: bool, suffix: str = ".wav", **kwargs) -> np.ndarray | None:
    """Load bytes or a file; return the audio, or None after a clear InputError naming the source."""
    if as_file:
        source = _write(folder, source, suffix)
    label = str(source) if as_file else "<upload>"
    try:
        audio = load_audio(source, **kwargs)
    except InputError as exc:
        assert str(exc).startswith(label), (str(exc), label)
        _one_line(str(exc))
        return None
    _check_loaded(audio)
    return audio


@st.composite
def audio_formats(draw):
    """A valid recording in an odd format: WAV 8/16/24/32-bit int or float32/64, or FLAC; any rate; 1-8 channels."""
    fmt = draw(st.sampled_from(["WAV", "WAV", "WAV", "FLAC"]))
    subtype = draw(st.sampled_from(AUDIO_SUBTYPES if fmt == "WAV" else ("PCM_S8", "PCM_16", "PCM_24")))
    rate = draw(st.one_of(st.sampled_from(COMMON_RATES), st.integers(1000, 192000)))
    if fmt == "FLAC" and rate > 65535:
        rate -= rate % 10  # the FLAC (subset) header stores higher rates in units of 10 Hz
    channels = draw(st.integers(1, 8))
    seconds = draw(st.floats(0.01, 1.5))
    amplitude = draw(st.floats(0.05, 0.95))
    freq = draw(st.floats(100.0, min(1000.0, rate / 8)))  # >= 16 output samples per period: the peak is sampled
    n = int(seconds * rate)
    assume(n >= 1)
    t = np.arange(n) / rate
    mono = amplitude * np.sin(2 * np.pi * freq * t)
    signal = np.repeat(mono[:, None], channels, axis=1) if channels > 1 else mono
    return fmt, subtype, rate, channels, n, amplitude, _encode_audio(signal, rate, subtype, fmt)


@fuzz(45)
@given(case=audio_formats(), as_file=st.booleans())
def test_audio_valid_formats_load(case, as_file, scratch):
    """Stereo/multichannel, 8/24/32-bit, float32/64, FLAC, any rate 1-192 kHz: 16 kHz mono float32 in [-1, 1]."""
    _count("audio", "valid_formats_load")
    fmt, subtype, rate, channels, n, amplitude, data = case
    expected = n * 16000 / rate
    try:
        audio = load_audio(_write(scratch, data, "." + fmt.lower()) if as_file else data)
    except InputError as exc:
        assert expected < 402 and "too short" in str(exc), (fmt, subtype, rate, channels, n, str(exc))
        return
    assert expected > 398, (fmt, subtype, rate, n, audio.shape)
    _check_loaded(audio)
    assert abs(audio.shape[0] - expected) <= 2, (rate, n, audio.shape)
    quantum = 2.0 / 256 if subtype in ("PCM_U8", "PCM_S8") else 1e-3
    middle = audio[len(audio) // 8: len(audio) - len(audio) // 8]  # away from the resampler's edge transients
    assert abs(float(np.abs(middle).max()) - amplitude) <= 0.08 * amplitude + quantum, (amplitude, float(np.abs(middle).max()))


@pytest.fixture(scope="module")
def long_wav(scratch):
    """A 20-minute 8 kHz 8-bit mono WAV (9.6 MB): long, but cheap to write."""
    rate, minutes = 8000, 20
    signal = (0.25 * np.sin(2 * np.pi * 300 * np.arange(rate * 60 * minutes) / rate)).astype(np.float32)
    path = scratch / "long.wav"
    sf.write(path, signal, rate, subtype="PCM_U8")
    return path, minutes * 60.0


@fuzz(12)
@given(max_seconds=st.floats(0.03, 120.0))
def test_audio_very_long_file_reads_only_max_seconds(long_wav, max_seconds):
    """A very long recording with ``max_seconds`` reads just its start (bounded memory)."""
    _count("audio", "long_file_max_seconds")
    path, _ = long_wav
    audio = load_audio(path, max_seconds=max_seconds)
    _check_loaded(audio)
    assert abs(audio.shape[0] - int(max_seconds * 8000) * 2) <= 2


def test_audio_very_long_file_loads_whole(long_wav):
    _count("audio", "long_file_whole")
    path, seconds = long_wav
    audio = load_audio(path)
    _check_loaded(audio)
    assert abs(audio.shape[0] - seconds * 16000) <= 2


@fuzz(60)
@given(data=st.binary(max_size=3000), as_file=st.booleans())
def test_audio_random_bytes(data, as_file, scratch):
    """Random bytes (including zero length) are an InputError naming the file."""
    _count("audio", "random_bytes")
    assert _load_or_input_error(data, scratch, as_file) is None


@fuzz(60)
@given(magic=st.sampled_from(MAGICS), data=st.binary(max_size=3000), as_file=st.booleans())
def test_audio_random_bytes_after_magic(magic, data, as_file, scratch):
    """Random bytes behind a real format signature reach the parsers: an InputError or valid audio."""
    _count("audio", "random_bytes_after_magic")
    _load_or_input_error(magic + data, scratch, as_file)


def _wav(fmt_tag: int, channels: int, rate: int, byte_rate: int, block_align: int, bits: int, payload: bytes,
         declared: int | None = None, riff: bytes = b"RIFF", extra: bytes = b"") -> bytes:
    fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate, byte_rate, block_align, bits)
    declared = len(payload) if declared is None else declared
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + extra + b"data" + struct.pack("<I", declared) + payload
    return riff + struct.pack("<I", len(body) & 0xFFFFFFFF) + body


u16, u32 = st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF)


@fuzz(100)
@given(fmt_tag=st.one_of(st.sampled_from([1, 3, 6, 7, 0xFFFE, 0x11, 0x55]), u16),
       channels=st.one_of(st.integers(0, 9), u16), rate=st.one_of(st.sampled_from(COMMON_RATES), st.integers(0, 2000), u32),
       bits=st.one_of(st.sampled_from([0, 1, 4, 8, 12, 16, 20, 24, 32, 64]), u16),
       byte_rate=st.one_of(st.just(None), u32), block_align=st.one_of(st.just(None), u16),
       payload=st.binary(max_size=4000), declared=st.one_of(st.just(None), u32), as_file=st.booleans())
def test_audio_random_wav_headers(fmt_tag, channels, rate, bits, byte_rate, block_align, payload, declared, as_file, scratch):
    """WAV headers with random format tags, channel counts, rates, bit depths and sizes: InputError or valid audio."""
    _count("audio", "random_wav_headers")
    align = block_align if block_align is not None else (channels * bits // 8) & 0xFFFF
    brate = byte_rate if byte_rate is not None else (rate * align) & 0xFFFFFFFF
    data = _wav(fmt_tag, channels, rate, brate, align, bits, payload, declared)
    audio = _load_or_input_error(data, scratch, as_file)
    if audio is not None:
        assert 1000 <= rate <= 384000, "implausible rates must be refused"
        assert declared is None or declared in (0, 0xFFFFFFFF) or declared <= len(payload), "a cut-off data chunk must be refused"


@fuzz(50)
@given(case=audio_formats(), cut=st.floats(0.0, 1.0, exclude_max=True), as_file=st.booleans())
def test_audio_truncated(case, cut, as_file, scratch):
    """Files cut anywhere (inside the header or the data chunk) are refused; a cut FLAC is refused or shorter."""
    _count("audio", "truncated")
    fmt, subtype, rate, channels, n, amplitude, data = case
    end = int(cut * len(data))
    audio = _load_or_input_error(data[:end], scratch, as_file, suffix="." + fmt.lower())
    if fmt == "WAV":
        # soundfile writes WAV with the data chunk last; a pad byte after an odd-sized chunk may go unnoticed
        assert audio is None or end >= len(data) - 1, (subtype, len(data), end)
    elif audio is not None:
        assert audio.shape[0] <= n * 16000 / rate + 2


@fuzz(60)
@given(case=audio_formats(), edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.binary(min_size=1, max_size=8)),
                                            min_size=1, max_size=6), as_file=st.booleans())
def test_audio_spliced_bytes(case, edits, as_file, scratch):
    """Random bytes spliced over valid files (headers included): InputError or valid audio, never another error."""
    _count("audio", "spliced_bytes")
    data = bytearray(case[-1])
    for where, junk in edits:
        pos = int(where * min(len(data), 200 if where < 0.5 else len(data)))  # half the edits hit the header
        data[pos:pos + len(junk)] = junk
    _load_or_input_error(bytes(data), scratch, as_file, suffix="." + case[0].lower())


@fuzz(15)
@given(case=audio_formats(), garbage=st.binary(max_size=600), which=st.booleans())
def test_audio_features_from_file(case, garbage, which, scratch):
    """features_from_file: T x F finite features for a valid file, InputError for garbage."""
    _count("audio", "features_from_file")
    fmt, subtype, rate, channels, n, amplitude, data = case
    config = AudioFeatureConfig()
    if which:
        path = _write(scratch, garbage, ".wav")
        with pytest.raises(InputError) as info:
            features_from_file(path, config)
        assert str(info.value).startswith(str(path))
        return
    path = _write(scratch, data, "." + fmt.lower())
    try:
        features = features_from_file(path, config)
    except InputError as exc:
        assert n * 16000 / rate < 402 and "too short" in str(exc)
        return
    assert features.ndim == 2 and features.shape[1] == config.dim and np.all(np.isfinite(features))


# ============================================================================ images

MODES = {  # mode -> formats that store it
    "RGB": ("PNG", "JPEG", "BMP", "TIFF", "WEBP"), "RGBA": ("PNG", "TIFF", "WEBP"), "LA": ("PNG",),
    "L": ("PNG", "JPEG", "BMP", "TIFF"), "P": ("PNG", "GIF", "BMP", "TIFF"), "P+transparency": ("PNG", "GIF"),
    "CMYK": ("JPEG", "TIFF"), "1": ("PNG", "BMP", "TIFF"), "I;16": ("PNG", "TIFF"), "I": ("TIFF",),
}
LOSSY = ("JPEG",)


def _encode_image(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    if fmt == "WEBP":
        kwargs.setdefault("lossless", True)
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _two_tone(mode: str, width: int, height: int, left: int, right: int) -> tuple[Image.Image, int, dict]:
    """An image whose left half is gray ``left`` and right half gray ``right`` (or transparent: white) in ``mode``.

    Returns the image, the gray level expected on the right after loading, and save options.
    """
    half = width // 2
    kwargs: dict = {}
    expected_right = right
    if mode in ("RGB", "L", "CMYK"):
        image = Image.new("RGB", (width, height), (left,) * 3)
        image.paste((right,) * 3, (half, 0, width, height))
        image = image.convert(mode) if mode != "CMYK" else _rgb_to_cmyk(image)
    elif mode in ("RGBA", "LA"):
        image = Image.new("RGBA", (width, height), (left, left, left, 255))
        image.paste((right, right, right, 0), (half, 0, width, height))  # fully transparent: composited on white
        expected_right = 255
        if mode == "LA":
            image = image.convert("LA")
    elif mode.startswith("P"):
        image = Image.new("P", (width, height), 0)
        image.putpalette([left] * 3 + [right] * 3 + [0] * 762)
        image.paste(1, (half, 0, width, height))
        if mode == "P+transparency":
            kwargs["transparency"] = 1
            expected_right = 255
    elif mode == "1":
        image = Image.new("1", (width, height), 1 if left else 0)
        image.paste(1 if right else 0, (half, 0, width, height))
    else:  # 16-bit ("I;16") or 32-bit ("I") grayscale holding 16-bit levels
        array = np.full((height, width), left * 257, dtype=np.uint16 if mode == "I;16" else np.int32)
        array[:, half:] = right * 257
        image = Image.fromarray(array)
        assert image.mode == mode
    return image, expected_right, kwargs


def _rgb_to_cmyk(image: Image.Image) -> Image.Image:
    gray = np.asarray(image)[..., 0]
    cmyk = np.zeros(gray.shape + (4,), dtype=np.uint8)
    cmyk[..., 3] = 255 - gray
    return Image.fromarray(cmyk, "CMYK")


@st.composite
def odd_images(draw):
    mode = draw(st.sampled_from(sorted(MODES)))
    fmt = draw(st.sampled_from(MODES[mode]))
    width, height = draw(st.integers(16, 80)), draw(st.integers(8, 60))
    if fmt == "JPEG":  # halves on 16-pixel MCU boundaries, so the sampled blocks are flat
        width = 32 * draw(st.integers(1, 3))
    levels = st.sampled_from([0, 255]) if mode == "1" else st.integers(0, 255)
    left, right = draw(levels), draw(levels)
    image, expected_right, kwargs = _two_tone(mode, width, height, left, right)
    return mode, fmt, width, height, left, expected_right, _encode_image(image, fmt, **kwargs)


@fuzz(60)
@given(case=odd_images(), as_file=st.booleans())
def test_image_modes_load_as_rgb(case, as_file, scratch):
    """CMYK, palette (with transparency), RGBA, LA, L, 1-bit, 16-bit and 32-bit images load as the right RGB picture."""
    _count("images", "modes_load_as_rgb")
    mode, fmt, width, height, left, right, data = case
    source = _write(scratch, data, "." + fmt.lower()) if as_file else data
    image = load_image(source)
    assert image.mode == "RGB" and image.size == (width, height)
    array = np.asarray(image).astype(int)
    tolerance = 12 if fmt in LOSSY else 1
    row = height // 2
    for column, level in ((width // 4, left), (width - 1 - width // 4, right)):
        assert np.abs(array[row, column] - level).max() <= tolerance, (mode, fmt, column, array[row, column].tolist(), level)
    tensor = load_image_tensor(source, ImageConfig(size=32))
    assert tuple(tensor.shape) == (3, 32, 32) and bool(tensor.isfinite().all())


def _check_image_or_error(source, label: str, budget_s: float = 3.0) -> Image.Image | None:
    start = time.process_time()  # CPU time, not wall time: a busy neighbour must not fail the test
    try:
        image = load_image(source)
    except InputError as exc:
        assert str(exc).startswith(label), (str(exc), label)
        _one_line(str(exc))
        image = None
    else:
        assert image.mode == "RGB" and min(image.size) >= 8 and image.width * image.height <= MAX_PIXELS
    assert time.process_time() - start < budget_s, "loading must fail (or succeed) quickly"
    return image


@fuzz(60)
@given(data=st.binary(max_size=3000), as_file=st.booleans())
def test_image_random_bytes(data, as_file, scratch):
    _count("images", "random_bytes")
    source = _write(scratch, data, ".jpg") if as_file else data
    assert _check_image_or_error(source, str(source) if as_file else "<upload>") is None


@fuzz(50)
@given(case=odd_images(), cut=st.floats(0, 1, exclude_max=True), as_file=st.booleans())
def test_image_truncated(case, cut, as_file, scratch):
    """Images cut anywhere before their last few bytes are refused (PNG/GIF may drop only checksums/trailers)."""
    _count("images", "truncated")
    mode, fmt, width, height, left, right, data = case
    end = int(cut * len(data))
    source = _write(scratch, data[:end], "." + fmt.lower()) if as_file else data[:end]
    image = _check_image_or_error(source, str(source) if as_file else "<upload>")
    if image is not None:
        # PNG decodes without the zlib checksum, IDAT CRC and IEND; GIF without its trailer
        assert end >= len(data) - 24 and image.size == (width, height), (mode, fmt, len(data), end)


@fuzz(50)
@given(case=odd_images(), edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.binary(min_size=1, max_size=8)),
                                         min_size=1, max_size=6), as_file=st.booleans())
def test_image_spliced_bytes(case, edits, as_file, scratch):
    """Random bytes spliced over valid images (headers included): InputError or an RGB image, quickly."""
    _count("images", "spliced_bytes")
    fmt, data = case[1], bytearray(case[-1])
    for where, junk in edits:
        pos = int(where * min(len(data), 120 if where < 0.5 else len(data)))
        data[pos:pos + len(junk)] = junk
    source = _write(scratch, bytes(data), "." + fmt.lower()) if as_file else bytes(data)
    _check_image_or_error(source, str(source) if as_file else "<upload>")


def _png(width: int, height: int, depth: int = 8, color: int = 2, idat: bytes = b"") -> bytes:
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _gif(width: int, height: int) -> bytes:
    return (b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00" * 6
            + b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00;")


def _bmp(width: int, height: int, bits: int, payload: bytes) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, 0, len(payload), 2835, 2835, 0, 0)
    palette = b"\x00\x00\x00\x00\xff\xff\xff\x00" * (128 if bits <= 8 else 0)
    offset = 14 + len(info) + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(payload), 0, 0, offset) + info + palette + payload


def _jpeg(width: int, height: int) -> bytes:
    data = bytearray(_encode_image(Image.new("RGB", (16, 16), (90, 120, 150)), "JPEG"))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


BUILDERS = {"png": lambda w, h: _png(w, h), "gif": _gif, "jpeg": _jpeg, "bmp": lambda w, h: _bmp(w, h, 24, b"\x00" * 64)}
LIMITS = {"png": 2**31 - 1, "gif": 0xFFFF, "jpeg": 0xFFFF, "bmp": 2**31 - 1}


@fuzz(60)
@given(kind=st.sampled_from(sorted(BUILDERS)), data=st.data(), as_file=st.booleans())
def test_image_decompression_bombs(kind, data, as_file, scratch):
    """Headers declaring more than MAX_PIXELS (e.g. 100000 x 100000) are refused at once, without decoding."""
    top = LIMITS[kind]
    width = data.draw(st.integers(max(1, MAX_PIXELS // top + 1), top), label="width")
    height = data.draw(st.integers(MAX_PIXELS // width + 1, top), label="height")
    assume(width * height > MAX_PIXELS)
    _count("images", "decompression_bombs")
    blob = BUILDERS[kind](width, height)
    source = _write(scratch, blob, "." + kind) if as_file else blob
    decoded = []
    start = time.process_time()
    with mock.patch.object(ImageFile.ImageFile, "load", autospec=True, side_effect=decoded.append), \
            pytest.raises(InputError) as info:
        load_image(source)
    assert decoded == [], "refused from the header, before any pixel is decoded"
    assert time.process_time() - start < 2.0, "CPU time: a neighbour's load does not count"
    assert str(info.value).startswith(str(source) if as_file else "<upload>")
    assert "too large" in str(info.value) or "truncated" in str(info.value) or "unreadable" in str(info.value)


def test_image_decompression_bomb_100000_squared():
    _count("images", "decompression_bombs")
    with pytest.raises(InputError, match="too large"):
        load_image(_png(100_000, 100_000))


@fuzz(40)
@given(width=st.integers(1, 7), height=st.integers(1, 40), swap=st.booleans(), fmt=st.sampled_from(["PNG", "JPEG", "GIF", "BMP"]))
def test_image_tiny_images_refused(width, height, swap, fmt):
    """1x1 (and any side under 8 pixels) is an InputError, not a blank tensor."""
    _count("images", "tiny_images")
    size = (height, width) if swap else (width, height)
    data = _encode_image(Image.new("RGB", size, (10, 200, 30)), fmt)
    with pytest.raises(InputError, match="expected at least 8x8"):
        load_image(data)


@fuzz(60)
@given(width=st.integers(-(2**31), 2**31 - 1), height=st.integers(-(2**31), 2**31 - 1),
       bits=st.sampled_from([0, 1, 4, 8, 16, 24, 32, 7]), payload=st.binary(max_size=2000), as_file=st.booleans())
def test_image_random_bmp_headers(width, height, bits, payload, as_file, scratch):
    """BMP headers with any (negative, zero, huge) sizes and bit depths: InputError or an RGB image, quickly."""
    _count("images", "random_bmp_headers")
    blob = _bmp(width, height, bits, payload)
    source = _write(scratch, blob, ".bmp") if as_file else blob
    _check_image_or_error(source, str(source) if as_file else "<upload>")


# ============================================================================ manifests

SEGMENT = st.text(st.characters(blacklist_characters="/\\\x00", blacklist_categories=("Cs",)), min_size=1, max_size=12) \
    .filter(lambda s: s not in (".", ".."))
REL_PATH = st.lists(SEGMENT, min_size=1, max_size=3).map("/".join)
ANY_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)  # includes U+2028, U+0085, ...
FINITE = st.floats(allow_nan=False, allow_infinity=False, width=32)


@st.composite
def words(draw):
    out = []
    for _ in range(draw(st.integers(0, 4))):
        start = draw(st.floats(0, 30, width=32))
        out.append({"word": draw(ANY_TEXT), "start": start, "end": start + draw(st.floats(0, 3, width=32))})
    return out


@st.composite
def rows(draw, ident: str):
    row = {"id": ident, "image": draw(REL_PATH), "image_id": draw(ANY_TEXT.filter(bool)), "audio": draw(REL_PATH),
           "speaker": draw(ANY_TEXT.filter(bool))}
    if draw(st.booleans()):
        row["text"] = draw(st.one_of(st.none(), ANY_TEXT))
    if draw(st.booleans()):
        row["words"] = draw(st.one_of(st.none(), words()))
    if draw(st.booleans()):
        row["objects"] = draw(st.lists(st.fixed_dictionaries({"name": ANY_TEXT, "box": st.lists(FINITE, min_size=4, max_size=4)}),
                                       max_size=3))
    if draw(st.booleans()):
        row["duration"] = draw(st.floats(0, 60))
    return row


@st.composite
def manifests(draw, min_rows=1, max_rows=6):
    ids = draw(st.lists(ANY_TEXT.filter(bool), min_size=min_rows, max_size=max_rows, unique=True))
    return [draw(rows(i)) for i in ids]


def _manifest_bytes(lines: list[bytes], crlf: bool = False) -> bytes:
    return b"".join(line + (b"\r\n" if crlf else b"\n") for line in lines)


def _dump(row) -> bytes:
    return json.dumps(row, ensure_ascii=False).encode("utf-8")


@fuzz(50)
@given(table=manifests(), crlf=st.booleans(), blanks=st.booleans())
def test_manifest_round_trip(table, crlf, blanks, scratch):
    """Valid rows (any Unicode in ids and text: U+2028, U+0085, ...) survive write_manifest -> read_manifest."""
    _count("manifests", "round_trip")
    path = scratch / f"m{next(_names)}.jsonl"
    write_manifest(path, table)
    assert read_manifest(path).rows == table
    lines = [_dump(r) for r in table]
    if blanks:
        lines = list(itertools.chain.from_iterable((line, b"  ") for line in lines))
    path.write_bytes(_manifest_bytes(lines, crlf))
    manifest = read_manifest(path)
    assert manifest.rows == table and manifest.problems == []


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | ANY_TEXT,
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4), max_leaves=12)


@fuzz(50)
@given(values=st.lists(st.one_of(JSON, st.dictionaries(st.sampled_from(sorted(KNOWN_FIELDS)), JSON, max_size=8)),
                       min_size=1, max_size=6), valid=manifests(max_rows=3))
def test_manifest_random_json_lines(values, valid, scratch):
    """Random JSON values as lines: strict raises InputError at the first bad line; lenient keeps the good ones."""
    _count("manifests", "random_json_lines")
    lines = [_dump(r) for r in valid] + [json.dumps(v).encode() for v in values]
    path = _write(scratch, _manifest_bytes(lines), ".jsonl")
    lenient = read_manifest(path, strict=False)
    assert lenient.rows[: len(valid)] == valid
    assert len(lenient.rows) + len(lenient.problems) == len(lines)
    for problem in lenient.problems:
        assert problem.startswith(f"{path}:"), problem
        _one_line(problem)
    if lenient.problems:
        with pytest.raises(InputError) as info:
            read_manifest(path, strict=True)
        assert str(info.value) == lenient.problems[0]
    else:
        assert read_manifest(path, strict=True).rows == lenient.rows


NOT_STRING = st.one_of(st.none(), st.booleans(), st.integers(), FINITE, st.lists(st.integers(), max_size=2),
                       st.dictionaries(ANY_TEXT, st.integers(), max_size=2), st.just(""))
BAD_WORD_LIST = [{"word": 1, "start": 0, "end": 1}, {"word": "a", "start": -1, "end": 0}, {"word": "a", "start": 2, "end": 1},
                 {"start": 0, "end": 1}, {"word": "a", "start": True, "end": 1}, {"word": "a", "start": "0", "end": 1},
                 {"word": "a", "start": 0}, {"word": "a", "start": 0, "end": float("inf")},
                 {"word": "a", "start": float("nan"), "end": 1}, "a", 3, None, [0, 1]]
BAD_OBJECT_LIST = [{"name": "a", "box": [0, 0, 1]}, {"name": "a", "box": [0, 0, 1, "2"]}, {"box": [0, 0, 1, 1]},
                   {"name": 3, "box": [0, 0, 1, 1]}, {"name": "a", "box": "0 0 1 1"}, {"name": "a"},
                   {"name": "a", "box": [True, False, 1, 1]}, {"name": "a", "box": [0, 0, float("nan"), 1]},
                   {"name": "a", "box": [0, 0, 1, float("inf")]}, {"name": "a", "box": [0, 0, 1, 1, 1]}, "a", 3, None]
_NOT_DICT = st.one_of(st.none(), st.booleans(), st.integers(), ANY_TEXT, st.lists(st.integers(), max_size=2))
BAD_WORDS = st.one_of(st.sampled_from(BAD_WORD_LIST), _NOT_DICT)
BAD_OBJECTS = st.one_of(st.sampled_from(BAD_OBJECT_LIST), _NOT_DICT)


@pytest.mark.parametrize("field,entry", [("words", e) for e in BAD_WORD_LIST] + [("objects", e) for e in BAD_OBJECT_LIST])
def test_manifest_each_bad_entry_is_refused(field, entry, scratch):
    """Every listed bad words/objects entry (bools, NaN, infinity, wrong lengths, missing keys) is refused."""
    _count("manifests", "each_bad_entry")
    row = {"id": "a", "image": "i.jpg", "image_id": "i", "audio": "a.wav", "speaker": "s", field: [entry]}
    path = _write(scratch, _dump(row) + b"\n", ".jsonl")
    with pytest.raises(InputError, match=re.escape(f"{field}[0]")) as info:
        read_manifest(path)
    assert str(info.value).startswith(f"{path}:1:") and info.value.field == field


@st.composite
def broken_rows(draw, row: dict):
    """One mutation of a valid row -> (line bytes, field the error must name or None, words the message must hold)."""
    row = dict(row)
    kind = draw(st.sampled_from(["missing", "wrong_type", "optional_type", "unknown", "words", "objects", "path",
                                 "json", "utf8", "not_object"]))
    if kind == "missing":
        key = draw(st.sampled_from(["id", "image", "image_id", "audio", "speaker"]))
        del row[key]
        return _dump(row), key, "missing"
    if kind == "wrong_type":
        key = draw(st.sampled_from(["id", "image", "image_id", "audio", "speaker"]))
        row[key] = draw(NOT_STRING)
        return _dump(row), key, "expected"
    if kind == "optional_type":
        key = draw(st.sampled_from(["text", "words", "objects"]))
        allowed = str if key == "text" else list
        row[key] = draw(st.one_of(st.booleans(), st.integers(), FINITE, st.dictionaries(ANY_TEXT, st.integers(), max_size=2),
                                  ANY_TEXT, st.lists(st.integers(), max_size=2)).filter(lambda v: not isinstance(v, allowed)))
        return _dump(row), key, "expected"
    if kind == "unknown":
        key = draw(ANY_TEXT.filter(lambda k: k not in KNOWN_FIELDS))
        row[key] = draw(JSON)
        return _dump(row), None, "unknown field"
    if kind in ("words", "objects"):
        good = draw(words()) if kind == "words" else []
        bad = draw(BAD_WORDS if kind == "words" else BAD_OBJECTS)
        row[kind] = good[:1] + [bad] + good[1:]
        return _dump(row), kind, f"{kind}["
    if kind == "path":
        key = draw(st.sampled_from(["image", "audio"]))
        row[key] = draw(st.sampled_from(["/" + row[key], row[key] + "/../../x", "../" + row[key], "a/../" + row[key]]))
        return _dump(row), key, "relative"
    if kind == "json":
        text = json.dumps(row, ensure_ascii=False)
        return text[: draw(st.integers(1, len(text) - 1))].encode("utf-8"), None, "JSON"
    if kind == "utf8":
        text = _dump(row)
        pos = draw(st.integers(0, len(text)))
        return text[:pos] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80"])) + text[pos:], None, "UTF-8"
    return json.dumps(draw(st.one_of(st.lists(JSON, max_size=3), st.integers(), ANY_TEXT, st.none()))).encode(), None, "JSON object"


@fuzz(100)
@given(table=manifests(min_rows=1, max_rows=4), data=st.data())
def test_manifest_bad_line_is_named(table, data, scratch):
    """A malformed line, wrong type, missing or unknown field, bad words/objects entry, absolute or '..' path,
    non-UTF-8 bytes: strict raises InputError naming file, line and field; lenient skips that line only."""
    base = data.draw(rows("fuzz-bad-row-id"), label="row")
    base["id"] = "fuzz-bad-row-id"  # not among the valid ids, so the only problem is the mutation
    assume(all(r["id"] != base["id"] for r in table))
    _count("manifests", "bad_line_is_named")
    line, field, hint = data.draw(broken_rows(base), label="mutation")
    position = data.draw(st.integers(0, len(table)), label="position")
    lines = [_dump(r) for r in table]
    lines.insert(position, line)
    path = _write(scratch, _manifest_bytes(lines), ".jsonl")
    with pytest.raises(InputError) as info:
        read_manifest(path, strict=True)
    message = str(info.value)
    _one_line(message)
    assert message.startswith(f"{path}:{position + 1}:"), message
    if field is not None:
        assert info.value.field == field and f"field {field!r}" in message, message
    assert hint in message, (hint, message)
    lenient = read_manifest(path, strict=False)
    assert lenient.rows == table and len(lenient.problems) == 1 and lenient.problems[0] == message


@fuzz(30)
@given(table=manifests(min_rows=1, max_rows=4), data=st.data())
def test_manifest_duplicate_ids(table, data, scratch):
    """A repeated id is refused at its second line (strict) or skipped (lenient)."""
    _count("manifests", "duplicate_ids")
    index = data.draw(st.integers(0, len(table) - 1))
    copy = dict(data.draw(rows(table[index]["id"])))
    position = data.draw(st.integers(index + 1, len(table)))
    lines = [_dump(r) for r in table]
    lines.insert(position, _dump(copy))
    path = _write(scratch, _manifest_bytes(lines), ".jsonl")
    with pytest.raises(InputError, match="duplicate id") as info:
        read_manifest(path)
    assert str(info.value).startswith(f"{path}:{position + 1}:") and info.value.field == "id"
    assert read_manifest(path, strict=False).rows == table


@fuzz(40)
@given(lines=st.lists(st.binary(max_size=200).filter(lambda b: b"\n" not in b and b"\r" not in b), min_size=1, max_size=6),
       table=manifests(max_rows=2))
def test_manifest_random_bytes(lines, table, scratch):
    """Random byte lines (mostly not UTF-8, not JSON) never raise anything but InputError naming a line."""
    _count("manifests", "random_bytes")
    path = _write(scratch, _manifest_bytes([_dump(r) for r in table] + lines), ".jsonl")
    lenient = read_manifest(path, strict=False)
    assert lenient.rows[: len(table)] == table
    try:
        read_manifest(path, strict=True)
    except InputError as exc:
        assert re.match(rf"{re.escape(str(path))}:\d+: ", str(exc)), str(exc)
        _one_line(str(exc))


def test_manifest_pathological_json(scratch):
    """Nesting thousands deep and 5000-digit numbers are InputErrors, not RecursionError/ValueError."""
    _count("manifests", "pathological_json")
    for text in ("[" * 100_000 + "]" * 100_000, '{"id": ' + "9" * 5000 + "}", "{" * 50_000):
        path = _write(scratch, text.encode() + b"\n", ".jsonl")
        with pytest.raises(InputError, match=":1:"):
            read_manifest(path)
        assert read_manifest(path, strict=False).problems


# ============================================================================ configs

DEFAULTS = to_dict(Config())
LEAVES = [(section, key) for section, fields in DEFAULTS.items() if isinstance(fields, dict) for key in fields]
SECTIONS = [name for name, value in DEFAULTS.items() if isinstance(value, dict)]
WORDS = st.text(string.ascii_letters + "_", min_size=1, max_size=10)


def _not_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return True
    return False


def _wrong_value(default):
    """Values of the wrong type for a field whose default is ``default``."""
    containers = st.one_of(st.lists(st.integers(), max_size=3), st.dictionaries(WORDS, st.integers(), min_size=1, max_size=2))
    if isinstance(default, bool):
        return st.one_of(st.integers(), FINITE, WORDS, containers)
    if isinstance(default, int):
        return st.one_of(st.booleans(), FINITE.filter(lambda v: not float(v).is_integer()), WORDS.filter(_not_number), containers)
    if isinstance(default, float):
        return st.one_of(st.booleans(), WORDS.filter(_not_number), containers)
    if isinstance(default, list):  # tuple[float, float, float]
        return st.one_of(st.booleans(), st.integers(), WORDS, st.lists(FINITE, max_size=5).filter(lambda v: len(v) != len(default)),
                         st.lists(WORDS.filter(_not_number), min_size=len(default), max_size=len(default)))
    return st.one_of(st.booleans(), containers)  # str (and str | None)


@fuzz(60)
@given(text=st.one_of(st.text(max_size=300), st.binary(max_size=300).map(lambda b: b.decode("latin-1"))), raw=st.booleans())
def test_config_random_text(text, raw, scratch):
    """Random text as config.yaml: a Config or a VGSError naming the file."""
    _count("configs", "random_text")
    path = _write(scratch, text.encode("latin-1", "replace") if raw else text.encode("utf-8", "surrogatepass"), ".yaml")
    try:
        config = load_config(path)
    except VGSError as exc:
        assert str(exc).startswith(str(path)), str(exc)
    else:
        assert isinstance(config, Config)


YAML_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
YAML_VALUES = st.recursive(YAML_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                           max_leaves=10)
KEYS = st.one_of(st.sampled_from(sorted({k for _, k in LEAVES} | set(SECTIONS) | {"data"})), st.text(max_size=8))


@fuzz(60)
@given(tree=st.dictionaries(st.one_of(st.sampled_from(SECTIONS + ["data"]), st.text(max_size=8)),
                            st.one_of(st.dictionaries(KEYS, YAML_VALUES, max_size=5), YAML_VALUES), max_size=4))
def test_config_random_nested_dicts(tree, scratch):
    """Random nested mappings: a valid Config or a VGSError naming the file; nothing else escapes."""
    _count("configs", "random_nested_dicts")
    path = _write(scratch, yaml.safe_dump(tree, allow_unicode=True).encode("utf-8", "surrogatepass"), ".yaml")
    try:
        load_config(path)
    except VGSError as exc:
        assert str(exc).startswith(str(path)), str(exc)


@fuzz(80)
@given(data=st.data())
def test_config_wrong_type_names_key(data, scratch):
    """One field of a valid config given a wrong type (or an unknown field, or dropped fields): the error names the key."""
    _count("configs", "wrong_type_names_key")
    tree = json.loads(json.dumps(DEFAULTS))
    section, key = data.draw(st.sampled_from(LEAVES), label="field")
    kind = data.draw(st.sampled_from(["wrong", "unknown", "unknown_section", "drop"]), label="kind")
    if kind == "drop":
        for s, k in data.draw(st.lists(st.sampled_from(LEAVES), max_size=8), label="dropped"):
            tree[s].pop(k, None)
        config = load_config(_write(scratch, yaml.safe_dump(tree).encode(), ".yaml"))
        assert to_dict(config) == DEFAULTS  # missing fields take their defaults
        return
    if kind == "wrong":
        tree[section][key] = data.draw(_wrong_value(DEFAULTS[section][key]), label="value")
        name = f"{section}.{key}"
    elif kind == "unknown":
        name = data.draw(WORDS.filter(lambda w: w not in DEFAULTS[section]), label="unknown")
        tree[section][name] = data.draw(YAML_SCALARS, label="value")
    else:
        name = data.draw(WORDS.filter(lambda w: w not in DEFAULTS), label="unknown")
        tree[name] = {key: 1}
    path = _write(scratch, yaml.safe_dump(tree).encode(), ".yaml")
    with pytest.raises(VGSError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(str(path)) and name in message, (name, message)
    _one_line(message)


@fuzz(80)
@given(key=st.one_of(st.sampled_from([f"{s}.{k}" for s, k in LEAVES] + ["data"]), st.text(max_size=20)),
       raw=st.one_of(st.text(max_size=40), YAML_VALUES))
def test_config_set_value_random(key, raw):
    """--set with any key and any value: type-checked assignment or a VGSError naming the key."""
    _count("configs", "set_value_random")
    config = Config()
    try:
        set_value(config, key, raw)
    except VGSError as exc:
        assert key in str(exc), (key, str(exc))


@fuzz(60)
@given(data=st.data())
def test_config_set_value_wrong_type_names_key(data):
    section, key = data.draw(st.sampled_from(LEAVES), label="field")
    value = data.draw(_wrong_value(DEFAULTS[section][key]), label="value")
    raw = data.draw(st.sampled_from([value, yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()]),
                    label="raw")
    assume(not (isinstance(DEFAULTS[section][key], str) and isinstance(raw, str)))  # any text is a valid string
    if isinstance(DEFAULTS[section][key], bool) and isinstance(raw, str):
        assume(not isinstance(yaml.safe_load(raw), bool))  # 'yes', 'on', 'true' are YAML booleans
    _count("configs", "set_value_wrong_type")
    with pytest.raises(VGSError, match=re.escape(f"{section}.{key}")):
        set_value(Config(), f"{section}.{key}", raw)


def test_config_yaml_bombs(scratch):
    """Nesting thousands deep and a billion-laughs alias bomb fail fast with a VGSError (no RecursionError, no hang)."""
    _count("configs", "yaml_bombs")
    levels = ["[" + ",".join(["x"] * 9) + "]"] + ["[" + ",".join([f"*a{i}"] * 9) + "]" for i in range(8)]
    bomb = "data: [" + ", ".join(f"&a{i} {level}" for i, level in enumerate(levels)) + "]\n"
    for text in ("[" * 5000, "model: " + "{a: " * 3000, bomb, "image:\n  mean: [" + bomb.split("[", 1)[1].rstrip() + "\n"):
        path = _write(scratch, text.encode(), ".yaml")
        start = time.process_time()
        with pytest.raises(VGSError):
            load_config(path)
        assert time.process_time() - start < 5
    config = Config()
    set_value(config, "data", "[" * 5000)  # not YAML: taken as the literal string
    assert config.data == "[" * 5000


@fuzz(40)
@given(size=st.one_of(st.integers(-5, 300), st.integers()), mean=st.lists(st.floats(), min_size=1, max_size=4),
       std=st.lists(st.floats(), min_size=1, max_size=4))
def test_config_accepted_image_settings_work(size, mean, std, scratch):
    """An image section that load_config accepts gives a working, finite image transform."""
    _count("configs", "accepted_image_settings_work")
    path = _write(scratch, yaml.safe_dump({"image": {"size": size, "mean": mean, "std": std}}).encode(), ".yaml")
    try:
        config = load_config(path)
    except VGSError as exc:
        assert "image." in str(exc), str(exc)
        return
    assume(config.image.size <= 512)  # big sizes are valid, just slow here
    tensor = to_tensor(Image.new("RGB", (20, 12), (50, 100, 150)), config.image)
    assert tuple(tensor.shape) == (3, config.image.size, config.image.size) and bool(tensor.isfinite().all())


@pytest.mark.parametrize("field,value", [("n_mels", 0), ("hop_ms", 0.0), ("window_ms", 0.0), ("sample_rate", 0)])
def test_config_accepted_feature_settings_work(field, value, scratch):
    _count("configs", "accepted_feature_settings_work")
    path = _write(scratch, yaml.safe_dump({"features": {field: value}}).encode(), ".yaml")
    try:
        config = load_config(path)
    except VGSError:
        return
    compute_features(np.zeros(8000, dtype=np.float32), config.features)


# ============================================================================ CLI


def _run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        status = cli.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse usage errors: status 2 and a usage message, no traceback
        status = exc.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return status, out, err


def _assert_one_line_error(status: int, err: str, command: str) -> None:
    assert status == 1, (status, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"vgs {command}: error: "), err


@pytest.fixture
def no_debug(monkeypatch):
    monkeypatch.delenv("VGS_DEBUG", raising=False)


def test_cli_fixed_bad_inputs(capsys, scratch, no_debug):
    bad_yaml = _write(scratch, b"model: [1\n  train: {", ".yaml")
    wrong_type = _write(scratch, b"train:\n  epochs: many\n", ".yaml")
    unknown = _write(scratch, b"trian:\n  epochs: 3\n", ".yaml")
    cases = [
        (["train", "--data", "/nonexistent", "--out", scratch / "run0"], "train", "/nonexistent"),
        (["evaluate", "/nonexistent"], "evaluate", "/nonexistent"),
        (["train", "--config", bad_yaml, "--out", scratch / "run1"], "train", str(bad_yaml)),
        (["train", "--config", wrong_type, "--out", scratch / "run2"], "train", "train.epochs"),
        (["train", "--config", unknown, "--out", scratch / "run3"], "train", "trian"),
        (["train", "--config", scratch / "missing.yaml", "--out", scratch / "run4"], "train", "missing.yaml"),
        (["train", "--data", "/nonexistent", "--out", scratch / "run5", "--set", "train.lr=abc"], "train", "train.lr"),
        (["train", "--data", "/nonexistent", "--out", scratch / "run6", "--set", "nosuch.field=1"], "train", "nosuch"),
        (["train", "--data", "/nonexistent", "--out", scratch / "run7", "--set", "novalue"], "train", "novalue"),
        (["train", "--data", "/nonexistent", "--out", scratch / "run8", "--preset", "nosuch"], "train", "--preset"),
        (["train", "--out", scratch / "run9"], "train", "--data"),
        (["prepare", "flickr8k", "--images", "/nonexistent", "--captions", "/nonexistent.txt", "--out", scratch / "ds0",
          "--no-features"], "prepare", "/nonexistent"),
    ]
    for argv, command, named in cases:
        _count("cli", "fixed_bad_inputs")
        status, out, err = _run_cli(capsys, argv)
        _assert_one_line_error(status, err, command)
        assert named in err, (argv, err)
    _count("cli", "fixed_bad_inputs")
    status, _, err = _run_cli(capsys, ["train", "--out", scratch / "run10", "--epochs", "many"])
    assert status == 2 and err.strip().splitlines()[-1].startswith("vgs train: error: argument --epochs")


@fuzz(25)
@given(text=st.one_of(st.text(max_size=200), YAML_VALUES.map(lambda v: yaml.safe_dump(v, allow_unicode=True))))
def test_cli_train_with_random_config(text, capsys, scratch, no_debug):
    """vgs train --config RANDOM.yaml: status 1 and one error line (a valid config still lacks a usable --data)."""
    _count("cli", "train_random_config")
    path = _write(scratch, text.encode("utf-8", "surrogatepass"), ".yaml")
    status, _, err = _run_cli(capsys, ["train", "--config", path, "--out", scratch / "run-random", "--epochs", "1"])
    _assert_one_line_error(status, err, "train")


@fuzz(25)
@given(key=st.one_of(st.sampled_from([f"{s}.{k}" for s, k in LEAVES]), st.text(string.ascii_letters + "._", max_size=15)),
       value=st.text(string.printable.strip(), max_size=20))
def test_cli_train_with_random_set(key, value, capsys, scratch, no_debug):
    _count("cli", "train_random_set")
    status, _, err = _run_cli(capsys, ["train", "--data", "/nonexistent", "--out", scratch / "run-set", f"--set={key}={value}"])
    _assert_one_line_error(status, err, "train")


@fuzz(20)
@given(lines=st.lists(st.one_of(st.binary(max_size=80), st.text(max_size=60).map(lambda t: t.encode("utf-8", "surrogatepass")),
                                st.tuples(st.text(string.ascii_letters, min_size=1, max_size=8), st.integers(0, 9), st.text(max_size=30))
                                .map(lambda t: f"{t[0]}.jpg#{t[1]}\t{t[2]}".encode("utf-8", "surrogatepass"))),
                      min_size=1, max_size=8))
def test_cli_prepare_flickr8k_garbage_captions(lines, capsys, scratch, no_debug):
    """vgs prepare flickr8k with a garbage caption file: finishes with a report (status 3) or one clear error line."""
    _count("cli", "prepare_garbage_captions")
    images = scratch / "no-images"
    images.mkdir(exist_ok=True)  # no photos: no caption can be spoken, so no TTS runs
    captions = _write(scratch, b"\n".join(lines), ".txt")
    out = scratch / f"ds{next(_names)}"
    status, stdout, err = _run_cli(capsys, ["prepare", "flickr8k", "--images", images, "--captions", captions, "--out", out,
                                            "--engines", "espeak", "--workers", "1", "--no-features"])
    if status == 3:
        report = json.loads((out / "build_report.json").read_text())
        assert report["skipped"] and "skipped" in stdout
    else:
        _assert_one_line_error(status, err, "prepare")


@fuzz(20)
@given(words_file=st.one_of(st.binary(max_size=200), JSON.map(lambda v: json.dumps(v).encode())))
def test_cli_localize_garbage_words(words_file, capsys, scratch, no_debug):
    """vgs localize --words GARBAGE: one clear error line (the words are checked before the model loads)."""
    _count("cli", "localize_garbage_words")
    path = _write(scratch, words_file, ".json")
    status, _, err = _run_cli(capsys, ["localize", "/nonexistent", "--words", path, "--image", "/nonexistent.jpg",
                                       "--audio", "/nonexistent.wav", "--out", scratch / "loc"])
    _assert_one_line_error(status, err, "localize")


@fuzz(15)
@given(run=st.text(string.ascii_letters + "/._-", min_size=1, max_size=20), split=st.text(string.ascii_letters, min_size=1, max_size=6))
def test_cli_evaluate_random_paths(run, split, capsys, scratch, no_debug):
    _count("cli", "evaluate_random_paths")
    status, _, err = _run_cli(capsys, ["evaluate", scratch / "nothing" / run, "--split", split])
    _assert_one_line_error(status, err, "evaluate")


@fuzz(15)
@given(data=st.data())
def test_cli_train_with_garbage_manifests(data, capsys, scratch, no_debug):
    """vgs train on a data set whose manifests hold only bad lines: a skip report, then one clear error line."""
    _count("cli", "train_garbage_manifests")
    folder = scratch / f"garbage-data{next(_names)}"
    folder.mkdir()
    for split in ("train", "dev"):
        lines = []
        for i in range(data.draw(st.integers(1, 4), label=f"{split} lines")):
            if data.draw(st.booleans(), label="bytes"):
                lines.append(data.draw(st.binary(max_size=60).filter(lambda b: b"\n" not in b and b"\r" not in b), label="raw"))
            else:
                lines.append(data.draw(broken_rows(data.draw(rows(f"{split}{i}"), label="row")), label="mutation")[0])
        (folder / f"{split}.jsonl").write_bytes(_manifest_bytes(lines))
    status, _, err = _run_cli(capsys, ["train", "--data", folder, "--out", scratch / "run-garbage", "--epochs", "1"])
    assert status == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("vgs train: error: "), err


@fuzz(15)
@given(blob=st.one_of(st.binary(max_size=2000), st.binary(max_size=400).map(lambda b: b"PK\x03\x04" + b)))
def test_cli_evaluate_garbage_checkpoint(blob, capsys, scratch, no_debug):
    """vgs evaluate on a run whose checkpoint is random bytes (or a broken zip): one clear error line."""
    _count("cli", "evaluate_garbage_checkpoint")
    run = scratch / f"run-ckpt{next(_names)}"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.pt").write_bytes(blob)
    (run / "config.yaml").write_text(yaml.safe_dump(to_dict(Config(data=str(scratch / "no-data")))))
    status, _, err = _run_cli(capsys, ["evaluate", run])
    _assert_one_line_error(status, err, "evaluate")


@pytest.mark.parametrize("outer", [None, {"format": "vgs-checkpoint/1"}, {"format": "vgs-checkpoint/1", "payload": 5}])
def test_cli_evaluate_crafted_checkpoint(outer, capsys, scratch, no_debug):
    import torch

    _count("cli", "evaluate_crafted_checkpoint")
    run = scratch / f"run-crafted{next(_names)}"
    (run / "checkpoints").mkdir(parents=True)
    if outer is None:
        (run / "checkpoints" / "best.pt").write_bytes(b"")
    else:
        torch.save(outer, run / "checkpoints" / "best.pt")
    (run / "config.yaml").write_text(yaml.safe_dump(to_dict(Config(data=str(scratch / "no-data")))))
    status, _, err = _run_cli(capsys, ["evaluate", run])
    _assert_one_line_error(status, err, "evaluate")
