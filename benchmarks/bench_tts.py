"""Benchmark caption synthesis: captions per second with 1 and N workers, in one run.

    python benchmarks/bench_tts.py [--captions Flickr8k.token.txt] [--n 2000] [--workers 2]

Captions come from a Flickr8k token file (``<image>#<n>\\t<caption>`` per line) when given,
else from generated sentences.  Each caption gets a voice from the pool by its key.  The
N-worker time includes starting the worker pool.  Ends with one ``RESULT`` line.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import time
from pathlib import Path

from vgs.errors import VGSError
from vgs.tts import VoicePoolConfig, pick_voice, synthesize_many, voice_pool

SUBJECTS = ["A dog", "Two children", "A man in a red shirt", "A little girl", "Three people", "A brown horse",
            "A woman with a hat", "A group of boys", "A black and white cat", "An old man"]
VERBS = ["is running", "are playing", "is jumping", "is sitting", "are walking", "is climbing", "is riding a bike"]
PLACES = ["through the grass", "on the beach", "near the water", "in the snow", "down a busy street",
          "on a rock", "in front of a building", "across a field"]


def read_captions(path: Path | None, n: int) -> list[tuple[str, str]]:
    """(key, caption) pairs: the first ``n`` lines of a Flickr8k token file, or generated sentences."""
    if path is None:
        rng = random.Random(0)
        return [(f"gen#{i}", f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(PLACES)} .") for i in range(n)]
    pairs = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                key, sep, caption = line.rstrip("\n").partition("\t")
                if not sep or "#" not in key:
                    raise VGSError(f"{path}:{number}: expected '<image>#<n><TAB><caption>'")
                pairs.append((key, caption))
            if len(pairs) == n:
                break
    return pairs


def run(jobs: list, workers: int) -> tuple[float, float, dict[str, str], list[float]]:
    """Seconds in all, seconds to the first result, audio digest per key, caption durations."""
    start = time.perf_counter()
    first, digests, durations = None, {}, []
    for key, result in synthesize_many(jobs, workers=workers):
        first = first or time.perf_counter() - start
        if isinstance(result, Exception):
            print(f"  failed {key}: {result}", file=sys.stderr)
            continue
        digests[key] = hashlib.sha256(result.audio.tobytes()).hexdigest()
        durations.append(result.duration)
    return time.perf_counter() - start, first or 0.0, digests, durations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=Path, help="Flickr8k token file (default: generated sentences)")
    parser.add_argument("--n", type=int, default=2000, help="number of captions")
    parser.add_argument("--workers", type=int, default=2, help="worker processes for the parallel run")
    parser.add_argument("--engines", default="espeak", help="voice pool engines ('auto' = all installed)")
    args = parser.parse_args()

    captions = read_captions(args.captions, args.n)
    pool = voice_pool(VoicePoolConfig(engines=args.engines))
    jobs = [(key, text, pick_voice(pool, key)) for key, text in captions]
    print(f"{len(jobs)} captions from {args.captions or 'generated sentences'}, {len(pool)} voices ({args.engines})")

    rates = {}
    for workers in (1, args.workers):
        seconds, first, digests, durations = run(jobs, workers)
        rates[workers] = len(digests) / seconds
        steady = (len(digests) - 1) / max(seconds - first, 1e-9)
        print(f"workers={workers}: {seconds:.2f} s, {rates[workers]:.0f} captions/s end to end; first result "
              f"after {first:.2f} s, {steady:.0f} captions/s after it; {len(jobs) - len(digests)} failed")
        if workers == 1:
            reference, mean_s = digests, sum(durations) / max(len(durations), 1)
    print(f"mean caption duration {mean_s:.2f} s; audio identical across runs: {digests == reference}")
    print(f"RESULT tts_captions_per_s_w{args.workers}={rates[args.workers]:.1f} "
          f"tts_captions_per_s_w1={rates[1]:.1f} mean_caption_s={mean_s:.3f}")


if __name__ == "__main__":
    main()
