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
