"""``vgs demo``: prepare -> train -> evaluate on the built-in scenes, ending in ``report.html``.

The report holds the recall table against the untrained baseline, training curves,
a few retrievals, a few localization maps and the pointing-game score, with its PNGs
beside it.  Every step reuses what an earlier (interrupted) demo already finished.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .api import Model, open_evaluation
from .evaluate import EncodedSplit, format_table
from .io import write_json, write_text


@dataclass
class DemoOptions:
    """What the demo builds and how long it trains."""

    out: Path
    data: Path | None = None  # default: OUT/data
    images: int | None = None  # scenes training images (default: the built-in size)
    epochs: int | None = None
    seed: int = 0
    workers: int = 2


def retrieval_examples(model: Model, dataset, encoded: EncodedSplit, out: Path, queries: int = 4, k: int = 5) -> Path:  # noqa: ANN001
    """A grid of speech->image retrievals: each query's text and spectrogram, its top-k images, the right one marked."""
    from .images import load_image
    from .plots import retrieval_grid

    rng = np.random.default_rng(0)
    picks = rng.choice(len(encoded.caption_ids), size=min(queries, len(encoded.caption_ids)), replace=False)
    sim = model.scores(encoded.images, encoded.audio.select(torch.as_tensor(picks)))  # N x q
    rows_by_id = {row["id"]: row for row in dataset.rows}
    image_paths = {row["image_id"]: row["image"] for row in dataset.rows}
    entries = []
    for column, caption in enumerate(picks.tolist()):
        row = rows_by_id[encoded.caption_ids[caption]]
        top = torch.argsort(sim[:, column], descending=True)[:k].tolist()
        truth = int(encoded.caption_image[caption])
        entries.append({
            "label": row.get("text") or row["id"],
            "spectrogram": dataset.audio.get(row["id"]).astype(np.float32).T,
            "images": [np.asarray(load_image(dataset.root / image_paths[encoded.image_ids[i]])) for i in top],
            "correct": [i == truth for i in top],
            "scores": [float(sim[i, column]) for i in top],
        })
    return retrieval_grid(entries, out)


def localization_examples(model: Model, manifest, out_dir: Path, count: int = 3) -> list[dict]:  # noqa: ANN001
    """Overlays for a few captions with word times; returns the records of the PNGs."""
    from .localize import localize

    rows = [r for r in manifest.rows if r.get("words")][:count]
    records = []
    for row in rows:
        folder = out_dir / f"localize-{row['id'].replace('#', '_')}"
        words = [w for w in row["words"] if "object" in w] or row["words"]
        recs = localize(model, manifest.image_path(row), manifest.audio_path(row), folder, words=words)
        records.append({"id": row["id"], "text": row.get("text", ""), "pngs": [r["png"] for r in recs]})
    return records


def _table_html(results: dict[str, dict]) -> str:
    head = "<tr><th>model</th><th>protocol</th>" + "".join(
        f"<th>{d} R@{k}</th>" for d in ("S→I", "I→S") for k in (1, 5, 10)) + "</tr>"
    body = ""
    for label, result in results.items():
        cells = ""
        for direction in ("speech_to_image", "image_to_speech"):
            for key in ("r1", "r5", "r10"):
                value = result[direction][key]
                cells += f"<td>{value['mean']:.3f} ± {value['std']:.3f}</td>" if isinstance(value, dict) else f"<td>{value:.3f}</td>"
        body += f"<tr><td>{html.escape(label)}</td><td>{result['protocol']}</td>{cells}</tr>"
    return f"<table>{head}{body}</table>"


def embedded_image(path: Path, css_class: str = "", alt: str | None = None) -> str:
    """An ``<img>`` holding the PNG itself (base64), so the page can be mailed or attached on its own."""
    import base64

    data = base64.b64encode(path.read_bytes()).decode("ascii")
    klass = f' class="{css_class}"' if css_class else ""
    return f'<img{klass} src="data:image/png;base64,{data}" alt="{html.escape(alt or path.name)}">'


def write_report(out: Path, results: dict[str, dict], pointing: dict | None, pointing_random: float | None,
                 localization: list[dict], config_text: str, minutes: float) -> Path:
    """Assemble one self-contained ``report.html``: the PNGs beside it are embedded as data URIs."""
    def img(name: str) -> str:
        return embedded_image(out / name) if (out / name).exists() else ""

    loc_html = ""
    for record in localization:
        pngs = "".join(embedded_image(Path(p), "small", str(Path(p).relative_to(out))) for p in record["pngs"])
        loc_html += f"<h4>{html.escape(record['text'])}</h4><div>{pngs}</div>"
    pointing_html = ""
    if pointing:
        pointing_html = (f"<p>Pointing game (test split): <b>{pointing['pointing_game']:.3f}</b> of {pointing['object_words']} "
                         f"object words have their heatmap peak inside the named object; a random map scores "
                         f"{pointing['random_baseline']:.3f}.</p>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>vgs demo report</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
img{{max-width:100%}}img.small{{width:220px;margin:2px}}pre{{background:#f6f6f6;padding:1em;overflow:auto}}</style></head><body>
<h1>vgs demo: spoken captions ↔ images on the built-in scenes</h1>
<p>Trained in {minutes:.1f} minutes on this machine. Recall on the test split; <code>pairs100</code> is the paper's protocol
(100 image/caption pairs, mean ± std over 10 draws), <code>full</code> ranks every test image against every test caption.</p>
<h2>Recall against the untrained baseline</h2>{_table_html(results)}
{img("recall.png")}
<h2>Training curves</h2>{img("curves.png")}
<h2>Retrievals (speech → image)</h2><p>Each row: a spoken query (its spectrogram and text), then the top images; the right one is framed green.</p>
{img("retrievals.png")}
<h2>Localization</h2>{pointing_html}{loc_html}
<h2>Configuration</h2><pre>{html.escape(config_text)}</pre>
</body></html>"""
    write_text(out / "report.html", page)
    return out / "report.html"


def run_demo(options: DemoOptions) -> Path:
    """Build the scenes data (if needed), train (resuming), evaluate, and write the report."""
    from .config import Config, apply_preset, set_value
    from .data.build import exit_status
    from .data.manifest import load_split
    from .data.scenes import ScenesConfig, build_scenes
    from .localize import pointing_game
    from .plots import recall_vs_baseline, training_curves
    from .train import train

    out = options.out
    data = options.data or out / "data"
    print(f"[1/4] data: built-in scenes -> {data}")
    sizes = {}
    if options.images:  # a smaller demo: dev and test shrink with it
        sizes = {"images": options.images, "dev_images": max(20, options.images // 10), "test_images": max(20, options.images // 10)}
    scenes = ScenesConfig(seed=options.seed, **sizes)
    _, report = build_scenes(scenes, data, workers=options.workers)
    if exit_status(report):
        print(report.summary())
    run = out / "run"
    config = Config(data=str(data))
    apply_preset(config, "scenes")
    set_value(config, "train.seed", options.seed)
    if options.epochs:
        set_value(config, "train.epochs", options.epochs)
    resume = (run / "checkpoints" / "last.pt").exists()
    print(f"[2/4] train -> {run}" + (" (resuming)" if resume else ""))
    state = train(config, run, resume=resume)
    print("[3/4] evaluate on the test split")
    trained = open_evaluation(run, split="test")
    untrained = open_evaluation(run, split="test", untrained=True)
    results = {
        "trained": trained.score("pairs100"),
        "untrained": untrained.score("pairs100"),
        "trained (full)": trained.score("full"),
    }
    print(format_table(results))
    model = trained.model
    pointing = pointing_game(model, load_split(data, "test")).to_dict()
    untrained_pointing = pointing_game(untrained.model, load_split(data, "test")).to_dict()  # the model scored above
    pointing["untrained"] = untrained_pointing["pointing_game"]
    print(f"pointing game: {pointing['pointing_game']:.3f} (untrained {pointing['untrained']:.3f}, "
          f"random map {pointing['random_baseline']:.3f})")
    print("[4/4] report")
    training_curves(run / "metrics.csv", out / "curves.png")
    recall_vs_baseline(results["trained"], results["untrained"], out / "recall.png", "test recall, 100 pairs")
    retrieval_examples(model, trained.dataset, trained.encoded, out / "retrievals.png")
    localization = localization_examples(model, load_split(data, "test"), out)
    write_json(out / "results.json", {"recall": results, "localization": pointing, "minutes": state.minutes})
    config_text = (run / "config.yaml").read_text()
    path = write_report(out, results, pointing, None, localization, config_text, state.minutes)
    print(f"report: {path}")
    return path


__all__ = ["DemoOptions", "run_demo", "write_report", "retrieval_examples", "localization_examples"]
