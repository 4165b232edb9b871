"""The README's main job (`vgs demo`) and the Table 1 grid (`vgs reproduce`), at tiny sizes."""

from __future__ import annotations

import csv
import json
import re

import pytest

from vgs.cli import main


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys) -> None:
    assert main(["demo", "--out", str(tmp_path / "demo"), "--num-images", "40", "--epochs", "2", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "untrained" in out and "pointing game" in out
    demo = tmp_path / "demo"
    report = (demo / "report.html").read_text()
    for png in ("recall.png", "curves.png", "retrievals.png"):
        assert (demo / png).stat().st_size > 5000
        assert png in report
    assert "Pointing game" in report and "localize-" in report
    # one self-contained file: every image is embedded, nothing is fetched from beside it or the network
    assert re.findall(r'src="([^"]{0,22})', report) and all(src.startswith("data:image/png;base64,")
                                                             for src in re.findall(r'src="([^"]{0,22})', report))
    assert "http://" not in report and "https://" not in report
    results = json.loads((demo / "results.json").read_text())
    assert set(results["recall"]) == {"trained", "untrained", "trained (full)"}
    assert 0 <= results["localization"]["pointing_game"] <= 1
    # re-running resumes: nothing is rebuilt or retrained
    assert main(["demo", "--out", str(demo), "--images", "40", "--epochs", "2", "--workers", "1"]) == 0  # old spelling
    captured = capsys.readouterr()
    assert "--images N (a count) is deprecated; use --num-images N" in captured.err
    assert "resuming" in captured.out


@pytest.mark.slow
def test_reproduce_grid_subset(tiny_scenes, tmp_path, capsys) -> None:
    args = ["reproduce", "--data", str(tiny_scenes), "--out", str(tmp_path / "grid"), "--budget", "0.2",
            "--image-encoders", "efficientnet-lite0,vgg16", "--audio-encoders", "conv5", "--draws", "2", "--recipe", "paper"]
    assert main(args) == 0
    capsys.readouterr()
    table = (tmp_path / "grid" / "table.md").read_text()
    assert "efficientnet-lite0" in table and "random init (no ImageNet weights here)" in table
    with open(tmp_path / "grid" / "table.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["image"] for r in rows] == ["efficientnet-lite0", "vgg16"]
    assert all(0 <= float(r["P@10"]) <= 1 and float(r["untrained P@10"]) > 0 for r in rows)
    assert rows[1]["paper P@10"] == "0.76"
    # finished cells are not redone
    assert main(args) == 0
    assert "== " not in capsys.readouterr().out
