"""Real-speech importers (facc, places, spokencoco) on tiny fixtures in the corpora's real layouts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from vgs.data import build as build_module
from vgs.data.build import REPORT_FILE, BuildReport, build_dataset, exit_status
from vgs.data.importers import (IMPORTERS, FaccSource, PlacesSource, SpokenCocoSource, audio_problem, facc_jobs,
                                places_jobs, spokencoco_jobs)
from vgs.data.manifest import read_manifest
from vgs.errors import VGSError

SECONDS = 0.5


def wav(path: Path, rate: int = 16000, channels: int = 1, subtype: str = "PCM_16", seconds: float = SECONDS) -> Path:
    t = np.arange(int(rate * seconds)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 220 * t)
    data = np.stack([tone] * channels, axis=1) if channels > 1 else tone
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data.astype(np.float32), rate, subtype=subtype)
    return path


def truncate(path: Path, keep: int | None = None) -> Path:
    """Cut a wav to its 44-byte header (``keep=None``) or to ``keep`` bytes."""
    data = wav(path, seconds=1.0).read_bytes()
    path.write_bytes(data[:44 if keep is None else keep])
    return path


def jpg(path: Path, color: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 24), color).save(path)
    return path


def build(out: Path, jobs_fn, source) -> tuple[dict[str, int], BuildReport]:
    report = BuildReport()
    written = build_dataset(out, jobs_fn(source, report), report, workers=1, progress=False)
    return written, report


def rows(out: Path, split: str) -> dict[str, dict]:
    manifest = read_manifest(out / f"{split}.jsonl", strict=True)
    for row in manifest.rows:
        assert manifest.audio_path(row).is_file() and manifest.image_path(row).is_file()
    return {row["id"]: row for row in manifest.rows}


def skips(out: Path) -> list[dict]:
    return json.loads((out / REPORT_FILE).read_text())["skipped"]


def find(entries: list[dict], source: Path | str, text: str, line: int | None = None) -> dict:
    hits = [e for e in entries if e["source"] == str(source) and text in e["reason"] and (line is None or e["line"] == line)]
    assert hits, f"no skip from {source}:{line} mentioning {text!r} in {json.dumps(entries, indent=1)}"
    return hits[0]


def audio_info(out: Path, row: dict) -> Any:
    return sf.info(str(out / row["audio"]))


# --------------------------------------------------------------------------- facc

IMG = {"train": "1000268201_693b08cb0e", "dev": "2571096893_694ce79768", "test": "3385593926_d3e9c21170"}


def facc_tree(root: Path) -> tuple[FaccSource, Path]:
    """Flickr8k images + split lists + token file beside flickr_audio/ (wavs/, wav2capt.txt, wav2spk.txt)."""
    images = root / "Flickr8k_Dataset"
    audio = root / "flickr_audio"
    capt, spk, tokens = [], [], []
    for split, stem in IMG.items():
        jpg(images / f"{stem}.jpg")
        (root / f"Flickr_8k.{split}Images.txt").write_text(f"{stem}.jpg\n")
        for n in range(2):
            wav(audio / "wavs" / f"{stem}_{n}.wav")
            capt.append(f"{stem}_{n}.wav {stem}.jpg #{n}")
            spk.append(f"{stem}_{n}.wav {n + 1}")
            tokens.append(f"{stem}.jpg#{n}\tA dog runs  on grass {n} .")
    jpg(images / "9999999999_aaaaaaaaaa.jpg")  # in no split list: ignored
    wav(audio / "wavs" / "9999999999_aaaaaaaaaa_0.wav")
    capt.append("9999999999_aaaaaaaaaa_0.wav 9999999999_aaaaaaaaaa.jpg #0")
    (audio / "wav2capt.txt").write_text("\n".join(capt) + "\n")
    (audio / "wav2spk.txt").write_text("\n".join(spk) + "\n")
    (root / "Flickr8k.token.txt").write_text("\n".join(tokens) + "\n")
    return FaccSource(audio_root=audio, images=images, captions=root / "Flickr8k.token.txt"), audio


def test_facc_clean(tmp_path: Path) -> None:
    source, _ = facc_tree(tmp_path / "src")
    out = tmp_path / "out"
    written, report = build(out, facc_jobs, source)
    assert written == {"train": 2, "dev": 2, "test": 2} and exit_status(report) == 0
    for split, stem in IMG.items():
        got = rows(out, split)
        assert set(got) == {f"{stem}#0", f"{stem}#1"}
        row = got[f"{stem}#1"]
        assert row["image_id"] == stem and row["image"] == f"images/{stem}.jpg"
        assert row["speaker"] == "facc:2" and row["text"] == "A dog runs on grass 1 ."
        assert row["audio"] == f"audio/{stem}_1.wav" and abs(row["duration"] - SECONDS) < 1e-3
        assert (out / row["audio"]).is_symlink()  # already 16 kHz mono PCM_16: linked, not rewritten


def test_facc_parent_folder_and_explicit_split_lists(tmp_path: Path) -> None:
    source, audio = facc_tree(tmp_path / "src")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "Flickr_8k.trainImages.txt").write_text(f"{IMG['dev']}.jpg\n")
    source = FaccSource(audio_root=audio.parent, images=source.images, split_lists=lists)
    jobs = facc_jobs(source, BuildReport())
    assert {(j.split, j.id, j.text, j.speaker) for j in jobs} == {
        ("train", f"{IMG['dev']}#0", None, "facc:1"), ("train", f"{IMG['dev']}#1", None, "facc:2")}
    with pytest.raises(VGSError, match="--split-lists"):
        facc_jobs(FaccSource(audio_root=audio, images=source.images, split_lists=tmp_path), BuildReport())


def test_facc_bad_inputs(tmp_path: Path) -> None:
    source, audio = facc_tree(tmp_path / "src")
    images, wavs, stem = source.images, audio / "wavs", IMG["train"]
    extra = {  # caption index -> how its wav is made; all in the train split
        2: None,  # missing
        3: lambda p: p.write_bytes(b""),
        4: truncate,
        5: lambda p: truncate(p, keep=44 + 8000),
        6: lambda p: wav(p, rate=44100, channels=2, subtype="PCM_24"),
        7: lambda p: wav(p, subtype="PCM_U8", rate=8000),
        8: lambda p: wav(p, subtype="FLOAT", rate=22050),
        9: lambda p: p.write_bytes(b"this is not audio at all" * 20),
    }
    for n, make in extra.items():
        if make is not None:
            make(wavs / f"{stem}_{n}.wav")
    jpg(images / "1111111111_bbbbbbbbbb.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    wav(wavs / "1111111111_bbbbbbbbbb_0.wav")
    wav(wavs / "2222222222_cccccccccc_0.wav")  # its image is in the list but not on disk
    (tmp_path / "src" / "Flickr_8k.trainImages.txt").write_text(f"{stem}.jpg\n1111111111_bbbbbbbbbb.jpg\n2222222222_cccccccccc.jpg\n")
    capt = audio / "wav2capt.txt"
    lines = capt.read_bytes().decode().splitlines()
    base = len(lines)
    lines += [f"{stem}_{n}.wav {stem}.jpg #{n}" for n in extra]  # lines base+1 .. base+8
    lines += ["1111111111_bbbbbbbbbb_0.wav 1111111111_bbbbbbbbbb.jpg #0",  # base+9: unreadable image
              "2222222222_cccccccccc_0.wav 2222222222_cccccccccc.jpg #0",  # base+10: image missing
              "garbage line",  # base+11
              f"{stem}_0.wav {stem}.jpg #0"]  # base+12: duplicate id
    capt.write_bytes("\n".join(lines).encode() + b"\n" + f"{stem}_1.wav {stem}.jpg #1 caf\xe9".encode("latin-1") + b"\n")
    spk = audio / "wav2spk.txt"
    spk.write_text(spk.read_text() + "no-speaker-here\n" + f"{stem}_6.wav 7\n")
    out = tmp_path / "out"
    written, report = build(out, facc_jobs, source)

    assert exit_status(report) == 3
    entries = skips(out)
    find(entries, capt, "audio file not found", base + 1)
    find(entries, capt, "empty (0 bytes)", base + 2)
    find(entries, capt, "truncated WAV", base + 3)
    find(entries, capt, "truncated WAV", base + 4)
    find(entries, wavs / f"{stem}_9.wav", "unreadable audio")
    find(entries, images / "1111111111_bbbbbbbbbb.jpg", "unreadable or truncated image")
    find(entries, capt, "image 2222222222_cccccccccc.jpg not found", base + 10)
    find(entries, capt, "unparsable line 'garbage line'", base + 11)
    find(entries, f"{capt}:{base + 12}", "duplicate id")
    find(entries, capt, "not valid UTF-8", base + 13)
    find(entries, spk, "unparsable line", len(IMG) * 2 + 1)

    got = rows(out, "train")
    assert set(got) == {f"{stem}#{n}" for n in (0, 1, 6, 7, 8)}
    assert written["dev"] == 2 and written["test"] == 2  # the build carried on
    assert got[f"{stem}#6"]["speaker"] == "facc:7" and got[f"{stem}#7"]["speaker"] == "facc:unknown"
    for n in (6, 7, 8):
        info = audio_info(out, got[f"{stem}#{n}"])
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert abs(info.frames / 16000 - SECONDS) < 0.01 and abs(got[f"{stem}#{n}"]["duration"] - SECONDS) < 0.01
        assert not (out / got[f"{stem}#{n}"]["audio"]).is_symlink()


def test_facc_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source, audio = facc_tree(tmp_path / "src")
    wav(audio / "wavs" / f"{IMG['dev']}_0.wav", rate=44100, channels=2)  # converted, not linked
    out = tmp_path / "out"
    build(out, facc_jobs, source)
    before = {p.name: p.read_bytes() for p in out.glob("*.jsonl")}
    converted = out / rows(out, "dev")[f"{IMG['dev']}#0"]["audio"]
    converted.unlink()
    (out / "train.jsonl").unlink()
    calls: list[str] = []
    real = build_module.import_audio
    monkeypatch.setattr(build_module, "import_audio", lambda job, *a, **k: calls.append(job.id) or real(job, *a, **k))
    _, report = build(out, facc_jobs, source)
    assert calls == [f"{IMG['dev']}#0"] and exit_status(report) == 0
    assert {p.name: p.read_bytes() for p in out.glob("*.jsonl")} == before
    assert sf.info(str(converted)).samplerate == 16000


# --------------------------------------------------------------------------- places

def places_tree(root: Path) -> tuple[Path, Path, Path]:
    """PlacesAudio_400k_distro/{wavs,metadata/*.json} with a relative audio base and an absolute image base."""
    distro, images = root / "PlacesAudio_400k_distro", root / "places205" / "images"
    meta = distro / "metadata"
    meta.mkdir(parents=True)
    entries = {"train": [], "val": []}
    for split, k in (("train", 0), ("train", 1), ("val", 2)):
        image = f"k/kitchen/gsun_{k:032x}.jpg"
        jpg(images / image, (10 * k, 100, 50))
        wav(distro / "wavs" / str(k) / f"utterance_{100 + k}.wav")
        entries[split].append({"wav": f"wavs/{k}/utterance_{100 + k}.wav", "image": image, "uttid": f"A1SPK{k}_GSUN_{k}",
                               "speaker": f"A1SPK{k}", "asr_text": f"a kitchen with  {k} chairs"})
    entries["val"][0].pop("uttid")
    for split, data in entries.items():
        doc = {"image_base_path": str(images), "audio_base_path": "..", "data": data}
        (meta / f"{split}.json").write_text(json.dumps(doc, indent=1))
    return meta / "train.json", meta / "val.json", images


def test_places_clean(tmp_path: Path) -> None:
    train, val, images = places_tree(tmp_path / "src")
    out = tmp_path / "out"
    written, report = build(out, places_jobs, PlacesSource({"train": train, "dev": val}))
    assert written == {"train": 2, "dev": 1} and exit_status(report) == 0
    row = rows(out, "train")["A1SPK1_GSUN_1"]
    assert row["image_id"] == f"k/kitchen/gsun_{1:032x}" and row["image"] == f"images/k/kitchen/gsun_{1:032x}.jpg"
    assert row["speaker"] == "places:A1SPK1" and row["text"] == "a kitchen with 1 chairs"
    assert set(rows(out, "dev")) == {"utterance_102"}  # no uttid: the wav stem


def test_places_overrides(tmp_path: Path) -> None:
    train, _, images = places_tree(tmp_path / "src")
    moved = tmp_path / "elsewhere"
    images.rename(moved)
    doc = json.loads(train.read_text())
    del doc["audio_base_path"]
    train.write_text(json.dumps(doc))
    report = BuildReport()
    assert places_jobs(PlacesSource({"train": train}, images=moved, audio_root=train.parent.parent), report)
    assert not report.skipped
    with pytest.raises(VGSError, match="no usable items.*--audio-root"):
        places_jobs(PlacesSource({"train": train}, images=moved), BuildReport())


def test_places_bad_inputs(tmp_path: Path) -> None:
    train, val, images = places_tree(tmp_path / "src")
    distro = train.parent.parent
    doc = json.loads(train.read_text())
    good = doc["data"][0]
    wav(distro / "wavs" / "9" / "stereo.wav", rate=44100, channels=2, subtype="PCM_24")
    doc["data"] += [
        "not an object",  # data[2]
        {k: v for k, v in good.items() if k != "wav"},  # data[3]
        {k: v for k, v in good.items() if k != "image"},  # data[4]
        {**good, "uttid": "U5", "wav": "wavs/0/missing.wav"},  # data[5]
        {**good, "uttid": "U6", "image": "k/kitchen/nope.jpg"},  # data[6]
        {**good, "uttid": "U7", "asr_text": "BAD_BYTES"},  # data[7]
        {**good},  # data[8]: duplicate uttid
        {**good, "uttid": "U9", "wav": "wavs/9/stereo.wav"},  # data[9]: converted
        {**good, "uttid": "U10", "wav": "../../etc/passwd"},  # data[10]
    ]
    train.write_bytes(json.dumps(doc).encode().replace(b"BAD_BYTES", b"caf\xe9"))
    broken = train.parent / "test.json"
    broken.write_text('{"image_base_path": "x",\n "audio_base_path": "y",\n "data": [\n {"wav": "a.wav",}\n]}\n')
    out = tmp_path / "out"
    written, report = build(out, places_jobs, PlacesSource({"train": train, "dev": val, "test": broken}))
    assert exit_status(report) == 3 and written == {"train": 3, "dev": 1}
    entries = skips(out)
    find(entries, broken, "not valid JSON", 4)
    for index, text in ((2, "expected a JSON object"), (3, "field 'wav'"), (4, "field 'image'"), (5, "audio file not found"),
                        (6, "image k/kitchen/nope.jpg not found"), (7, "not valid UTF-8"), (10, "relative path")):
        assert find(entries, train, f"data[{index}]", None)["line"] is None
        find(entries, train, text)
    find(entries, f"{train}:data[8]", "duplicate id 'A1SPK0_GSUN_0'")
    assert find(entries, train, "data[3]:")["id"] == "A1SPK0_GSUN_0"  # the entry's uttid, when it has one
    info = audio_info(out, rows(out, "train")["U9"])
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (16000, 1, "PCM_16", int(16000 * SECONDS))


# --------------------------------------------------------------------------- spokencoco

def coco_tree(root: Path) -> tuple[Path, Path, Path]:
    """SpokenCOCO/{SpokenCOCO_val.json,wavs/val/0/*.wav} and coco/val2014/*.jpg."""
    spoken, coco = root / "SpokenCOCO", root / "coco"
    data = []
    for k in (325114, 42):
        image = f"val2014/COCO_val2014_{k:012d}.jpg"
        jpg(coco / image)
        captions = []
        for n in range(2):
            uttid = f"m07spk{n}-3LUY3GC63Z0R9PPDSYUGV3GJ8DKP7J_{k}_{629297 + n}"
            wav(spoken / "wavs" / "val" / "0" / f"{uttid}.wav")
            captions.append({"text": f"A URINAL IN  A PUBLIC RESTROOM {n}", "speaker": f"m07spk{n}", "uttid": uttid,
                             "wav": f"wavs/val/0/{uttid}.wav"})
        data.append({"image": image, "captions": captions})
    (spoken / "SpokenCOCO_val.json").write_text(json.dumps({"data": data}))
    return spoken / "SpokenCOCO_val.json", spoken, coco


def test_spokencoco_clean(tmp_path: Path) -> None:
    val, spoken, coco = coco_tree(tmp_path / "src")
    out = tmp_path / "out"
    written, report = build(out, spokencoco_jobs, SpokenCocoSource({"dev": val}, audio_root=spoken, images=coco))
    assert written == {"dev": 4} and exit_status(report) == 0
    row = rows(out, "dev")["m07spk1-3LUY3GC63Z0R9PPDSYUGV3GJ8DKP7J_325114_629298"]
    assert row["image_id"] == "COCO_val2014_000000325114" and row["image"] == "images/COCO_val2014_000000325114.jpg"
    assert row["text"] == "a urinal in a public restroom 1" and row["speaker"] == "spokencoco:m07spk1"


def test_spokencoco_bad_inputs(tmp_path: Path) -> None:
    val, spoken, coco = coco_tree(tmp_path / "src")
    doc = json.loads(val.read_text())
    first = doc["data"][0]["captions"][0]
    wav(spoken / "wavs" / "val" / "0" / "u8.wav", subtype="PCM_U8")
    doc["data"][0]["captions"] += [
        {k: v for k, v in first.items() if k != "text"},  # captions[2]
        {**first, "uttid": "E3", "text": "   "},  # captions[3]
        7,  # captions[4]
        {**first},  # captions[5]: duplicate
        {**first, "uttid": "E6", "wav": "wavs/val/0/gone.wav"},  # captions[6]
        {**first, "uttid": "U8", "wav": "wavs/val/0/u8.wav"},  # captions[7]: 8-bit, converted
    ]
    doc["data"] += [{"captions": [first]},  # data[2]: no image
                    {"image": "val2014/COCO_val2014_000000000001.jpg", "captions": [{**first, "uttid": "E9"}]},  # data[3]
                    {"image": "val2014/COCO_val2014_000000325114.jpg", "captions": "nope"}]  # data[4]
    val.write_text(json.dumps(doc))
    train = spoken / "SpokenCOCO_train.json"
    train.write_text('{"data": [\n  {"image": "x.jpg", "captions": []}\n  {"image": "y.jpg"}\n]}')
    out = tmp_path / "out"
    written, report = build(out, spokencoco_jobs, SpokenCocoSource({"train": train, "dev": val}, audio_root=spoken, images=coco))
    assert exit_status(report) == 3 and written == {"dev": 5}
    entries = skips(out)
    find(entries, train, "not valid JSON", 3)
    for where, text in (("data[0].captions[2]", "field 'text'"), ("data[0].captions[3]", "field 'text'"),
                        ("data[0].captions[4]", "expected a JSON object"), ("data[0].captions[6]", "audio file not found"),
                        ("data[2]", "field 'image'"), ("data[3].captions[0]", "not found in"), ("data[4]", "list of captions")):
        hit = find(entries, val, f"{where}:")
        assert text in hit["reason"], hit
    find(entries, f"{val}:data[0].captions[5]", "duplicate id")
    info = audio_info(out, rows(out, "dev")["U8"])
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")


# --------------------------------------------------------------------------- misc

def test_audio_problem(tmp_path: Path) -> None:
    assert audio_problem(wav(tmp_path / "ok.wav")) is None
    assert audio_problem(wav(tmp_path / "ok.flac")) is None
    assert audio_problem(tmp_path / "none.wav") == "audio file not found"
    assert "no audio data chunk" in str(audio_problem(truncate(tmp_path / "short.wav", keep=20)))
    assert "file holds 0" in str(audio_problem(truncate(tmp_path / "hdr.wav")))


def test_registry() -> None:
    assert IMPORTERS == {"facc": (FaccSource, facc_jobs), "places": (PlacesSource, places_jobs),
                         "spokencoco": (SpokenCocoSource, spokencoco_jobs)}
