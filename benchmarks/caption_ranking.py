"""How images should rank spoken captions: MISA plus a share of SIMA (docs/results.md, "Ranking captions both
ways"; ``model.image_to_speech_sima``).

    python benchmarks/caption_ranking.py flickr8k data/f8k-q --split dev --weights 0,0.25,0.5,0.75,1,1.5
    python benchmarks/caption_ranking.py flickr8k data/f8k-tsub --split dev   # a data set of train images: where the weight is chosen

MISA (``mean_t max_r``) asks how well the image covers each of the caption's frames; SIMA (``mean_r max_t``) how
well the caption covers each of the image's regions.  A model trained with MISA ranks images for a caption
well, but ranking captions for an image by MISA alone favours captions whose every word matches something in
the photo, however little of it they describe.  The split is encoded once; each weight ``w`` scores
``MISA + w SIMA`` (the model's own ``image_to_speech_sima`` ignored) and prints ``pairs100`` (10 draws) and
``full`` recall in both directions: speech -> image with the same scores, for comparison, though the library
ranks images by MISA alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from vgs import api
from vgs.evaluate import draw_pairs, image_to_speech, speech_to_image
from vgs.similarity import similarity_matrix


def sweep(run: str | Path, data: str | Path, split: str, weights: list[float], draws: int = 10) -> dict[float, dict]:
    """``{w: {"pairs100": {"s2i": [r1, r5, r10], "i2s": [...]}, "full": {"s2i": [...], "i2s": [...]}}}`` and
    the table on stdout."""
    encoded = api.open_evaluation(run, data=data, split=split, progress=sys.stderr.isatty()).encoded
    misa, sima = (similarity_matrix(encoded.images, encoded.audio, kind=kind) for kind in ("misa", "sima"))
    truth = encoded.caption_image
    picks = [draw_pairs(truth, 100, d) for d in range(draws)]  # pairs_protocol's draws for seed 0
    out: dict[float, dict] = {}
    print(f"{len(encoded.images)} images x {len(truth)} captions ({split} of {data})")
    print("weight | pairs100 S->I R@1 / R@5 / R@10 | I->S R@1 / R@5 / R@10 | full S->I R@10 (median rank) | I->S R@10 (median rank)")
    for w in weights:
        scores = misa + w * sima
        rows: dict[str, list[dict]] = {"s2i": [], "i2s": []}
        for pick in picks:
            sub, diagonal = scores[truth[pick]][:, pick], torch.arange(len(pick))
            rows["s2i"].append(speech_to_image(sub, diagonal))
            rows["i2s"].append(image_to_speech(sub, diagonal))
        pairs = {d: [float(np.mean([r[f"r{k}"] for r in rs])) for k in (1, 5, 10)] for d, rs in rows.items()}
        full = {"s2i": speech_to_image(scores, truth), "i2s": image_to_speech(scores, truth)}
        out[w] = {"pairs100": pairs, "full": {d: [full[d][f"r{k}"] for k in (1, 5, 10)] + [full[d]["median_rank"]] for d in full}}
        print(f"{w:g} | " + " | ".join(" / ".join(f"{v:.3f}" for v in pairs[d]) for d in ("s2i", "i2s")) + " | "
              + " | ".join(f"{full[d]['r10']:.3f} ({full[d]['median_rank']:g})" for d in ("s2i", "i2s")), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run folder, exported model or shipped model's name")
    parser.add_argument("data", type=Path, help="a built data set folder")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--weights", default="0,0.25,0.5,0.75,1,1.5", help="SIMA weights, comma separated")
    parser.add_argument("--draws", type=int, default=10)
    args = parser.parse_args()
    weights = [float(w) for w in args.weights.split(",") if w]
    if not weights or any(not 0 <= w <= 10 for w in weights):
        parser.error(f"--weights: expected weights in 0..10, got {args.weights!r}")
    if not 1 <= args.draws <= 1000:
        parser.error(f"--draws: expected 1..1000, got {args.draws}")
    sweep(args.run, args.data, args.split, weights, args.draws)


if __name__ == "__main__":
    main()
