"""``vgs reproduce``: the paper's Table 1 grid, trained and evaluated under one time budget.

Rows: image encoder x audio encoder ({vgg16, vgg19, resnet50, efficientnet-lite0} x
{conv5, conv6, lstm, gru}); each trained with the paper's recipe (``--recipe paper``:
Adam 1e-4, batch 4, sampled-impostor hinge with margin 1, MISA) or ours (``--recipe
ours``), then scored with the ``pairs100`` protocol beside the same architecture
untrained (the paper's "(R)" rows).  Where ImageNet weights for a trunk are not
available (offline, no ``--image-weights``) the row trains from random
initialisation and says so.  Writes ``table.md``, ``table.csv`` and ``results.json``;
finished cells are skipped when the command is re-run.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

from .api import evaluate_run
from .config import Config, apply_preset, set_value
from .errors import VGSError
from .io import write_json, write_text

IMAGE_ENCODERS = ("vgg16", "vgg19", "resnet50", "efficientnet-lite0")
AUDIO_ENCODERS = ("conv5", "conv6", "lstm", "gru")

# What the seed paper reports on its 100 validation pairs (speech -> image P@1/P@5/P@10).
# Only the figures quoted in our source are filled in; None = not given there.
PAPER = {
    ("vgg19", "conv6"): {"p1": 0.16, "p5": 0.46, "p10": None},
    ("vgg16", "conv5"): {"p1": None, "p5": None, "p10": 0.76},
    ("vgg16", "lstm"): {"p1": None, "p5": None, "p10": 0.23},
    ("vgg16", "gru"): {"p1": "no result", "p5": "no result", "p10": "no result"},
}
PAPER_UNTRAINED = {"p1": 0.05, "p5": 0.14, "p10": 0.30}


@dataclass
class GridOptions:
    data: Path
    out: Path
    budget_minutes: float = 60.0
    recipe: str = "paper"
    split: str = "dev"
    image_weights: dict[str, str] | None = None  # encoder -> local ImageNet state_dict
    image_encoders: tuple[str, ...] = IMAGE_ENCODERS
    audio_encoders: tuple[str, ...] = AUDIO_ENCODERS
    draws: int = 10


def weights_available(encoder: str, weights_file: str | None) -> bool:
    """True when ImageNet weights for ``encoder`` can be had without training (file, cache, pip or download)."""
    from .models.image import resolve_weights_file

    try:
        return resolve_weights_file(encoder, weights_file).is_file()
    except VGSError:
        return False


def cell_config(options: GridOptions, image: str, audio: str, pretrained: bool, minutes: float) -> Config:
    config = Config(data=str(options.data))
    if options.recipe == "paper":
        apply_preset(config, "paper")
    elif options.recipe != "ours":
        raise VGSError(f"--recipe: expected paper or ours, got {options.recipe!r}")
    set_value(config, "model.image_encoder", image)
    set_value(config, "model.audio_encoder", audio)
    set_value(config, "model.pretrained", pretrained)
    set_value(config, "model.image_weights", (options.image_weights or {}).get(image))
    # A pretrained trunk is kept frozen and its outputs cached (what makes CPU training feasible);
    # a random one must be trained, as the paper's no-pretraining ablation did.
    set_value(config, "model.freeze_trunk", pretrained)
    set_value(config, "train.cache_image_features", pretrained)
    set_value(config, "train.max_minutes", minutes)
    set_value(config, "train.epochs", 1000)  # the budget decides
    set_value(config, "train.eval_split", options.split)
    return config


def run_grid(options: GridOptions) -> list[dict]:
    """Train and evaluate every cell within the budget; return one row per cell."""
    from .train import train

    cells = [(i, a) for i in options.image_encoders for a in options.audio_encoders]
    minutes = options.budget_minutes / max(1, len(cells))
    results_path = options.out / "results.json"
    rows: list[dict] = json.loads(results_path.read_text()) if results_path.exists() else []
    done = {(r["image_encoder"], r["audio_encoder"]) for r in rows}
    for image, audio in cells:
        if (image, audio) in done:
            continue
        pretrained = weights_available(image, (options.image_weights or {}).get(image))
        config = cell_config(options, image, audio, pretrained, minutes)
        run = options.out / f"{image}_{audio}"
        print(f"== {image} + {audio}: {'ImageNet' if pretrained else 'random'} trunk, {minutes:.1f} min")
        started = time.perf_counter()
        resume = (run / "checkpoints" / "last.pt").exists()
        train(config, run, resume=resume)
        trained = evaluate_run(run, split=options.split, draws=options.draws, checkpoint="last")
        untrained = evaluate_run(run, split=options.split, draws=options.draws, untrained=True)
        rows.append({"image_encoder": image, "audio_encoder": audio, "pretrained": pretrained,
                     "minutes": round((time.perf_counter() - started) / 60, 2), "trained": trained, "untrained": untrained})
        write_json(results_path, rows)
    write_tables(rows, options)
    return rows


def _fmt(value: float | str | None) -> str:
    if value is None:
        return "–"
    return value if isinstance(value, str) else f"{value:.2f}"


def table_rows(rows: list[dict]) -> list[dict]:
    out = []
    for row in rows:
        s2i, base = row["trained"]["speech_to_image"], row["untrained"]["speech_to_image"]
        paper = PAPER.get((row["image_encoder"], row["audio_encoder"]), {})
        out.append({
            "image": row["image_encoder"], "audio": row["audio_encoder"],
            "trunk": "ImageNet" if row["pretrained"] else "random init (no ImageNet weights here)",
            "P@1": s2i["r1"]["mean"], "P@5": s2i["r5"]["mean"], "P@10": s2i["r10"]["mean"],
            "I->S P@10": row["trained"]["image_to_speech"]["r10"]["mean"],
            "untrained P@1": base["r1"]["mean"], "untrained P@5": base["r5"]["mean"], "untrained P@10": base["r10"]["mean"],
            "paper P@1": paper.get("p1"), "paper P@5": paper.get("p5"), "paper P@10": paper.get("p10"),
            "minutes": row["minutes"],
        })
    return out


def write_tables(rows: list[dict], options: GridOptions) -> None:
    """``table.md`` (readable) and ``table.csv`` (for analysis)."""
    table = table_rows(rows)
    if not table:
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(table[0]))
    writer.writeheader()
    writer.writerows(table)
    write_text(options.out / "table.csv", buffer.getvalue())
    columns = list(table[0])
    lines = [f"Speech→image P@k (= recall@k) on `{options.split}`, `pairs100` protocol (mean over {options.draws} draws of "
             f"100 pairs), recipe `{options.recipe}`, total budget {options.budget_minutes:g} min. Paper columns: the "
             f"figures quoted from Zhang's Table 1 (– where our source gives none); the paper's untrained baselines "
             f"were {PAPER_UNTRAINED['p1']}/{PAPER_UNTRAINED['p5']}/{PAPER_UNTRAINED['p10']}.", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in table:
        lines.append("| " + " | ".join(_fmt(row[c]) if c not in ("image", "audio", "trunk") else str(row[c]) for c in columns) + " |")
    write_text(options.out / "table.md", "\n".join(lines) + "\n")
