"""Benchmark log-mel feature extraction (the prepare step's feature cache) with 1 and 2 workers, beside TTS speed.

    python benchmarks/bench_features.py [--quick] [DATA_DIR] [--n 2000] [--workers 2]

With DATA_DIR, the first ``--n`` utterances of its ``train.jsonl``; without, ``--n`` captions
are first synthesized with ``vgs.tts`` (espeak voices from the pool, 2 workers) and written as
16 kHz WAV files.  The features are built by the library's ``build_feature_cache`` (reading
the files, log-mels, fp16 parts, merge) into temporary folders, so DATA_DIR is never written;
each worker count runs on a fresh folder, alternating, and the median is quoted.  The files
are read once beforehand so both runs find them in the page cache.  Chunks are
``min(512, n / (4 x workers))`` utterances so that small runs still give every worker work
(``vgs prepare`` uses 512).  Also in the same run: log-mels alone on signals already in
memory (no file I/O, in this process, with one torch thread and with torch's default), and
TTS captions per second with 1 and N workers on a subset.  Ends with one ``RESULT`` line.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_share_line, machine_line, median, result_line, table  # noqa: E402

from vgs.audio import load_audio  # noqa: E402
from vgs.data.cache import build_feature_cache  # noqa: E402
from vgs.data.manifest import Manifest, load_split  # noqa: E402
from vgs.features import AudioFeatureConfig, compute_features  # noqa: E402
from vgs.io import write_jsonl  # noqa: E402
from vgs.tts import VoicePoolConfig, pick_voice, synthesize_many, voice_pool  # noqa: E402

SUBJECTS = ["A dog", "Two children", "A man in a red shirt", "A little girl", "Three people", "A brown horse",
            "A woman with a hat", "A group of boys", "A black and white cat", "An old man"]
VERBS = ["is running", "are playing", "is jumping", "is sitting", "are walking", "is climbing", "is riding a bike"]
PLACES = ["through the grass", "on the beach", "near the water", "in the snow", "down a busy street",
          "on a rock", "in front of a building", "across a field"]


def generated_captions(n: int) -> list[tuple[str, str]]:
    rng = random.Random(0)
    return [(f"gen{i:05d}", f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(PLACES)} .") for i in range(n)]


def tts_run(jobs: list, workers: int) -> tuple[float, list]:
    """Seconds to synthesize ``jobs`` with ``workers`` processes (pool start included), and the results."""
    start = time.perf_counter()
    results = list(synthesize_many(jobs, workers=workers))
    return time.perf_counter() - start, results


def manifest_rows(audio_paths: list[Path]) -> list[dict]:
    return [{"id": f"utt{i:05d}", "image": "none.jpg", "image_id": f"img{i // 5:05d}", "audio": str(p.resolve()),
             "speaker": "bench"} for i, p in enumerate(audio_paths)]


def build_once(rows: list[dict], folder: Path, workers: int, config: AudioFeatureConfig) -> tuple[float, int]:
    """Seconds for build_feature_cache over ``rows`` in a fresh ``folder``, and frames written."""
    folder.mkdir(parents=True)
    write_jsonl(folder / "train.jsonl", rows)
    manifest = Manifest(folder / "train.jsonl", rows)
    chunk = max(1, min(512, -(-len(rows) // (4 * max(1, workers)))))
    start = time.perf_counter()
    store = build_feature_cache(manifest, "train", config, workers=workers, chunk=chunk, progress=False)
    seconds = time.perf_counter() - start
    frames = int(store.lengths().sum())
    if len(store) != len(rows):
        print(f"  warning: {len(rows) - len(store)} utterances could not be featurized", file=sys.stderr)
    return seconds, frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", nargs="?", help="data set folder with train.jsonl (default: synthesize captions)")
    parser.add_argument("--quick", action="store_true", help="300 utterances, 1 repeat (< 60 s)")
    parser.add_argument("--n", type=int, help="utterances (default 2000; quick 300)")
    parser.add_argument("--workers", type=int, default=2, help="workers for the parallel run")
    parser.add_argument("--repeats", type=int, help="builds per worker count (default 2; quick 1)")
    parser.add_argument("--tts-n", type=int, help="captions in the TTS comparison (default 400; quick 100)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default, all cores)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.n or (300 if args.quick else 2000)
    repeats = args.repeats or (1 if args.quick else 2)
    tts_n = args.tts_n or (100 if args.quick else 400)
    config = AudioFeatureConfig()
    print(machine_line())

    tmp = Path(tempfile.mkdtemp(prefix="vgs-bench-features-"))
    try:
        pool = voice_pool(VoicePoolConfig(engines="espeak"))
        tts = {}
        if args.data_dir:
            manifest = load_split(args.data_dir, "train", strict=False)
            paths = [manifest.audio_path(row) for row in manifest.rows[:n]]
            texts = [(row["id"], row.get("text") or "A dog runs .") for row in manifest.rows[:tts_n]]
            source = f"{args.data_dir}/train.jsonl (first {len(paths)} utterances)"
        else:
            captions = generated_captions(n)
            jobs = [(key, text, pick_voice(pool, key)) for key, text in captions]
            seconds, results = tts_run(jobs, args.workers)
            tts[args.workers] = (len(jobs), seconds)
            (tmp / "audio").mkdir()
            paths = []
            for key, speech in results:
                if isinstance(speech, Exception):
                    continue
                path = tmp / "audio" / f"{key}.wav"
                sf.write(path, speech.audio, 16000, subtype="PCM_16")
                paths.append(path)
            texts = captions[:tts_n]
            source = f"{len(paths)} captions synthesized with vgs.tts ({args.workers} workers, {seconds:.1f} s)"
        signals = [load_audio(p) for p in paths]  # also warms the page cache for the timed builds
        seconds_of_speech = sum(len(s) for s in signals) / 16000
        print(f"log-mel features of {len(paths)} utterances from {source}; {seconds_of_speech / len(paths):.2f} s of "
              f"speech each on average{' (quick)' if args.quick else ''}")

        # TTS comparison: both worker counts on the same subset (the N-worker time includes starting the pool).
        jobs = [(key, text, pick_voice(pool, key)) for key, text in texts]
        for workers in (1, args.workers):
            seconds, _ = tts_run(jobs, workers)
            tts[workers] = (len(jobs), seconds)

        # Log-mels alone, in this process: one torch thread (as the cache workers run) and torch's default.
        threads = torch.get_num_threads()
        in_memory = {}
        for count, subset in ((1, signals), (threads, signals[: max(20, len(signals) // 10)])):
            torch.set_num_threads(count)
            compute_features(subset[0], config)
            start = time.perf_counter()
            for signal in subset:
                compute_features(signal, config)
            in_memory[count] = len(subset) / (time.perf_counter() - start)
        torch.set_num_threads(threads)

        rows = manifest_rows(paths)
        torch.set_num_threads(threads)
        times: dict[int, list[float]] = {1: [], args.workers: []}
        frames = 0
        for r in range(repeats):
            for workers in ((1, args.workers) if r % 2 == 0 else (args.workers, 1)):
                seconds, frames = build_once(rows, tmp / f"cache-w{workers}-r{r}", workers, config)
                times[workers].append(seconds)
                torch.set_num_threads(threads)  # workers=1 runs in this process and leaves torch at one thread
                shutil.rmtree(tmp / f"cache-w{workers}-r{r}", ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    rate = {w: len(rows) / median(t) for w, t in times.items()}
    tts_rate = {w: count / seconds for w, (count, seconds) in tts.items()}
    table_rows = [[f"log-mel feature cache, {w} worker{'s' if w > 1 else ''}", f"{median(times[w]):.1f} s",
                   f"{rate[w]:.0f}", f"{rate[w] * seconds_of_speech / len(rows):.0f}x"] for w in (1, args.workers)]
    for count, value in in_memory.items():
        table_rows.append([f"log-mel only, signals in memory, this process, {count} torch thread{'s' if count > 1 else ''}",
                           "", f"{value:.0f}", f"{value * seconds_of_speech / len(rows):.0f}x"])
    for w in (1, args.workers):
        count, seconds = tts[w]
        table_rows.append([f"TTS (espeak), {w} worker{'s' if w > 1 else ''}, {count} captions", f"{seconds:.1f} s",
                           f"{tts_rate[w]:.1f}", ""])
    print()
    print(table(["what", "time", "utterances/s", "x real time"], table_rows))
    print(f"(feature builds: median of {repeats} per worker count, pool start and merge included; {frames} frames written; "
          f"speed-up with {args.workers} workers: {rate[args.workers] / rate[1]:.2f}x; at their better worker counts "
          f"features are {max(rate.values()) / max(tts_rate.values()):.0f}x faster than TTS; small runs are dominated by "
          f"starting worker processes)")
    print(f"at prepare scale (Flickr8k, 40,000 captions), at the better worker count: features ~"
          f"{40000 / max(rate.values()) / 60:.1f} min, TTS ~{40000 / max(tts_rate.values()) / 60:.1f} min")
    print(cpu_share_line())
    print(result_line({"features_utts_per_s_w1": rate[1], f"features_utts_per_s_w{args.workers}": rate[args.workers],
                       "features_in_memory_utts_per_s": in_memory[1], "tts_captions_per_s": tts_rate[args.workers],
                       "tts_captions_per_s_w1": tts_rate[1]}))


if __name__ == "__main__":
    main()
