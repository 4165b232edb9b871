"""`vgs index --shard i/N` + `--merge`: two shard processes merged give the same index and search results as one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vgs.errors import VGSError
from vgs.shards import merge_shards, parse_shard, shard_folder
from vgs.similarity import PackedFrames

# A small untrained model, the same in every process (seeded head), so shards and the single build agree.
MODEL = """
import sys, torch
torch.manual_seed(0)
torch.set_num_threads(1)
from vgs.api import build_untrained
from vgs.config import Config, set_value
config = Config()
for key, value in {"image.size": 64, "model.embed_dim": 16, "model.audio_channels": 16}.items():
    set_value(config, key, value)
model = build_untrained(config.validate())
"""


def run(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", MODEL + script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(proc: subprocess.Popen) -> None:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:  # noqa: ANN001
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(13):  # an odd count: shards of different sizes
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"img{i:02d}.png")
    (folder / "sub").mkdir()
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / "sub" / "deep.png")
    return folder


def test_two_shard_processes_merge_into_the_single_process_index(photos: Path, tmp_path: Path) -> None:
    from vgs.search import SearchIndex, build_index

    shard = "from vgs.shards import build_shard\nbuild_shard(model, sys.argv[1], sys.argv[2], None, (int(sys.argv[3]), 2), progress=False)\n"
    procs = [run(shard, str(tmp_path / "sharded"), str(photos), "0"), run(shard, str(tmp_path / "sharded"), str(photos), "1")]
    scope: dict = {}
    exec(MODEL, scope)  # the single-process build, here, with the same seeded model  # noqa: S102
    build_index(scope["model"], tmp_path / "single", photos, progress=False, codes=8)
    for proc in procs:
        finish(proc)
    assert {len(SearchIndex(shard_folder(tmp_path / "sharded", i, 2)).image_paths) for i in (0, 1)} == {7}
    merge_shards(tmp_path / "sharded")
    merged = SearchIndex(tmp_path / "sharded")
    merged.build_codes(8)
    one = SearchIndex(tmp_path / "single")
    assert merged.image_paths == one.image_paths and merged.image_count == 14
    assert merged.meta["image_chunks"] == one.meta["image_chunks"]
    np.testing.assert_allclose(merged.regions_of(np.arange(14)).numpy(), one.regions_of(np.arange(14)).numpy(), atol=2e-3)
    from test_first_stage import FAKE_MODEL as fake
    rng = np.random.default_rng(1)
    for _ in range(5):
        frames = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((6, 16)).astype(np.float32)), dim=1)
        query = PackedFrames(frames, torch.zeros(6, dtype=torch.long), torch.tensor([6]))
        for stage in ("exact", "compact", "pooled"):
            a = merged.search_audio(fake, query, k=5, first_stage=stage)
            b = one.search_audio(fake, query, k=5, first_stage=stage)
            assert [h.path for h in a] == [h.path for h in b]
            np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-3)
    merge_shards(tmp_path / "sharded")  # merging again rewrites the same index
    assert SearchIndex(tmp_path / "sharded").image_paths == one.image_paths


def test_merge_refuses_incomplete_or_mixed_shards(tmp_path: Path) -> None:
    with pytest.raises(VGSError, match="no shard folders"):
        merge_shards(tmp_path)
    shard_folder(tmp_path, 0, 2).mkdir(parents=True)
    with pytest.raises(VGSError, match=r"shard\(s\) \[1\] of 2 missing"):
        merge_shards(tmp_path)
    shard_folder(tmp_path, 1, 2).mkdir(parents=True)
    with pytest.raises(VGSError, match="not finished"):
        merge_shards(tmp_path)
    shard_folder(tmp_path, 0, 3).mkdir(parents=True)
    with pytest.raises(VGSError, match="different counts"):
        merge_shards(tmp_path)


@pytest.mark.parametrize("spec, expected", [("0/1", (0, 1)), ("3/4", (3, 4)), (" 1/2 ", (1, 2))])
def test_parse_shard(spec: str, expected: tuple[int, int]) -> None:
    assert parse_shard(spec) == expected


@pytest.mark.parametrize("spec", ["2/2", "1/0", "-1/2", "a/b", "1", "0/1000000", "1/2/3"])
def test_parse_shard_rejects(spec: str) -> None:
    with pytest.raises(VGSError, match="--shard"):
        parse_shard(spec)


def test_cli_rejects_bad_shard_and_merge_arguments(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from vgs.cli import main

    assert main(["index", str(tmp_path / "run"), "--out", str(tmp_path / "o"), "--merge", "--shard", "0/2"]) == 1
    assert "error" in capsys.readouterr().err
