"""Progress bars that suit where stderr goes.

On a terminal this is tqdm's bar.  When stderr is a file or a pipe (``make demo > log 2>&1``,
CI), a bar would write a carriage-return line every tenth of a second; :func:`tqdm` then prints a
few plain lines instead: one at the start, one at each quarter, and one at the end (or one a
minute when the total is unknown).  Use it exactly like ``tqdm.tqdm``.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable, Iterator

from tqdm import tqdm as _tqdm

QUARTERS = (0.25, 0.5, 0.75)
UNKNOWN_TOTAL_EVERY_S = 60.0


def interactive(stream: Any = None) -> bool:
    """True when ``stream`` (default stderr) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced by an object without isatty
        return False


class PlainProgress:
    """The subset of tqdm's interface the project uses, printing whole lines."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "", unit: str = "it",
                 initial: int = 0, file: Any = None, **_: Any):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.file = file
        self.start = self.last_line = time.monotonic()
        self.postfix = ""
        self.closed = False
        self.next_quarter = 0
        while self.next_quarter < len(QUARTERS) and self._fraction() >= QUARTERS[self.next_quarter]:
            self.next_quarter += 1
        self._line("start" if not initial else "resumed")

    def _fraction(self) -> float:
        return self.n / self.total if self.total else 0.0

    def _line(self, note: str = "") -> None:
        done = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        percent = f" ({100 * self._fraction():.0f}%)" if self.total else ""
        elapsed = time.monotonic() - self.start
        extra = f", {self.postfix}" if self.postfix else ""
        tail = f" {note}" if note else ""
        print(f"{self.desc or 'progress'}: {done} {self.unit}{percent}, {elapsed:.0f} s{extra}{tail}",
              file=self.file or sys.stderr, flush=True)
        self.last_line = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.total:
            if self.next_quarter < len(QUARTERS) and self._fraction() >= QUARTERS[self.next_quarter]:
                while self.next_quarter < len(QUARTERS) and self._fraction() >= QUARTERS[self.next_quarter]:
                    self.next_quarter += 1
                if self.n < self.total:
                    self._line()
        elif time.monotonic() - self.last_line >= UNKNOWN_TOTAL_EVERY_S:
            self._line()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._line("done")

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable or ():
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return self.total or 0

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    write = staticmethod(_tqdm.write)


def tqdm(*args: Any, **kwargs: Any) -> Any:
    """``tqdm.tqdm`` on a terminal (or when disabled); :class:`PlainProgress` lines otherwise."""
    if kwargs.get("disable") or os.environ.get("TQDM_DISABLE") or interactive(kwargs.get("file")):
        return _tqdm(*args, **kwargs)
    return PlainProgress(*args, **kwargs)


tqdm.write = _tqdm.write  # type: ignore[attr-defined]  # tqdm.write(...) keeps working


def close_bars() -> None:
    """Close every live terminal bar (ending its line), so that a message printed next cannot be
    drawn over by a bar that an exception left open."""
    for bar in list(getattr(_tqdm, "_instances", ())):
        try:
            bar.close()
        except Exception:  # a half-built bar; the message matters more
            pass


def message(text: str) -> None:
    """Print ``text`` on stderr as a whole line, above any live progress bar."""
    _tqdm.write(text, file=sys.stderr)


__all__ = ["tqdm", "PlainProgress", "interactive", "close_bars", "message"]
