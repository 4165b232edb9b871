"""Errors that reach the user as one clear line (the CLI prints them without a traceback)."""

from __future__ import annotations


class VGSError(Exception):
    """A user-facing error: the message names the file, the field and what was expected."""


class InputError(VGSError):
    """Bad input data: an unreadable file, a malformed line, a wrong type."""

    def __init__(self, source: str, message: str, line: int | None = None, field: str | None = None):
        self.source = str(source)
        self.line = line
        self.field = field
        self.reason = message
        where = self.source + (f":{line}" if line is not None else "")
        what = f" field {field!r}:" if field else ""
        super().__init__(f"{where}:{what} {message}")


def first_line(exc: BaseException, limit: int = 200) -> str:
    """A short one-line description of an exception (never empty, never torch's unsafe-loading advice)."""
    text = str(exc)
    if "Weights only load failed" in text:
        return "it holds pickled objects other than plain tensors, which are refused for safety"
    lines = [line for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:limit]
