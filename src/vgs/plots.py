"""Matplotlib figures written as PNGs: training curves, recall against the baseline, retrieval grids."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np

from .io import atomic_write


def _pyplot():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:  # noqa: ANN001
    path = Path(path)
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def read_metrics(path: str | Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _column(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(float(r["epoch"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
    return (np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])) if pairs else (np.zeros(0), np.zeros(0))


def step_scalars(tb_dir: str | Path, tags: Sequence[str] = ("train/loss", "train/lr")) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-step scalars from a run's TensorBoard logs: ``tag -> (steps, values)``; empty when none can be read."""
    tb_dir = Path(tb_dir)
    if not tb_dir.is_dir() or not any(tb_dir.glob("events.out.tfevents.*")):
        return {}
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
        events.Reload()
        found = set(events.Tags().get("scalars", []))
        out = {}
        for tag in tags:
            if tag in found:
                points = {e.step: e.value for e in events.Scalars(tag)}  # a resumed run rewrites steps: keep the last
                steps = np.array(sorted(points))
                out[tag] = (steps, np.array([points[s] for s in steps]))
        return out
    except Exception:  # noqa: BLE001 - a broken log only costs the per-step curves
        return {}


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    return np.convolve(np.pad(values, (window // 2, window - 1 - window // 2), mode="edge"), kernel, mode="valid")


def training_curves(metrics_csv: str | Path, out: str | Path, tb_dir: str | Path | None = None) -> Path:
    """Loss per step (raw and smoothed), learning rate per step, and dev recall per epoch.

    Per-step values come from the run's TensorBoard logs (``tb_dir``, default ``tb/`` beside
    ``metrics.csv``); without them the loss is drawn per epoch from ``metrics.csv``.
    """
    plt = _pyplot()
    rows = read_metrics(metrics_csv)
    steps = step_scalars(Path(tb_dir) if tb_dir else Path(metrics_csv).parent / "tb")
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(13, 3.6))
    if "train/loss" in steps:
        x, y = steps["train/loss"]
        left.plot(x, y, color="tab:blue", alpha=0.3, linewidth=0.8, label="per step")
        left.plot(x, _smooth(y, max(1, len(y) // 50)), color="tab:blue", linewidth=1.8, label="smoothed")
        left.legend(loc="upper right", fontsize=8)
        left.set(xlabel="step", ylabel="training loss", title="loss per step")
    else:
        epochs, loss = _column(rows, "train_loss")
        left.plot(epochs, loss, marker="o")
        left.set(xlabel="epoch", ylabel="training loss", title="loss per epoch")
    if "train/lr" in steps:
        x, y = steps["train/lr"]
        middle.plot(x, y, color="tab:orange")
        middle.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        middle.set(xlabel="step", ylabel="learning rate", title="learning rate")
    else:
        middle.text(0.5, 0.5, "no per-step log (tb/)", ha="center", va="center", transform=middle.transAxes)
        middle.set(title="learning rate")
    for key, label in (("dev_s2i_r1", "S→I R@1"), ("dev_s2i_r10", "S→I R@10"), ("dev_i2s_r1", "I→S R@1"), ("dev_i2s_r10", "I→S R@10")):
        x, y = _column(rows, key)
        if len(x):
            right.plot(x, y, marker="o", label=label)
    right.set(xlabel="epoch", ylabel="recall (dev, 100 pairs)", title="dev recall", ylim=(0, 1.02))
    right.xaxis.get_major_locator().set_params(integer=True)
    if right.get_legend_handles_labels()[0]:
        right.legend(loc="best", fontsize=8)
    for ax in (left, middle, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, out)


def recall_vs_baseline(trained: dict, baseline: dict, out: str | Path, title: str = "") -> Path:
    """Grouped bars: recall@1/5/10 in both directions, trained model against the untrained one."""
    plt = _pyplot()
    labels, ours, theirs, ours_err, theirs_err = [], [], [], [], []
    for direction, short in (("speech_to_image", "S→I"), ("image_to_speech", "I→S")):
        for key in ("r1", "r5", "r10"):
            labels.append(f"{short} R@{key[1:]}")
            for values, errors, result in ((ours, ours_err, trained), (theirs, theirs_err, baseline)):
                value = result[direction][key]
                values.append(value["mean"] if isinstance(value, dict) else value)
                errors.append(value["std"] if isinstance(value, dict) else 0.0)
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(8, 3.8))
    bars = ax.bar(x - 0.2, ours, 0.4, yerr=ours_err, label="trained", capsize=3)
    ax.bar(x + 0.2, theirs, 0.4, yerr=theirs_err, label="untrained", capsize=3, color="grey")
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in ours], padding=2, fontsize=8)
    ax.set_xticks(x, labels)
    # headroom above 1.0 so full bars, their error bars and value labels are not clipped
    ax.set(ylim=(0, 1.15), yticks=np.linspace(0, 1, 6), ylabel="recall", title=title or f"recall ({trained.get('protocol', '')})")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False)  # below the axes, never on a bar
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out)


def retrieval_grid(queries: Sequence[dict], out: str | Path) -> Path:
    """Rows of ``{"label": query text, "spectrogram": F x T array or None, "images": [H x W x 3 arrays],
    "correct": [bools], "scores": [floats]}``: the query, then its top-k images, the right one framed green."""
    plt = _pyplot()
    k = max(len(q["images"]) for q in queries)
    fig, axes = plt.subplots(len(queries), k + 1, figsize=(2.0 * (k + 1) + 2.0, 2.2 * len(queries)), squeeze=False)
    for row, query in zip(axes, queries):
        head = row[0]
        if query.get("spectrogram") is not None:
            head.imshow(query["spectrogram"], origin="lower", aspect="auto", cmap="magma")
        head.set_title(_wrap(query["label"]), fontsize=9)
        head.axis("off")
        for ax, image, correct, score in zip(row[1:], query["images"], query["correct"], query["scores"]):
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor("limegreen" if correct else "lightgrey")
                spine.set_linewidth(4 if correct else 1)
            ax.set_title(f"{score:.3f}" + (" ✓" if correct else ""), fontsize=9)
        for ax in row[1 + len(query["images"]):]:
            ax.axis("off")
    fig.tight_layout()
    return _save(fig, out)


def _wrap(text: str, width: int = 28) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if len(line) + len(word) + 1 > width and line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    return "\n".join(lines[:4])
