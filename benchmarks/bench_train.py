"""Benchmark training throughput (pairs/s), FLOP utilisation and data-loader overhead, for two configurations.

    python benchmarks/bench_train.py [--quick] DATA_DIR [--steps 5]

* paper: VGG16 trunk trained end to end + conv5 audio net, 224 px images, audio padded to
  1024 frames (DAVEnet), batch 4, Adam, sampled-impostor hinge loss (``--preset paper``).
  ImageNet weights are not needed to time it, so the trunk starts from random weights.
* CPU default: frozen EfficientNet-Lite0 with cached trunk features + resdavenet, D=512,
  audio_channels=256, batch 128 with length bucketing, InfoNCE (``vgs train`` defaults
  with ``--set model.embed_dim=512 --set model.audio_channels=256``).

Each configuration is a real ``vgs.train.Trainer`` on a temporary data set made of the first
images of DATA_DIR's ``train.jsonl`` and their captions (its caches are built in the temporary
folder, so DATA_DIR is never written), and every step is ``Trainer.train_step`` (forward,
loss, backward, clipping, optimizer).  Model FLOPs per pair are counted with
``torch.utils.flop_counter.FlopCounterMode`` over one step (matmuls and convolutions, forward
and backward); utilisation = FLOPs per pair x pairs/s / the dense fp32 matmul GFLOP/s measured
right before each timed step.  Loader check (CPU default): each batch is fetched from the
DataLoader exactly as ``Trainer.fit`` builds it and stepped, then stepped again from memory;
the loader's overhead is the time spent waiting for the batch over the in-memory step time.
Ends with one ``RESULT`` line.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_share_line, machine_line, median, result_line, table  # noqa: E402

from vgs.config import Config, apply_preset, set_value  # noqa: E402
from vgs.data.loader import Batch, collate  # noqa: E402
from vgs.data.manifest import load_split  # noqa: E402
from vgs.features import pad_features  # noqa: E402
from vgs.io import write_jsonl  # noqa: E402
from vgs.train import Trainer  # noqa: E402


def subset(data_dir: str, folder: Path, pairs: int) -> None:
    """``folder/train.jsonl``: the first images of DATA_DIR's train split with all their captions (>= ``pairs`` rows)."""
    manifest = load_split(data_dir, "train", strict=False)
    rows, images = [], set()
    for row in manifest.rows:
        if len(rows) >= pairs and row["image_id"] not in images:
            break
        images.add(row["image_id"])
        rows.append(row)
    folder.mkdir(parents=True, exist_ok=True)
    # Manifest paths must be relative and inside the data set: link the top folders they name.
    for top in {Path(row[key]).parts[0] for row in rows for key in ("audio", "image") if len(Path(row[key]).parts) > 1}:
        (folder / top).symlink_to((manifest.root / top).resolve(), target_is_directory=True)
    write_jsonl(folder / "train.jsonl", rows)


def make_trainer(name: str, data_dir: str, tmp: Path, pairs: int) -> tuple[Trainer, float]:
    """A Trainer for configuration ``name`` on a temporary subset. Returns (trainer, seconds to set up)."""
    config = Config()
    if name == "paper":
        apply_preset(config, "paper")
        set_value(config, "model.pretrained", False)  # random trunk weights: same speed, no download
    else:
        set_value(config, "model.embed_dim", 512)
        set_value(config, "model.audio_channels", 256)
    config.data = str(tmp / f"data-{name}")
    subset(data_dir, Path(config.data), pairs)
    start = time.perf_counter()
    trainer = Trainer(config, tmp / f"run-{name}", progress=False)
    return trainer, time.perf_counter() - start


def count_flops(trainer: Trainer, batch: Batch) -> int:
    with FlopCounterMode(display=False) as counter:
        trainer.train_step(batch)
    return int(counter.get_total_flops())


def steps_in_memory(trainer: Trainer, batches: list[Batch], matmul: Matmul | None = None,
                    rates: list[float] | None = None) -> list[float]:
    """Seconds per train_step; with ``matmul``, one matmul measurement right before each step (into ``rates``)."""
    times = []
    for batch in batches:
        if matmul is not None and rates is not None:
            rates.append(matmul())
        start = time.perf_counter()
        trainer.train_step(batch)
        times.append(time.perf_counter() - start)
    return times


def loader_for(trainer: Trainer) -> DataLoader:
    """The DataLoader Trainer.fit builds for epoch 0."""
    t = trainer.config.train
    workers = 0 if trainer.train_set.images.is_features else t.workers
    trainer.sampler.set_epoch(0, 0)
    trainer.train_set.set_epoch(0)
    return DataLoader(trainer.train_set, batch_sampler=trainer.sampler, collate_fn=collate, num_workers=workers,
                      pin_memory=False, generator=torch.Generator().manual_seed(t.seed))


class Matmul:
    """Dense fp32 matmul GFLOP/s (2048^3 torch.mm), measured next to each timed step."""

    def __init__(self, size: int = 2048):
        self.a, self.b, self.c = torch.randn(size, size), torch.randn(size, size), torch.empty(size, size)
        self.size = size
        torch.mm(self.a, self.b, out=self.c)
        self.samples: list[float] = []

    def __call__(self) -> float:
        start = time.perf_counter()
        torch.mm(self.a, self.b, out=self.c)
        self.samples.append(2 * self.size ** 3 / (time.perf_counter() - start) / 1e9)
        return self.samples[-1]


def paper_batch(trainer: Trainer, start: int, size: int) -> Batch:
    """``size`` real pairs with audio zero-padded to 1024 frames, as DAVEnet trains."""
    items = [trainer.train_set[i] for i in range(start, start + size)]
    audio, lengths = pad_features([item["audio"] for item in items], 16)
    audio = F.pad(audio, (0, max(0, 1024 - audio.shape[-1])))[..., :1024]
    images = torch.stack([item["image"] for item in items]).float()
    return Batch(audio, lengths.clamp_max(1024), images, torch.tensor([item["image_index"] for item in items]),
                 torch.tensor([item["index"] for item in items]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", help="data set folder with train.jsonl (e.g. Flickr8k from `vgs prepare`)")
    parser.add_argument("--quick", action="store_true", help="1 timed paper step, 2 CPU-default steps (about a minute)")
    parser.add_argument("--steps", type=int, help="timed steps per configuration (default 5; quick 2)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default, all cores)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps or (2 if args.quick else 5)
    print(machine_line())
    matmul = Matmul()
    tmp = Path(tempfile.mkdtemp(prefix="vgs-bench-train-"))
    rows, out = [], {}
    try:
        # ---------------------------------------------------------------- paper
        paper_steps = 1 if args.quick and not args.steps else steps
        trainer, setup_s = make_trainer("paper", args.data_dir, tmp, 4 * (paper_steps + 1))
        batch_size = trainer.config.train.batch_size
        batches = [paper_batch(trainer, i * batch_size, batch_size) for i in range(paper_steps + 1)]
        trainer.model.train()
        flops = count_flops(trainer, batches[0]) / batch_size  # also the warm-up step
        rates: list[float] = []
        times = steps_in_memory(trainer, batches[1:], matmul, rates)
        paper_rate = batch_size / median(times)
        paper_util = median([flops * batch_size / t / 1e9 / r for t, r in zip(times, rates)])
        rows.append(["paper: vgg16 (trained) + conv5, 224 px, 1024 frames", batch_size, f"{median(times):.2f}",
                     f"{paper_rate:.2f}", f"{flops / 1e9:.1f}", f"{flops * paper_rate / 1e9:.0f}", f"{median(rates):.0f}",
                     f"{paper_util:.0%}", f"{setup_s:.0f}"])
        out["paper_pairs_per_s"] = paper_rate
        out["paper_utilisation"] = paper_util
        del trainer, batches
        print("  paper done", file=sys.stderr)

        # ---------------------------------------------------------------- CPU default
        trainer, setup_s = make_trainer("default", args.data_dir, tmp, 128 * (steps + 1) + 64)
        batch_size = trainer.config.train.batch_size
        trainer.model.train()
        loader = iter(loader_for(trainer))
        flops = count_flops(trainer, next(loader)) / batch_size  # also the warm-up step
        fetched, loader_steps, memory_steps, frames, kept = [], [], [], [], []
        rates = []
        for _ in range(steps):  # per batch: through the loader, then the very same batch from memory
            rates.append(matmul())
            start = time.perf_counter()
            batch = next(loader)
            got = time.perf_counter()
            trainer.train_step(batch)
            fetched.append(got - start)
            loader_steps.append(time.perf_counter() - start)
            memory_steps += steps_in_memory(trainer, [batch])
            frames.append(int(batch.audio.shape[-1]))
            kept.append(batch)
        threads = torch.get_num_threads()
        one_thread = []
        if threads > 1:  # the same batches from memory on one thread: how much the other threads help (or hurt)
            torch.set_num_threads(1)
            one_thread = steps_in_memory(trainer, kept)
            torch.set_num_threads(threads)
        with_loader = median(loader_steps)
        in_memory = median(memory_steps)
        end_to_end = median([a / b for a, b in zip(loader_steps, memory_steps)]) - 1
        overhead = median(fetched) / in_memory  # the loader is synchronous here: its cost is the wait for each batch
        default_rate = batch_size / with_loader
        default_util = median([flops * batch_size / t / 1e9 / r for t, r in zip(loader_steps, rates)])
        rows.append([f"CPU default: efficientnet-lite0 (frozen, cached) + resdavenet, D=512, {min(frames)}-{max(frames)} frames",
                     batch_size, f"{with_loader:.2f}", f"{default_rate:.1f}", f"{flops / 1e9:.2f}",
                     f"{flops * default_rate / 1e9:.0f}", f"{median(rates):.0f}", f"{default_util:.0%}", f"{setup_s:.0f}"])
        out["default_pairs_per_s"] = default_rate
        out["default_utilisation"] = default_util
        out["loader_overhead"] = overhead
        loader_line = (f"loader check (CPU default, {steps} batches, each stepped through the DataLoader and then from memory): "
                       f"median step with DataLoader batches {with_loader:.2f} s "
                       f"(of which waiting for the batch {median(fetched) * 1000:.0f} ms), same batches from memory "
                       f"{in_memory:.2f} s; loader overhead = wait / step from memory = {overhead:.1%} (end to end, median of "
                       f"per-batch ratios: {end_to_end:+.1%})")
        if one_thread:
            loader_line += (f"\nthreads: the same batches from memory take {in_memory:.2f} s per step with {threads} threads and "
                            f"{median(one_thread):.2f} s with 1 ({median(one_thread) and in_memory / median(one_thread):.2f}x); "
                            "with other jobs on the cores, extra threads wait for each other at every small op")
            out["default_pairs_per_s_1thread"] = batch_size / median(one_thread)
        print("  default done", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(table(["configuration", "batch", "s/step", "pairs/s", "GFLOP/pair", "GFLOP/s", "matmul GFLOP/s", "utilisation",
                 "setup s"], rows))
    print("(matmul: a dense fp32 2048^3 torch.mm timed right before each step; utilisation = the step's GFLOP/s / that "
          "matmul's, median over steps; FLOPs from FlopCounterMode over one train_step, forward + backward (a frozen, "
          "cached trunk costs none); setup: Trainer on the temporary subset, caches included)")
    print(loader_line)
    print(cpu_share_line())
    print(result_line({**out, "matmul_gflops": median(matmul.samples)}))


if __name__ == "__main__":
    main()
