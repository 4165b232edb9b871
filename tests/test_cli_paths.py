"""The user's path: run folders that work from anywhere, README commands as written, one consistent command line."""

from __future__ import annotations

import io
import os
import re
import shlex
import shutil
import socket
import stat
from pathlib import Path

import pytest

import vgs
from vgs.cli import main, parse_voice

README = Path(__file__).resolve().parents[1] / "README.md"


def _first_bash_block(section: str) -> list[str]:
    text = README.read_text()
    body = text[text.index(f"## {section}\n"):]
    block = re.search(r"```bash\n(.*?)```", body, re.S).group(1)
    return [line for line in block.splitlines() if line.startswith("vgs ")]


@pytest.fixture()
def demo_tree(tiny_run, tiny_scenes, tmp_path, monkeypatch) -> Path:
    """``runs/demo/run`` and ``runs/demo/data`` as `make demo` leaves them, in a fresh folder."""
    demo = tmp_path / "runs" / "demo"
    demo.mkdir(parents=True)
    shutil.copytree(tiny_run, demo / "run")
    (demo / "data").symlink_to(tiny_scenes)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_commands_run_as_written_after_make_demo(demo_tree, monkeypatch, capsys) -> None:
    served = {}
    monkeypatch.setattr("vgs.app.serve", lambda run, index, **kw: served.update(run=run, index=index, **kw))
    monkeypatch.setattr("vgs.cli.check_port_free", lambda host, port: None)  # 8000 may be taken on this machine
    commands = _first_bash_block("Evaluation") + _first_bash_block("Search and localization")
    assert len(commands) >= 10 and all("runs/demo" in c for c in commands)
    for command in commands:
        argv = shlex.split(command, comments=True)[1:]
        assert main(argv) == 0, command
    assert (demo_tree / "runs/demo/test.json").is_file()
    assert (demo_tree / "runs/demo/model/model.safetensors").is_file()
    assert served["index"] == Path("runs/demo/index") and served["port"] == 8000
    assert "\"speech_to_image\"" in capsys.readouterr().out  # --json printed


def test_run_folder_works_from_any_folder(tiny_run, tiny_scenes, tmp_path, monkeypatch) -> None:
    """An older run stored its data path relative to where training ran; it still resolves from elsewhere."""
    from vgs.io import load_checkpoint, save_checkpoint

    project = tmp_path / "project"
    run = project / "runs" / "demo" / "run"
    shutil.copytree(tiny_run, run)
    (project / "runs" / "demo" / "data").symlink_to(tiny_scenes)
    for name in ("best.pt", "last.pt"):
        payload = load_checkpoint(run / "checkpoints" / name)
        payload["config"]["data"] = "runs/demo/data"
        save_checkpoint(run / "checkpoints" / name, payload)
    (run / "config.yaml").write_text(re.sub(r"(?m)^data: .*$", "data: runs/demo/data", (run / "config.yaml").read_text()))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert Path(vgs.run_config(run).data).resolve() == tiny_scenes.resolve()
    assert Path(vgs.load(run, device="cpu").config.data).resolve() == tiny_scenes.resolve()
    result = vgs.evaluate_run(run, split="test", draws=1, progress=False)
    assert result["skipped_captions"] == 0 and result["speech_to_image"]["r10"]["mean"] >= 0


def test_missing_data_suggests_data_option(tiny_run, tmp_path, capsys) -> None:
    from vgs.io import load_checkpoint, save_checkpoint

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    payload = load_checkpoint(run / "checkpoints" / "best.pt")
    payload["config"]["data"] = str(tmp_path / "gone")
    save_checkpoint(run / "checkpoints" / "best.pt", payload)
    assert main(["evaluate", str(run), "--draws", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not found" in err and "--data DIR" in err


def test_new_runs_store_an_absolute_data_path(tiny_run) -> None:
    assert Path(vgs.run_config(tiny_run).data).is_absolute()


@pytest.mark.parametrize("argv, message", [
    (["search", "--index", "x", "--text", "a", "-k", "0"], "argument -k: expected an integer >= 1, got 0"),
    (["search", "--index", "x", "--text", "a", "-k", "-3"], "argument -k: expected an integer >= 1, got -3"),
    (["search", "--index", "x", "--text", "a", "--candidates", "0"], "--candidates: expected an integer >= 1"),
    (["localize", "r", "--out", "o", "--window", "nan"], "--window: expected a finite number > 0, got 'nan'"),
    (["localize", "r", "--out", "o", "--window", "0"], "--window: expected a finite number > 0"),
    (["localize", "r", "--out", "o", "--window", "inf"], "--window: expected a finite number > 0"),
    (["serve", "--index", "x", "--port", "0"], "--port: expected a port 1-65535, got 0"),
    (["serve", "--index", "x", "--port", "65536"], "--port: expected a port 1-65535, got 65536"),
    (["serve", "--index", "x", "--max-upload-mb", "1e9"], "--max-upload-mb: expected a finite number > 0 and <= 1024"),
    (["evaluate", "r", "--draws", "0"], "--draws: expected an integer >= 1"),
    (["cross-voice", "r", "--set", "a=b", "--draws", "0"], "--draws: expected an integer >= 1"),
    (["prepare", "scenes", "--out", "x", "--num-images", "-1"], "--num-images: expected an integer >= 1"),
    (["train", "--out", "x", "--lr", "inf"], "--lr: expected a finite number > 0"),
])
def test_numeric_options_are_validated_in_one_line(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["index", "search", "localize", "evaluate", "serve", "cross-voice"])
def test_model_commands_take_checkpoint_and_device(command, capsys) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    assert "--checkpoint" in text and "--device" in text


def test_bad_device_is_a_one_line_error(tiny_run, capsys) -> None:
    assert main(["localize", str(tiny_run), "--text", "a red circle", "--image", "x.png", "--out", "o",
                 "--device", "tpu"]) == 1
    assert "--device: expected cpu, cuda, cuda:N or mps, got 'tpu'" in capsys.readouterr().err


def test_short_voice_ids() -> None:
    assert parse_voice("en-us+f2").id == "espeak:en-us+f2:r175:p50"
    assert parse_voice("espeak:en-us+f2:r160:p40").id == "espeak:en-us+f2:r160:p40"
    assert parse_voice("flite:slt").engine == "flite"


def test_voices_lists_compactly(capsys) -> None:
    assert main(["voices", "--engines", "espeak"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^espeak \(\d+\): .*en-us", out, re.M)
    assert len(out.splitlines()) < 40


def test_serve_checks_the_port_before_loading(tiny_run, monkeypatch, capsys) -> None:
    monkeypatch.setattr("vgs.api.load", lambda *a, **k: pytest.fail("the model was loaded"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", str(tiny_run), "--index", "nowhere", "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert f"--port {port}: cannot listen on 127.0.0.1:{port} (already in use)" in err and "Errno" not in err


def test_plain_progress_lines_when_not_a_terminal(monkeypatch) -> None:
    from vgs.progress import tqdm

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    log = io.StringIO()
    assert list(tqdm(range(1000), desc="encode", file=log)) == list(range(1000))
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and 3 <= len(lines) <= 6
    assert lines[0].startswith("encode: 0/1000") and lines[-1].startswith("encode: 1000/1000 it (100%)")
    bar = tqdm(total=10, desc="x", file=log)
    bar.update(10)
    bar.close()
    bar.close()
    assert log.getvalue().count("x: 10/10") == 1


def test_index_progress_tracks_encoding(tiny_run, tiny_scenes, tmp_path, monkeypatch) -> None:
    """The bar moves only once a chunk is encoded and saved, so it never sits at 100% while work goes on."""
    import vgs.search as search

    seen = []

    class Recorder:
        def __init__(self, *a, total=None, **k):
            self.n = 0

        def update(self, n):
            self.n += n
            seen.append((self.n, len(list((tmp_path / "idx" / "images").glob("*.regions.npy")))))

        def close(self):
            pass

    monkeypatch.setattr(search, "tqdm", Recorder)
    writer = search.IndexWriter(tmp_path / "idx", vgs.load(tiny_run, device="cpu"), chunk=16)
    writer.add_images(search.list_images(tiny_scenes / "images")[:40])
    assert [n for n, _ in seen] == [16, 32, 40]
    assert all(n <= chunks * 16 for n, chunks in seen)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_honour_the_umask(tmp_path, mask, mode) -> None:
    from vgs.io import save_checkpoint, write_text

    old = os.umask(mask)
    try:
        write_text(tmp_path / "report.html", "<html></html>")
        save_checkpoint(tmp_path / "best.pt", {"x": 1})
    finally:
        os.umask(old)
    for name in ("report.html", "best.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode


def test_old_spellings_still_work_with_a_warning(demo_tree, capsys) -> None:
    assert main(["index", "runs/demo/run", "--images", "runs/demo/data/images", "--out", "idx"]) == 0
    query = "runs/demo/data/audio/test_00000_0.wav"
    assert main(["search", "idx", "--audio", query, "-k", "2", "--run", "runs/demo/run"]) == 0
    err = capsys.readouterr().err
    assert "vgs search INDEX (positional) is deprecated; use vgs search --index INDEX" in err
    assert "search --run RUN is deprecated" in err
    assert main(["search", "--audio", query]) == 1
    assert "give the index folder with --index DIR" in capsys.readouterr().err


def test_evaluate_reports_skipped_captions_and_strict(tiny_run, tiny_scenes, tmp_path, capsys) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.jsonl", "dev.jsonl", "test.jsonl"):
        (data / name).symlink_to(tiny_scenes / name)
    (data / "images").mkdir()  # linked files, not a linked folder (a folder linked out of the data set is refused)
    for image in (tiny_scenes / "images").iterdir():
        (data / "images" / image.name).symlink_to(image)
    (data / "audio").mkdir()
    for wav in (tiny_scenes / "audio").glob("test_*.wav"):
        (data / "audio" / wav.name).symlink_to(wav)
    (data / "audio" / "test_00001_2.wav").unlink()
    (data / "audio" / "test_00001_2.wav").write_bytes(b"RIFF not audio")
    out = tmp_path / "result.json"
    assert main(["evaluate", str(tiny_run), "--data", str(data), "--draws", "1", "--json", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning: skipped test: 1 caption(s) could not be used; first: " in err and "test_00001_2.wav" in err
    assert "--json FILE" not in err and "deprecated; use --out" in err
    import json

    assert json.loads(out.read_text())["skipped_captions"] == 1
    assert main(["evaluate", str(tiny_run), "--data", str(data), "--draws", "1", "--strict"]) == 1
    err = capsys.readouterr().err
    assert "1 caption(s) could not be used" in err and "--strict" in err and len(err.strip().splitlines()) == 1


def test_evaluate_skips_an_unreadable_image_and_keeps_the_message(tiny_run, tiny_scenes, tmp_path, capsys) -> None:
    """One bad photo no longer aborts `vgs evaluate`: its captions are skipped and counted; --strict fails."""
    import json

    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.jsonl", "dev.jsonl", "test.jsonl"):
        (data / name).symlink_to(tiny_scenes / name)
    (data / "audio").mkdir()
    for wav in (tiny_scenes / "audio").glob("test_*.wav"):
        (data / "audio" / wav.name).symlink_to(wav)
    (data / "images").mkdir()
    for image in (tiny_scenes / "images").iterdir():
        (data / "images" / image.name).symlink_to(image)
    rows = [json.loads(line) for line in (tiny_scenes / "test.jsonl").read_text().splitlines() if line.strip()]
    bad = rows[0]["image"]
    (data / bad).unlink()
    (data / bad).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    captions_of_bad = sum(row["image"] == bad for row in rows)
    out = tmp_path / "result.json"
    assert main(["evaluate", str(tiny_run), "--data", str(data), "--protocol", "full", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"warning: skipped test: {captions_of_bad} caption(s) could not be used; first: " in err
    assert Path(bad).name in err
    result = json.loads(out.read_text())
    assert result["skipped_captions"] == captions_of_bad and result["captions"] == len(rows) - captions_of_bad
    assert main(["evaluate", str(tiny_run), "--data", str(data), "--draws", "1", "--strict"]) == 1
    err = capsys.readouterr().err
    assert "could not be used" in err and Path(bad).name in err and len(err.strip().splitlines()) == 1


def test_close_bars_ends_live_bars_before_an_error_line() -> None:
    import io

    from tqdm import tqdm as raw_tqdm

    from vgs.progress import close_bars

    stream = io.StringIO()
    bar = raw_tqdm(total=10, file=stream, desc="work")
    bar.update(3)
    close_bars()
    assert bar.disable or getattr(bar, "_instances", None) is None or bar not in raw_tqdm._instances
    assert stream.getvalue().endswith("\n")  # the bar's line is finished: the next message starts on its own line
