"""Benchmark the ``full`` retrieval protocol (every image against every caption): encoding and scoring times.

    python benchmarks/bench_eval.py [--quick] DATA_DIR [RUN]       # real data: the first 1,000 dev images, their captions
    python benchmarks/bench_eval.py [--quick] --synthetic [RUN]    # random inputs of realistic shapes

The evaluation is the library's own: ``vgs.evaluate.encode_split`` then ``full_protocol``
(``vgs evaluate --protocol full``), on 1,000 images x 5,000 captions (Flickr8k dev when
DATA_DIR is given).  Each phase is timed from a cold start:

* images: the image trunk on every image (decoding and resizing the JPEGs too, with real
  data; this is the trunk-feature cache a frozen trunk builds once), then the head
  (``encode_split``'s image phase);
* audio: log-mel features of every caption (``build_feature_cache`` with 2 workers into a
  temporary folder, so DATA_DIR is never written; random-noise signals of Flickr8k-like
  durations in synthetic mode), then the audio encoder (``encode_split``'s audio phase,
  including reading the features and padding the batches);
* scoring: ``full_protocol`` (the N x M MISA matrix, then recall in both directions).

The matrix is then computed once more from bf16 embeddings (not part of the totals): its
speed-up, score error, unchanged top-10 sets and recall, against fp32 on the same embeddings
(with a trained RUN this says whether bf16 scoring is safe; untrained models give near-ties).

"warm" adds up what a later evaluation pays once the caches exist (head, encoder, scoring).
Without RUN (or when RUN does not exist yet) the model is an untrained CPU-default one
(frozen efficientnet-lite0 + resdavenet, D=512, audio_channels=256): its speed is a trained
model's speed, its recall is chance.  Ends with one ``RESULT`` line.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_share_line, machine_line, result_line, table  # noqa: E402

from vgs.config import Config  # noqa: E402
from vgs.data.cache import build_feature_cache  # noqa: E402
from vgs.data.loader import CachedImages, ImageFiles, PairDataset  # noqa: E402
from vgs.data.manifest import Manifest, load_split  # noqa: E402
from vgs.data.pipeline import feature_statistics, uses_image_cache  # noqa: E402
from vgs.evaluate import encode_split, full_protocol, image_to_speech, mean_recall, speech_to_image  # noqa: E402
from vgs.features import compute_features  # noqa: E402
from vgs.images import load_image_tensor  # noqa: E402
from vgs.io import write_jsonl  # noqa: E402
from vgs.similarity import PackedFrames  # noqa: E402

GOAL_S = 300.0


def build_model(run: str | None, dim: int, channels: int):  # noqa: ANN201
    """(Model, description): RUN's trained model, or an untrained CPU-default one."""
    from vgs.api import build_untrained, load

    if run and Path(run).exists():
        return load(run, device="cpu"), f"trained run {run}"
    config = Config()
    config.model.embed_dim, config.model.audio_channels = dim, channels
    note = f" (RUN {run} does not exist yet)" if run else ""
    return build_untrained(config, device="cpu"), f"untrained CPU default: efficientnet-lite0 (frozen) + resdavenet, D={dim}, " \
        f"audio_channels={channels}{note}"


class MemoryFeatures:
    """An in-memory stand-in for AudioFeatureStore (synthetic mode)."""

    def __init__(self, ids: list[str], feats: list[np.ndarray]):
        self.ids, self.feats = ids, feats
        self.index = {item: i for i, item in enumerate(ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.feats[i]

    def lengths(self) -> np.ndarray:
        return np.array([len(f) for f in self.feats])


class PhaseClock:
    """Splits encode_split's time into its image phase and its audio phase by wrapping the model's encoders."""

    def __init__(self, net: torch.nn.Module):
        self.last_image = None
        for name in ("encode_images", "encode_image_features"):
            setattr(net, name, self._mark(getattr(net, name)))

    def _mark(self, fn):  # noqa: ANN001, ANN202
        def wrapped(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            out = fn(*args, **kwargs)
            self.last_image = time.perf_counter()
            return out
        return wrapped


def trunk_features(model, images: list, batch_size: int = 32) -> tuple[np.ndarray, float]:  # noqa: ANN001
    """The frozen trunk over ``images`` (paths, or tensors), as build_image_cache does. Returns (features, seconds)."""
    start = time.perf_counter()
    outputs = []
    model.net.image.trunk.eval()
    for b0 in range(0, len(images), batch_size):
        batch = images[b0: b0 + batch_size]
        pixels = torch.stack([load_image_tensor(p, model.config.image) if isinstance(p, (str, Path)) else p for p in batch])
        with torch.no_grad():  # trunk_forward only turns gradients off for a frozen trunk
            outputs.append(model.net.image.trunk_forward(pixels).float().numpy().astype(np.float16))
    return np.concatenate(outputs), time.perf_counter() - start


def real_dataset(args: argparse.Namespace, model, tmp: Path) -> tuple[PairDataset, dict]:  # noqa: ANN001
    """The first ``--images`` dev images and all their captions; caches built in ``tmp``. Returns (dataset, times)."""
    manifest = load_split(args.data_dir, args.split, strict=False)
    keep_ids = manifest.image_ids()[: args.images]
    keep = set(keep_ids)
    rows = [dict(row, audio=str(manifest.audio_path(row).resolve()), image=str(manifest.image_path(row).resolve()))
            for row in manifest.rows if row["image_id"] in keep]
    write_jsonl(tmp / f"{args.split}.jsonl", rows)
    local = Manifest(tmp / f"{args.split}.jsonl", rows)
    times = {}
    start = time.perf_counter()
    audio = build_feature_cache(local, args.split, model.config.features, workers=args.workers, progress=False)
    times["features"] = time.perf_counter() - start
    first = {}
    for row in rows:
        first.setdefault(row["image_id"], row["image"])
    if uses_image_cache(model.config):
        features, times["trunk"] = trunk_features(model, [first[i] for i in keep_ids])
        images: CachedImages | ImageFiles = CachedImages(features, keep_ids)
    else:  # an unfrozen trunk runs inside encode_split
        images, times["trunk"] = ImageFiles(first, model.config.image), 0.0
    return PairDataset(local, audio, images, seed=0), times


def synthetic_dataset(args: argparse.Namespace, model) -> tuple[PairDataset, dict]:  # noqa: ANN001
    """Random pixels and random-noise captions with Flickr8k-like durations (mean 3.0 s)."""
    rng = np.random.default_rng(0)
    n, per = args.images, args.captions_per_image
    config = model.config
    rows, ids = [], []
    for i in range(n):
        for c in range(per):
            rows.append({"id": f"img{i:05d}#{c}", "image": f"img{i:05d}.jpg", "image_id": f"img{i:05d}",
                         "audio": f"img{i:05d}_{c}.wav", "speaker": "synthetic"})
            ids.append(rows[-1]["id"])
    durations = np.clip(rng.normal(3.0, 1.0, len(rows)), 0.7, 9.6)
    times = {}
    signals = [(rng.standard_normal(int(16000 * d)) * 0.1).astype(np.float32) for d in durations]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the feature-cache workers run
    start = time.perf_counter()
    feats = [compute_features(signal, config.features).astype(np.float16) for signal in signals]
    times["features"] = time.perf_counter() - start  # one process; a cache build would use 2 workers
    torch.set_num_threads(threads)
    size = config.image.size
    pixels = [torch.from_numpy(rng.standard_normal((3, size, size), dtype=np.float32)) for _ in range(n)]
    image_ids = [f"img{i:05d}" for i in range(n)]
    if uses_image_cache(config):
        features, times["trunk"] = trunk_features(model, pixels)
        images = CachedImages(features, image_ids)
    else:
        images = CachedImages(np.stack([p.numpy() for p in pixels]), image_ids)  # pixels go through the whole encoder
        images.is_features = False
        times["trunk"] = 0.0
    manifest = Manifest(Path("/synthetic/dev.jsonl"), rows)
    return PairDataset(manifest, MemoryFeatures(ids, feats), images, seed=0), times


def bf16_check(encoded, model, exact: torch.Tensor) -> dict:  # noqa: ANN001
    """The same matrix from bf16 embeddings: time, score error, recall, top-10 sets against fp32."""
    images = encoded.images.bfloat16()
    audio = PackedFrames(encoded.audio.frames.bfloat16(), encoded.audio.owner, encoded.audio.lengths)
    start = time.perf_counter()
    with torch.no_grad():
        low = model.net.similarity(images, audio)
    seconds = time.perf_counter() - start
    k = min(10, exact.shape[0])
    same = (exact.topk(k, dim=0).indices.sort(0).values == low.topk(k, dim=0).indices.sort(0).values).all(0).float().mean()
    result = {"seconds": seconds, "err": (exact - low).abs().max().item(), "same_top10": float(same),
              "s2i_r10": speech_to_image(low, encoded.caption_image)["r10"], "i2s_r10": image_to_speech(low, encoded.caption_image)["r10"]}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", nargs="?", help="data set folder with dev.jsonl (omit with --synthetic)")
    parser.add_argument("run", nargs="?", help="run folder or checkpoint (default / missing: untrained CPU default)")
    parser.add_argument("--synthetic", action="store_true", help="random inputs of realistic shapes, no data set needed")
    parser.add_argument("--quick", action="store_true", help="100 images x 500 captions (< 60 s)")
    parser.add_argument("--images", type=int, help="images (default 1000; quick 100)")
    parser.add_argument("--captions-per-image", type=int, default=5, help="synthetic mode")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--batch-size", type=int, default=64, help="encode_split batch size (vgs evaluate's default)")
    parser.add_argument("--workers", type=int, default=2, help="feature-cache workers")
    parser.add_argument("--no-bf16", action="store_true", help="skip scoring once more from bf16 embeddings")
    parser.add_argument("--dim", type=int, default=512, help="untrained model: embed_dim")
    parser.add_argument("--audio-channels", type=int, default=256, help="untrained model: audio_channels")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default, all cores)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.synthetic and args.data_dir and not args.run and not Path(args.data_dir, f"{args.split}.jsonl").exists():
        args.run, args.data_dir = args.data_dir, None  # `--synthetic RUN`
    if not args.synthetic and not args.data_dir:
        parser.error("give DATA_DIR, or --synthetic")
    args.images = args.images or (100 if args.quick else 1000)

    model, described = build_model(args.run, args.dim, args.audio_channels)
    print(machine_line())
    tmp = Path(tempfile.mkdtemp(prefix="vgs-bench-eval-"))
    try:
        if args.synthetic:
            dataset, times = synthetic_dataset(args, model)
            source = "synthetic (random pixels, noise captions of Flickr8k-like durations)"
        else:
            dataset, times = real_dataset(args, model, tmp)
            source = f"{args.data_dir} {args.split}"
        if model.checkpoint is None:  # untrained: input statistics as `vgs evaluate --untrained` sets them
            mean, std = feature_statistics(dataset, seed=0)
            model.net.audio.input_norm.set_statistics(mean, std)
        frames = int(np.sum(dataset.lengths()))
        print(f"full protocol on {len(dataset.image_ids)} images x {len(dataset)} captions from {source}; model: {described}; "
              f"{frames / len(dataset) / 100:.2f} s of speech per caption on average{' (quick)' if args.quick else ''}")

        clock = PhaseClock(model.net)
        start = time.perf_counter()
        encoded = encode_split(model.net, dataset, batch_size=args.batch_size, device="cpu", progress=False)
        end = time.perf_counter()
        times["head"] = (clock.last_image or start) - start
        times["audio_encoder"] = end - (clock.last_image or start)
        similarity = model.net.similarity
        sim_time = []

        matrices = []

        def timed_similarity(*a, **k):  # noqa: ANN002, ANN003, ANN202
            t0 = time.perf_counter()
            out = similarity(*a, **k)
            sim_time.append(time.perf_counter() - t0)
            matrices.append(out)
            return out

        model.net.similarity = timed_similarity
        start = time.perf_counter()
        with torch.no_grad():
            result = full_protocol(encoded, model.net)
        times["score"] = time.perf_counter() - start
        times["matrix"] = sum(sim_time)
        low = bf16_check(encoded, model, matrices[0]) if not args.no_bf16 else None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    n, m = result["images"], result["captions"]
    regions = int(np.prod(encoded.images.shape[2:]))
    total_frames, dim = encoded.audio.frames.shape
    flops = 2 * n * regions * total_frames * dim
    encode_images = times["trunk"] + times["head"]
    encode_audio = times["features"] + times["audio_encoder"]
    total = encode_images + encode_audio + times["score"]
    warm = times["head"] + times["audio_encoder"] + times["score"]
    rows = [["images: trunk (cache build; JPEG decode + resize with real data)", f"{times['trunk']:.1f}", f"{n / max(times['trunk'], 1e-9):.1f} img/s"],
            ["images: head (encode_split)", f"{times['head']:.1f}", f"{n / max(times['head'], 1e-9):.0f} img/s"],
            [f"audio: log-mel features ({'cache build, ' + str(args.workers) + ' workers' if not args.synthetic else '1 process, 1 thread'})",
             f"{times['features']:.1f}", f"{m / times['features']:.0f} utt/s"],
            ["audio: encoder (encode_split, incl. reading + padding)", f"{times['audio_encoder']:.1f}", f"{m / times['audio_encoder']:.0f} utt/s"],
            [f"scoring: full_protocol ({n} x {m}; matrix {times['matrix']:.1f} s at {flops / max(times['matrix'], 1e-9) / 1e9:.0f} GFLOP/s)",
             f"{times['score']:.1f}", f"{flops / 1e12:.2f} TFLOP"],
            ["total, cold (first evaluation)", f"{total:.1f}", ""],
            ["total, warm (caches already built)", f"{warm:.1f}", ""]]
    print()
    print(table(["phase", "seconds", "rate"], rows))
    print(f"(matrix: {n} images x {regions} regions x {total_frames} frames (mean T'={total_frames / m:.1f}) x D={dim}; "
          f"recall: S->I R@10 {result['speech_to_image']['r10']:.3f}, I->S R@10 {result['image_to_speech']['r10']:.3f}, "
          f"mean recall {mean_recall(result):.3f})")
    if low is not None:
        print(f"bf16 embeddings (same matrix): {low['seconds']:.1f} s vs {times['matrix']:.1f} s fp32 "
              f"({times['matrix'] / low['seconds']:.2f}x); max |score error| {low['err']:.1e}; per caption top-10 images "
              f"unchanged {low['same_top10']:.1%}; R@10 S->I {low['s2i_r10']:.3f} (fp32 {result['speech_to_image']['r10']:.3f}), "
              f"I->S {low['i2s_r10']:.3f} (fp32 {result['image_to_speech']['r10']:.3f})")
    scale = (1000 * 5000) / (n * m)
    if args.quick:
        print(f"(quick: {n} x {m}; scoring grows with N x M, ~{scale:.0f}x at 1000 x 5000, encoding ~{1000 / n:.0f}x)")
    print(f"\ncold total {total:.1f} s (goal <= {GOAL_S:.0f} s for 1000 x 5000 on 2 cores: "
          f"{('met' if total <= GOAL_S else 'MISSED') if not args.quick else 'quick run, not comparable'})")
    print(cpu_share_line())
    print(result_line({"eval_full_seconds": total, "encode_images_s": encode_images, "encode_audio_s": encode_audio,
                       "score_s": times["score"], "eval_warm_seconds": warm, "matrix_gflops": flops / max(times["matrix"], 1e-9) / 1e9,
                       **({"bf16_matrix_speedup": times["matrix"] / low["seconds"], "bf16_top10_same": low["same_top10"]} if low else {}),
                       "images": n, "captions": m}))


if __name__ == "__main__":
    main()
