"""Benchmark the training matchmap's backward: MISA's sparse backward (vgs.similarity.RegionMax) against
autograd through ``amax``, at the shapes of the CPU training recipes.

    python benchmarks/bench_misa_backward.py [--quick] [--repeats 7]

A training step scores a batch of ``B`` images (``D x R`` regions) against its ``B`` captions
(``sum(T')`` real frames) and back-propagates through ``B x B`` similarities.  For each shape, side
by side in each repeat: ``similarity_matrix`` forward + backward with the sparse backward (the
library's CPU path), and the same forward with autograd's dense ``amax`` backward (what the library did
before).  The two gradients are compared.  Shapes: the Flickr8k recipe (B 128, D 512, 7 x 7 regions,
about 14 frames a caption), the demo's scenes preset (B 64, D 256, 10 x 10 regions, about 12) and the
shipped model's recipe (B 256 in bfloat16, D 512, 7 x 7 regions, about 34 frames of 160 ms).
Ends with one ``RESULT`` line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from unittest import mock

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_share_line, interleaved, machine_line, median, ratios, result_line, spread, table  # noqa: E402

from vgs import similarity  # noqa: E402

SHAPES = {"flickr8k": dict(b=128, d=512, r=49, t=14), "scenes": dict(b=64, d=256, r=100, t=12),
          "shipped_bf16": dict(b=256, d=512, r=49, t=34, dtype=torch.bfloat16)}


def inputs(b: int, d: int, r: int, t: int, seed: int = 0,
           dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L2-normalized ``B x D x R`` regions and ``B x D x T`` frames with lengths drawn in 0.6-1.4 T."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(int(0.6 * t), int(1.4 * t) + 1, (b,), generator=g)
    regions = F.normalize(torch.randn(b, d, r, generator=g), dim=1)
    frames = F.normalize(torch.randn(b, d, int(lengths.max()), generator=g), dim=1)
    return regions.to(dtype), frames.to(dtype), lengths


def step(regions: torch.Tensor, frames: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward of a weighted sum of the ``B x B`` MISA matrix; returns both gradients."""
    regions, frames = regions.clone().requires_grad_(True), frames.clone().requires_grad_(True)
    weights = torch.linspace(-1, 1, regions.shape[0] ** 2).view(regions.shape[0], -1)
    (similarity.similarity_matrix(regions, frames, lengths) * weights).sum().backward()
    return regions.grad, frames.grad


def dense_step(regions: torch.Tensor, frames: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same with autograd's dense amax backward."""
    with mock.patch.object(similarity, "_region_max", lambda chunk, f: similarity._scores(chunk, f).amax(dim=2)):
        return step(regions, frames, lengths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    repeats = 3 if args.quick else args.repeats
    print(machine_line())
    rows, out = [], {}
    for name, shape in SHAPES.items():
        data = inputs(**shape)
        sparse_grads, dense_grads = step(*data), dense_step(*data)
        error = max(float((a.float() - b.float()).abs().max() / b.float().abs().max()) for a, b in zip(sparse_grads, dense_grads))
        times = interleaved({"sparse": lambda: step(*data), "dense": lambda: dense_step(*data)}, repeats)
        speedup = median(ratios(times["dense"], times["sparse"]))
        rows.append([name, f"{shape['b']} x {shape['b']}, R={shape['r']}, D={shape['d']}, {str(data[0].dtype)[6:]}", spread(times["sparse"]),
                     spread(times["dense"]), f"{speedup:.2f}x", f"{error:.1e}"])
        out[f"{name}_speedup"] = speedup
        out[f"{name}_grad_rel_error"] = error
    print(table(["shape", "B x B pairs", "sparse backward", "dense amax backward", "dense / sparse", "max grad diff / max"], rows))
    print(cpu_share_line())
    print(result_line(out))


if __name__ == "__main__":
    main()
