"""report.html and its figures: readable, unclipped, self-contained."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import vgs.plots as plots


@pytest.fixture()
def figures(monkeypatch) -> list:
    kept = []

    def keep(fig, path):  # noqa: ANN001
        fig.canvas.draw()
        kept.append(fig)
        return Path(path)

    monkeypatch.setattr(plots, "_save", keep)
    return kept


def _result(value: float, std: float) -> dict:
    return {"protocol": "pairs100", **{d: {k: {"mean": value, "std": std} for k in ("r1", "r5", "r10")}
                                       for d in ("speech_to_image", "image_to_speech")}}


def test_recall_bars_at_one_are_not_clipped_and_the_legend_covers_none(figures, tmp_path) -> None:
    plots.recall_vs_baseline(_result(1.0, 0.05), _result(0.05, 0.02), tmp_path / "recall.png")
    ax = figures[0].axes[0]
    assert ax.get_ylim()[1] >= 1.1  # bars at 1.0, their error bars and labels fit
    legend = ax.get_legend().get_window_extent()
    assert legend.y1 <= ax.get_window_extent().y0  # below the plot, never over a bar


def test_curves_show_loss_and_lr_per_step(tiny_run, figures, tmp_path) -> None:
    steps = plots.step_scalars(tiny_run / "tb")
    assert set(steps) == {"train/loss", "train/lr"}
    plots.training_curves(tiny_run / "metrics.csv", tmp_path / "curves.png")
    loss_ax, lr_ax, recall_ax = figures[0].axes
    assert loss_ax.get_xlabel() == "step" and lr_ax.get_ylabel() == "learning rate"
    epochs = len(plots.read_metrics(tiny_run / "metrics.csv"))
    assert len(loss_ax.lines[0].get_xdata()) > epochs  # more than one point per epoch
    assert recall_ax.get_ylim()[1] > 1.0


def test_heatmaps_have_a_colour_bar_and_one_scale_per_query(tiny_run, tiny_scenes, tmp_path, monkeypatch) -> None:
    import json

    import vgs
    import vgs.localize as localize

    scales = []
    real = localize.save_overlay
    monkeypatch.setattr(localize, "save_overlay", lambda *a, **k: (scales.append(k.get("scale")), real(*a, **k)))
    row = json.loads((tiny_scenes / "test.jsonl").read_text().splitlines()[0])
    records = localize.localize(vgs.load(tiny_run, device="cpu"), tiny_scenes / row["image"], tiny_scenes / row["audio"],
                                tmp_path, words=row["words"])
    assert len({s for s in scales[:-1]}) == 1 and scales[0] is not None and scales[-1] is None
    import matplotlib.image

    assert matplotlib.image.imread(records[0]["png"]).shape[1] > 340  # room for the colour bar
    plots._pyplot()
    fig_axes = []
    monkeypatch.setattr("matplotlib.figure.Figure.savefig", lambda self, *a, **k: fig_axes.append(len(self.axes)))
    real(np.zeros((8, 8, 3), np.uint8), np.random.rand(8, 8), tmp_path / "x.png")
    assert fig_axes == [2]  # the image and its colour bar
