"""Cross-voice evaluation: one run scored on the same images with captions in other voices.

A model's figure on its own training synthesizer says little about a new voice.  This scores a
run on several data sets that share images and caption texts but differ in who speaks and how
(``vgs prepare respeak``: other engines, unseen voices, noise, reverberation, speed), and gives
one row per set.  The images are encoded once and reused across sets.

>>> rows = cross_voice("runs/f8k", {"in-pool": "data/f8k", "festival": "data/f8k_festival"}, split="dev")
>>> print(format_cross_voice(rows))
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from .api import load
from .data.pipeline import open_split
from .errors import VGSError
from .evaluate import encode_split, full_protocol, pairs_protocol

PROTOCOLS = ("pairs100", "full")


def parse_sets(entries: list[str]) -> dict[str, Path]:
    """``["NAME=DIR", ...]`` -> ``{NAME: DIR}`` (a bare DIR is named after its folder)."""
    sets: dict[str, Path] = {}
    for entry in entries:
        name, eq, folder = entry.partition("=")
        name, folder = (name.strip(), folder.strip()) if eq else (Path(entry).name, entry)
        if not name or not folder:
            raise VGSError(f"--set {entry!r}: expected NAME=DATA_DIR")
        if name in sets:
            raise VGSError(f"--set {entry!r}: the name {name!r} is used twice")
        sets[name] = Path(folder)
    if not sets:
        raise VGSError("give at least one --set NAME=DATA_DIR")
    return sets


@torch.no_grad()
def cross_voice(run: str | Path, sets: dict[str, str | Path], split: str = "dev", protocols: tuple[str, ...] = PROTOCOLS,
                draws: int = 10, seed: int = 0, checkpoint: str = "best", device: str | None = None,
                progress: bool = True) -> list[dict]:
    """Score ``run`` on ``split`` of every data set in ``sets``; one result row per set, in order.

    Each row: ``{"set", "data", "captions", "images", "pairs100": {...}, "full": {...}}`` with the
    usual protocol results (see :mod:`vgs.evaluate`).
    """
    for protocol in protocols:
        if protocol not in PROTOCOLS:
            raise VGSError(f"--protocol: expected some of {', '.join(PROTOCOLS)}, got {protocol!r}")
    model = load(run, checkpoint, device)
    images = None
    rows = []
    for name, data in sets.items():
        config = copy.deepcopy(model.config)
        config.data = str(data)
        dataset = open_split(config, split, model.net.image, device=str(model.device), progress=progress, images=images)
        images = dataset.images
        encoded = encode_split(model.net, dataset, device=str(model.device), progress=progress)
        row = {"set": name, "data": str(data), "captions": len(encoded.caption_ids), "images": len(encoded.image_ids)}
        for protocol in protocols:
            row[protocol] = (pairs_protocol(encoded, model.net, draws=draws, seed=seed) if protocol == "pairs100"
                             else full_protocol(encoded, model.net))
        rows.append(row)
    return rows


def _cell(result: dict, direction: str, key: str = "r10") -> str:
    value = result[direction][key]
    return f"{value['mean']:.3f}" if isinstance(value, dict) else f"{value:.3f}"


def format_cross_voice(rows: list[dict], reference: str | None = None) -> str:
    """A Markdown table: one row per set, S->I and I->S R@10 per protocol, and the ratio of
    ``pairs100`` S->I R@10 to the ``reference`` set's (default: the first row)."""
    protocols = [p for p in PROTOCOLS if rows and p in rows[0]]
    head = ["set", "captions"] + [f"{p} {d} R@10" for p in protocols for d in ("S->I", "I->S")]
    base = next((r for r in rows if r["set"] == reference), rows[0] if rows else None)
    if "pairs100" in protocols:
        head.append(f"pairs100 S->I vs {base['set']}")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["set"], str(row["captions"])]
        cells += [_cell(row[p], d) for p in protocols for d in ("speech_to_image", "image_to_speech")]
        if "pairs100" in protocols:
            ours = row["pairs100"]["speech_to_image"]["r10"]["mean"]
            theirs = base["pairs100"]["speech_to_image"]["r10"]["mean"]
            cells.append(f"{ours / theirs:.2f}x" if theirs else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
