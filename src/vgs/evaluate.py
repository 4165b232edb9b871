"""Retrieval evaluation: recall@k (the paper's P@k) in both directions.

Protocols:

* ``pairs100`` (the paper's): draw 100 pairs with a seed (one caption per image, all
  images distinct), score the 100 x 100 matrix, repeat over ``draws`` draws; report
  mean and std.
* ``full`` (FaST-VGS / SpeechCLIP on Flickr8k): every image against every caption.
  Speech->image is right when the caption's image is in the top k; image->speech
  when any of the image's captions is.  Median ranks are reported too.

Ties are broken at random in expectation (an untrained model that scores everything
equal gets chance recall, not perfect recall).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from .progress import tqdm

from .data.loader import BucketBatchSampler, PairDataset, collate
from .models.dual import DualEncoder
from .similarity import PackedFrames

KS = (1, 5, 10)


@dataclass
class EncodedSplit:
    """Embeddings of a split: ``images`` ``N x D x H x W``, ``audio`` packed frames of ``M`` captions,
    ``caption_image`` ``M`` (index of each caption's image in ``images``)."""

    images: torch.Tensor
    image_ids: list[str]
    audio: PackedFrames
    caption_image: torch.Tensor
    caption_ids: list[str]


@torch.no_grad()
def encode_split(model: DualEncoder, dataset: PairDataset, batch_size: int = 64, device: str = "cpu",
                 max_images: int | None = None, progress: bool = True) -> EncodedSplit:
    """Encode every image once and every caption of ``dataset`` (optionally only the first ``max_images`` images)."""
    model.eval()
    keep = np.arange(len(dataset))
    n_images = len(dataset.image_ids) if max_images is None else min(max_images, len(dataset.image_ids))
    keep = keep[dataset.image_index < n_images]
    image_rows = {}
    for i in keep:
        image_rows.setdefault(int(dataset.image_index[i]), int(i))
    image_embeddings = []
    order = sorted(image_rows)
    for b0 in tqdm(range(0, len(order), batch_size), desc="encode images", disable=not progress, leave=False):
        pixels = torch.stack([dataset.images.get(dataset.rows[image_rows[k]]["image_id"]) for k in order[b0: b0 + batch_size]])
        pixels = pixels.float().to(device)
        emb = model.encode_image_features(pixels) if dataset.images.is_features else model.encode_images(pixels)
        image_embeddings.append(emb.float().cpu())
    sampler = BucketBatchSampler(dataset.lengths()[keep], batch_size, drop_last=False)
    parts, caption_order = [], []
    for batch_positions in tqdm(list(sampler.all_batches()), desc="encode audio", disable=not progress, leave=False):
        rows = keep[batch_positions]
        batch = collate([{"audio": dataset.audio[int(dataset.audio_rows[i])], "image": torch.zeros(1),
                          "image_index": 0, "index": int(i)} for i in rows], multiple=model.audio.downsample)
        emb, out_lengths = model.encode_audio(batch.audio.to(device), batch.lengths.to(device))
        parts.append(PackedFrames.from_padded(emb.float().cpu(), out_lengths.cpu()))
        caption_order.extend(int(i) for i in rows)
    audio = PackedFrames.cat(parts)
    return EncodedSplit(
        images=torch.cat(image_embeddings),
        image_ids=[dataset.image_ids[k] for k in order],
        audio=audio,
        caption_image=torch.tensor([int(dataset.image_index[i]) for i in caption_order]),
        caption_ids=[dataset.rows[i]["id"] for i in caption_order],
    )


def _recall_from_counts(greater: torch.Tensor, ties: torch.Tensor, ks: tuple[int, ...]) -> dict[str, float]:
    """Expected recall@k under random tie-breaking, given counts of strictly better and equally scored distractors."""
    out = {}
    for k in ks:
        hit = ((k - greater.float()) / (ties.float() + 1)).clamp(0, 1)
        out[f"r{k}"] = float(hit.mean())
    return out


def speech_to_image(sim: torch.Tensor, caption_image: torch.Tensor, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """``sim`` ``N x M`` (images x captions); ``caption_image`` ``M``. Recall@k and median rank of the true image."""
    true = sim[caption_image, torch.arange(sim.shape[1])]  # M
    greater = (sim > true[None, :]).sum(0)
    ties = (sim == true[None, :]).sum(0) - 1
    out = _recall_from_counts(greater, ties, ks)
    out["median_rank"] = float(np.median((greater.float() + ties.float() / 2 + 1).numpy()))
    return out


def image_to_speech(sim: torch.Tensor, caption_image: torch.Tensor, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """Recall@k: any of the image's own captions within the top k. Median rank of its best caption."""
    own = caption_image[None, :] == torch.arange(sim.shape[0])[:, None]  # N x M
    best = sim.masked_fill(~own, float("-inf")).amax(1)  # N: best own score
    greater = ((sim > best[:, None]) & ~own).sum(1)
    ties_other = ((sim == best[:, None]) & ~own).sum(1)
    ties_own = ((sim == best[:, None]) & own).sum(1).clamp_min(1)
    out = {}
    for k in ks:
        slots = (k - greater).clamp_min(0)  # positions left inside the top k when the tie block starts
        # P(first own caption among the shuffled tie block lands within `slots`) = 1 - C(e, s) / C(e + o, s)
        e, o = ties_other.double(), ties_own.double()
        s = slots.double().clamp_max(e + 1)
        log_miss = (torch.lgamma(e + 1) - torch.lgamma(e - s + 1) - torch.lgamma(e + o + 1) + torch.lgamma(e + o - s + 1))
        miss = torch.where(s > e, torch.zeros_like(e), log_miss.exp())
        out[f"r{k}"] = float((1 - miss).where(slots > 0, torch.zeros_like(miss)).mean())
    out["median_rank"] = float(np.median((greater.float() + ties_other.float() / (ties_own.float() + 1) + 1).numpy()))
    return out


def draw_pairs(caption_image: torch.Tensor, n_pairs: int, seed: int) -> torch.Tensor:
    """Indices of ``n_pairs`` captions with distinct images (one caption per drawn image)."""
    rng = np.random.default_rng(seed)
    images = np.unique(caption_image.numpy())
    chosen = rng.choice(images, size=min(n_pairs, len(images)), replace=False)
    by_image: dict[int, list[int]] = {}
    for j, image in enumerate(caption_image.tolist()):
        by_image.setdefault(image, []).append(j)
    return torch.tensor([int(rng.choice(by_image[int(i)])) for i in chosen])


def pairs_protocol(encoded: EncodedSplit, model: DualEncoder, n_pairs: int = 100, draws: int = 10, seed: int = 0) -> dict:
    """The paper's protocol: mean and std over ``draws`` draws of ``n_pairs`` pairs.  Images rank captions
    by :meth:`DualEncoder.caption_scores`, captions rank images by :meth:`DualEncoder.similarity`."""
    picks = [draw_pairs(encoded.caption_image, n_pairs, seed * 1000 + d) for d in range(draws)]
    captions = torch.unique(torch.cat(picks))
    images = torch.unique(encoded.caption_image[captions])
    sim, caption_sim = _both_ways(model, encoded.images[images], encoded.audio.select(captions))
    image_pos = torch.full((len(encoded.images),), -1, dtype=torch.long)
    image_pos[images] = torch.arange(len(images))
    caption_pos = torch.full((len(encoded.caption_image),), -1, dtype=torch.long)
    caption_pos[captions] = torch.arange(len(captions))
    results: dict[str, list[dict]] = {"speech_to_image": [], "image_to_speech": []}
    for pick in picks:
        rows, columns = image_pos[encoded.caption_image[pick]], caption_pos[pick]  # n x n, truth on the diagonal
        diagonal = torch.arange(len(pick))
        results["speech_to_image"].append(speech_to_image(sim[rows][:, columns], diagonal))
        results["image_to_speech"].append(image_to_speech(caption_sim[rows][:, columns], diagonal))
    out: dict[str, Any] = {"protocol": f"pairs{n_pairs}", "pairs": int(len(picks[0])), "draws": draws}
    for direction, rows in results.items():
        out[direction] = {key: {"mean": float(np.mean([r[key] for r in rows])), "std": float(np.std([r[key] for r in rows]))}
                          for key in ("r1", "r5", "r10")}
    return out


def full_protocol(encoded: EncodedSplit, model: DualEncoder) -> dict:
    """Every image against every caption (images rank captions as in :func:`pairs_protocol`)."""
    sim, caption_sim = _both_ways(model, encoded.images, encoded.audio)
    return {"protocol": "full", "images": int(sim.shape[0]), "captions": int(sim.shape[1]),
            "speech_to_image": speech_to_image(sim, encoded.caption_image),
            "image_to_speech": image_to_speech(caption_sim, encoded.caption_image)}


def _both_ways(model: DualEncoder, images: torch.Tensor, audio: PackedFrames) -> tuple[torch.Tensor, torch.Tensor]:
    """``N x M`` scores that rank images for a caption, and ``N x M`` that rank captions for an image (the
    same tensor unless the model adds SIMA to the latter), on the CPU."""
    sim = model.similarity(images, audio)
    return sim.cpu(), model.caption_scores(images, audio, sim).cpu()


def mean_recall(result: dict) -> float:
    """One number for model selection: the mean of R@1/5/10 over both directions."""
    values = []
    for direction in ("speech_to_image", "image_to_speech"):
        for key in ("r1", "r5", "r10"):
            value = result[direction][key]
            values.append(value["mean"] if isinstance(value, dict) else value)
    return float(np.mean(values))


def format_table(results: dict[str, dict]) -> str:
    """A readable Markdown table of one or more results, keyed by row label."""
    lines = ["| model | protocol | S->I R@1 | R@5 | R@10 | I->S R@1 | R@5 | R@10 |", "|---|---|---|---|---|---|---|---|"]
    for label, result in results.items():
        cells = []
        for direction in ("speech_to_image", "image_to_speech"):
            for key in ("r1", "r5", "r10"):
                value = result[direction][key]
                cells.append(f"{value['mean']:.3f} ± {value['std']:.3f}" if isinstance(value, dict) else f"{value:.3f}")
        lines.append(f"| {label} | {result['protocol']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def dumps(result: dict) -> str:
    return json.dumps(result, indent=2)
