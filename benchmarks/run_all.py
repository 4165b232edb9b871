"""Run every benchmark (full sizes, or ``--quick``) and collect their ``RESULT`` lines.

    python benchmarks/run_all.py [--quick] [--data DATA_DIR] [--run RUN] [--only similarity,search] [--log FILE]

Each benchmark runs in its own process, one after another (they would disturb each other's
timings), with its output shown as it comes.  DATA_DIR (default: ``$VGS_BENCH_DATA``) is a data
set such as Flickr8k from ``vgs prepare``: without it the evaluation runs on synthetic inputs,
the feature benchmark synthesizes its captions, and the training benchmark is skipped.  RUN
is a trained run folder (evaluation and search use it when it exists).  Ends with the
collected ``RESULT`` lines, one per benchmark; exits non-zero if any benchmark failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NAMES = ("similarity", "search", "eval", "features", "train", "int8_kernels")


def command(name: str, args: argparse.Namespace) -> list[str] | None:
    """The command line of one benchmark, or None when it cannot run with what was given."""
    run = args.run if args.run and Path(args.run).exists() else None
    cmd = [sys.executable, str(HERE / f"bench_{name}.py")] + (["--quick"] if args.quick else [])
    if name == "search":
        return cmd + ([run] if run else [])
    if name == "eval":
        if args.data:
            return cmd + [args.data] + ([args.run] if args.run else [])
        return cmd + ["--synthetic"] + ([run] if run else [])
    if name == "features":
        return cmd + ([args.data] if args.data else [])
    if name == "train":
        return cmd + [args.data] if args.data else None
    return cmd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small versions (each < ~1 minute)")
    parser.add_argument("--data", default=os.environ.get("VGS_BENCH_DATA"), help="data set folder (default $VGS_BENCH_DATA)")
    parser.add_argument("--run", help="a trained run folder")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(NAMES)}")
    parser.add_argument("--log", type=Path, help="also write all output to this file")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(NAMES)
    unknown = set(names) - set(NAMES)
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; expected some of {', '.join(NAMES)}")
    log = args.log.open("w", encoding="utf-8") if args.log else None

    def emit(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()
        if log:
            log.write(text)
            log.flush()

    results: dict[str, str] = {}
    failed: list[str] = []
    for name in names:
        cmd = command(name, args)
        if cmd is None:
            results[name] = "skipped (needs --data DATA_DIR)"
            continue
        emit(f"\n===== {name}: {' '.join(cmd[1:])}\n")
        start = time.perf_counter()
        process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        last = None
        assert process.stdout is not None
        for line in process.stdout:
            emit(line)
            if line.startswith("RESULT "):
                last = line.strip()
        code = process.wait()
        seconds = time.perf_counter() - start
        if code != 0 or last is None:
            failed.append(name)
            results[name] = f"FAILED (exit {code}, {seconds:.0f} s)"
        else:
            results[name] = f"{last}  [{seconds:.0f} s]"
    emit(f"\n===== results ({'quick' if args.quick else 'full'} sizes)\n")
    for name in names:
        emit(f"{name:>10}: {results[name]}\n")
    if log:
        log.close()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
