"""Cross-voice test sets (`vgs prepare respeak`) and the cross-voice evaluation."""

from __future__ import annotations

import shutil

import pytest

from vgs.cli import main
from vgs.crossvoice import cross_voice, format_cross_voice, parse_sets
from vgs.data.build import run_builder
from vgs.data.manifest import load_split
from vgs.data.respeak import RespeakSource, respeak_jobs
from vgs.errors import VGSError
from vgs.tts import VoicePoolConfig


def _build(source: RespeakSource, out):
    written, report = run_builder(out, lambda report: respeak_jobs(source, report), workers=1, progress=False)
    assert not report.skipped, report.skipped[:3]
    return written


def test_respeak_keeps_pairs_and_changes_the_voice(tiny_scenes, tmp_path) -> None:
    voices = VoicePoolConfig(engines="espeak", espeak_voices=("en-us+f4",), rates=(200,), pitches=(30,))
    assert _build(RespeakSource(tiny_scenes, ("dev",), voices), tmp_path / "other") == {"dev": 100}
    before, after = load_split(tiny_scenes, "dev"), load_split(tmp_path / "other", "dev")
    assert [(r["id"], r["image_id"], r["text"]) for r in before.rows] == [(r["id"], r["image_id"], r["text"]) for r in after.rows]
    assert {r["speaker"] for r in after.rows} == {"espeak:en-us+f4:r200:p30"}
    tagged = [w for r in after.rows for w in r["words"] if "object" in w]
    assert tagged and len(tagged) == sum("object" in w for r in before.rows for w in r["words"])
    assert all(after.image_path(r).resolve() == before.image_path(r).resolve() for r in after.rows[:5])


def test_respeak_corrupts_the_source_audio(tiny_scenes, tmp_path) -> None:
    _build(RespeakSource(tiny_scenes, ("test",), keep_audio=True, corrupt="noise:10,speed:0.9"), tmp_path / "noisy")
    before = {r["id"]: r for r in load_split(tiny_scenes, "test").rows}
    after = load_split(tmp_path / "noisy", "test").rows
    assert len(after) == len(before)
    for row in after[:10]:
        old = before[row["id"]]
        assert row["speaker"] == old["speaker"] + "+noise10dB+speed0.9"
        assert row["duration"] == pytest.approx(old["duration"] / 0.9, abs=0.01)
        assert row["words"][-1]["end"] == pytest.approx(old["words"][-1]["end"] / 0.9, abs=1e-3)
    with pytest.raises(VGSError, match="--corrupt"):
        respeak_jobs(RespeakSource(tiny_scenes, ("test",), keep_audio=True), None)


def test_respeak_random_draws_effects_per_recording(tiny_scenes, tmp_path) -> None:
    """``--corrupt random``: each recording gets its own effects from the training ranges, the same on every build."""
    assert main(["prepare", "respeak", str(tiny_scenes), "--splits", "test", "--keep-audio", "--corrupt", "random",
                 "--out", str(tmp_path / "varied"), "--workers", "1", "--no-features"]) == 0
    before = {r["id"]: r for r in load_split(tiny_scenes, "test").rows}
    after = load_split(tmp_path / "varied", "test").rows
    assert len(after) == len(before) == 60
    labels = [r["speaker"][len(before[r["id"]]["speaker"]):] for r in after]
    assert len(set(labels)) > 10 and "" in labels  # varied, and some copies stay clean
    assert any("noise" in label for label in labels) and any("speed" in label for label in labels)
    again = respeak_jobs(RespeakSource(tiny_scenes, ("test",), keep_audio=True, corrupt="random"), None)
    assert [job.corrupt or [] for job in again] == [job.corrupt or [] for job in
                                                   respeak_jobs(RespeakSource(tiny_scenes, ("test",), keep_audio=True,
                                                                              corrupt="random"), None)]
    other_seed = respeak_jobs(RespeakSource(tiny_scenes, ("test",), keep_audio=True, corrupt="random", seed=1), None)
    assert [job.corrupt for job in again] != [job.corrupt for job in other_seed]


@pytest.mark.skipif(shutil.which("flite") is None, reason="flite is not installed")
def test_respeak_cli_with_another_engine(tiny_scenes, tmp_path) -> None:
    out = tmp_path / "flite"
    assert main(["prepare", "respeak", str(tiny_scenes), "--splits", "test", "--engines", "flite",
                 "--voices", "flite:kal16,flite:slt", "--out", str(out), "--workers", "1"]) == 0
    rows = load_split(out, "test").rows
    assert len(rows) == 60 and {r["speaker"].split(":")[1] for r in rows} == {"kal16", "slt"}
    assert all("words" not in r for r in rows)  # flite reports no word times


def test_cross_voice_scores_every_set_on_shared_images(tiny_run, tiny_scenes, tmp_path) -> None:
    _build(RespeakSource(tiny_scenes, ("dev",), keep_audio=True, corrupt="reverb:0.5"), tmp_path / "wet")
    sets = parse_sets([f"clean={tiny_scenes}", f"reverb={tmp_path / 'wet'}"])
    rows = cross_voice(tiny_run, sets, split="dev", draws=2, progress=False)
    assert [r["set"] for r in rows] == ["clean", "reverb"] and all(r["captions"] == 100 for r in rows)
    assert rows[0]["pairs100"]["speech_to_image"]["r10"]["mean"] > 0.3
    table = format_cross_voice(rows)
    assert "| clean | 100 |" in table and "| reverb | 100 |" in table and "1.00x" in table
    with pytest.raises(VGSError, match="NAME=DATA_DIR"):
        parse_sets(["=x"])
