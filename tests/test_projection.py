"""vgs.projection and `vgs export --embed-dim`: a projection folded into a model's last layers gives exactly the
projected, renormalized embeddings; the fitted projection finds the directions the embeddings use; models
it cannot fold are refused; the exported smaller model loads and scores like the original."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from vgs.api import build_untrained, load
from vgs.config import Config, set_value
from vgs.errors import VGSError
from vgs.projection import fit_projection, fold_projection, output_layers


def small_config(**values) -> Config:  # noqa: ANN003
    config = Config()
    for key, value in {"image.size": 64, "model.embed_dim": 16, "model.audio_channels": 16, **values}.items():
        set_value(config, key, value)
    return config.validate()


@pytest.mark.parametrize("values", [{}, {"model.audio_encoder": "frame-head", "features.kind": "whisper"},
                                    {"model.audio_encoder": "lstm"}, {"model.image_stride": 16}])
def test_a_folded_projection_gives_the_projected_renormalized_embeddings(values: dict) -> None:
    big = build_untrained(small_config(**values))
    projection = torch.linalg.qr(torch.randn(16, 6, generator=torch.Generator().manual_seed(0)))[0].T  # 6 x 16, orthonormal rows
    small = build_untrained(small_config(**values, **{"model.embed_dim": 6}))
    small.net.load_state_dict(fold_projection(big.net, projection))
    big.net.eval(), small.net.eval()
    pixels = torch.rand(3, 3, 64, 64)
    want = F.normalize(torch.einsum("kd,ndhw->nkhw", projection, big.net.encode_images(pixels)), dim=1)
    torch.testing.assert_close(small.net.encode_images(pixels), want, atol=1e-5, rtol=1e-4)
    feats = torch.randn(2, len(big.net.audio.input_norm.mean), 64)
    lengths = torch.tensor([64, 40])
    frames, out_lengths = big.net.encode_audio(feats, lengths)
    got, got_lengths = small.net.encode_audio(feats, lengths)
    assert torch.equal(got_lengths, out_lengths)
    want = F.normalize(torch.einsum("kd,ndt->nkt", projection, frames), dim=1)
    for i, n in enumerate(out_lengths.tolist()):  # real frames only (padding stays zero in both)
        torch.testing.assert_close(got[i, :, :n], want[i, :, :n], atol=1e-5, rtol=1e-4)


def test_the_fitted_projection_spans_the_directions_the_embeddings_use() -> None:
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((20, 4)))[0].T  # 4 x 20: the subspace the data lives in
    regions = torch.from_numpy(rng.standard_normal((3000, 4)) @ basis + 0.01 * rng.standard_normal((3000, 20))).float()
    frames = torch.from_numpy(rng.standard_normal((2000, 4)) @ basis + 0.01 * rng.standard_normal((2000, 20))).float()
    projection = fit_projection(regions, frames, 4, sample=1000)
    assert projection.shape == (4, 20)
    torch.testing.assert_close(projection @ projection.T, torch.eye(4), atol=1e-5, rtol=0)  # orthonormal rows
    inside = torch.from_numpy(basis).float()
    assert torch.linalg.matrix_norm(inside - inside @ projection.T @ projection) < 0.05  # the same subspace
    for bad in (0, 20, 25):
        with pytest.raises(VGSError, match="--embed-dim"):
            fit_projection(regions, frames, bad)


def test_models_a_projection_cannot_fold_into_are_refused() -> None:
    with pytest.raises(VGSError, match="does not end in a linear layer"):
        output_layers(build_untrained(small_config(**{"model.audio_encoder": "conv5"})).net)
    with pytest.raises(VGSError, match="normalize"):
        output_layers(build_untrained(small_config(**{"model.normalize": False})).net)


def test_export_embed_dim_writes_a_smaller_model_that_scores_like_the_run(tiny_run, tiny_scenes, tmp_path, capsys) -> None:  # noqa: ANN001
    from vgs.cli import main
    from vgs.data.manifest import load_split

    assert main(["export", str(tiny_run), "--out", str(tmp_path / "small"), "--embed-dim", "24"]) == 0
    big, small = load(tiny_run, device="cpu"), load(tmp_path / "small", device="cpu")
    assert big.embed_dim == 64 and small.embed_dim == 24
    manifest = load_split(tiny_scenes, "dev", strict=False)
    rows = manifest.rows[:40]
    images = sorted({str(manifest.image_path(row)) for row in rows})
    audio = [str(manifest.audio_path(row)) for row in rows]
    a, b = big.similarity(images, audio).flatten(), small.similarity(images, audio).flatten()
    assert np.corrcoef(a.numpy(), b.numpy())[0, 1] > 0.9  # 24 of 64 dimensions keep the scores' ranking
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "bad"), "--embed-dim", "64"]) == 1  # one-line errors
    assert "--embed-dim: expected 1..63" in capsys.readouterr().err
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "bad"), "--data", str(tiny_scenes)]) == 1
    assert "only used with --embed-dim" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
