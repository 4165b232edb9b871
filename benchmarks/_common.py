"""Helpers shared by the benchmarks: machine description, repeated timings, memory readings, tables.

Machines are noisy (other jobs share the cores), so the benchmarks time alternatives
side by side, repeat each timing and quote medians, and quote ratios of timings taken
in the same repeat rather than ratios of two separate medians.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line() -> str:
    """One line: CPU, cores, torch threads, load average, bf16 support."""
    import torch

    flags = cpu_flags()
    bf16 = ",".join(f for f in ("avx512_bf16", "amx_bf16") if f in flags) or "none"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"machine: {cpu_name()}, {os.cpu_count()} logical cores, torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads, bf16 instructions: {bf16}, load average {load}")


_STARTED = (time.perf_counter(), os.times())


def cpu_share_line() -> str:
    """CPU seconds this process (and its finished children) got per wall-clock second since import, and the load."""
    wall = time.perf_counter() - _STARTED[0]
    now, then = os.times(), _STARTED[1]
    cpu = (now.user - then.user) + (now.system - then.system) + (now.children_user - then.children_user) + \
        (now.children_system - then.children_system)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"cpu: this benchmark got {cpu / max(wall, 1e-9):.2f} of {os.cpu_count()} cores on average over {wall:.0f} s "
            f"(load average now {load}; other jobs on the machine slow it down, and multi-threaded small ops most)")


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: bool = True) -> dict[str, list[float]]:
    """Seconds per call of each function; in each repeat every function runs once, in turn."""
    if warmup:
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn)[0])
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def spread(values: Sequence[float]) -> str:
    """``median (min-max)`` of seconds, in ms or s."""
    def fmt(x: float) -> str:
        return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"
    return f"{fmt(median(values))} ({fmt(min(values))}-{fmt(max(values))})"


def ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    """Per-repeat ratios of two interleaved series."""
    return [a / b for a, b in zip(numerator, denominator)]


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def proc_status() -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of this process, in bytes (empty off Linux)."""
    out: dict[str, int] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0). Returns whether it worked."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table with right-aligned columns."""
    cells = [[str(h) for h in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def result_line(values: dict[str, object]) -> str:
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)
    return "RESULT " + " ".join(f"{k}={fmt(v)}" for k, v in values.items())
