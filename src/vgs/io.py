"""Safe file I/O: atomic writes, JSON Lines, and checksummed checkpoints.

Every file the project writes goes through :func:`atomic_write` (write a temporary
file beside the target, fsync, rename), so an interrupted job never leaves a
half-written manifest, cache or checkpoint behind.  Checkpoints carry a SHA-256
of their payload and load with ``weights_only=True``: a file from an untrusted
source can neither execute code nor pass as valid when it is corrupt.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from .errors import VGSError, first_line

CHECKPOINT_FORMAT = "vgs-checkpoint/1"


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux: /proc/self/status)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", durable: bool = True) -> Iterator[Any]:
    """Open a temporary file beside ``path``; rename it over ``path`` on success.

    ``durable``: fsync before the rename.  Builds writing thousands of small files pass False and
    sync once per journal flush instead (a killed process loses nothing either way: the rename is
    atomic and the page cache survives the process).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.chmod(handle.fileno(), 0o666 & ~current_umask())  # mkstemp makes 0600; honour the umask like open()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def is_stale_tmp(name: str) -> bool:
    """A temporary file of ours: ``.NAME.XXXX.tmp`` (:func:`atomic_write`) or ``.NAME.tmp`` (links, FAISS)."""
    return name.startswith(".") and name.endswith(".tmp") and len(name) > 5


def clean_stale_tmp(folder: str | os.PathLike) -> int:
    """Delete temporary files left under ``folder`` by a killed writer (recursive). Returns how many.

    Call it when a writer opens a folder it owns: one writer per folder at a time.
    Symlinked folders are not followed.
    """
    removed = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            if is_stale_tmp(name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(root, name))
                    removed += 1
    return removed


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w") as handle:
        handle.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    with atomic_write(path, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save a plain (non-object) array atomically; it loads without pickle."""
    if array.dtype == object:
        raise TypeError("object arrays would need pickle; refusing to save")
    with atomic_write(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def load_npy(path: str | os.PathLike, mmap: bool = False) -> np.ndarray:
    """Load an array saved by :func:`save_npy`, never executing pickled code."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as exc:
        raise VGSError(f"{path}: not a plain numpy array ({exc})") from exc


def gather_rows(parts: Any, offsets: np.ndarray, ids: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Rows ``ids`` of the concatenation of ``parts`` (chunk arrays, often memory-mapped; ``offsets``: each
    part's first row, then the total, ``len(parts) + 1``) written into ``out`` (``len(ids) x ...``) in the order
    of ``ids``: one indexed read per part that holds any, rows in file order.  Returns ``out``."""
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= int(offsets[-1])):
        raise VGSError(f"row ids: expected 0..{int(offsets[-1]) - 1}, got {int(ids.min())}..{int(ids.max())}")
    order = np.argsort(ids, kind="stable")
    ordered = ids[order]
    edges = np.searchsorted(ordered, offsets)  # part c's ids are ordered[edges[c]: edges[c + 1]]
    for part in np.nonzero(np.diff(edges))[0]:
        run = slice(edges[part], edges[part + 1])
        out[order[run]] = parts[part][ordered[run] - offsets[part]]
    return out


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def stable_hash(obj: Any, length: int = 12) -> str:
    """A short, stable hash of a JSON-serialisable object (settings, file lists)."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    """Save ``payload`` (tensors, numbers, strings, lists, dicts) with a checksum.

    The file is a torch archive holding ``{"format", "sha256", "payload": bytes}``
    where ``payload`` is itself a ``torch.save`` of the dict.  Written atomically.
    """
    import torch

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    inner = buffer.getvalue()
    outer = io.BytesIO()
    torch.save(
        {"format": CHECKPOINT_FORMAT, "sha256": sha256_bytes(inner), "payload": torch.frombuffer(bytearray(inner), dtype=torch.uint8)},
        outer,
    )
    write_bytes(path, outer.getvalue())


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Uses ``weights_only=True`` for both layers, verifies the checksum, and raises
    :class:`VGSError` naming the file when it is truncated, corrupt or not ours.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise VGSError(f"{path}: checkpoint not found")
    try:
        outer = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle with disallowed globals, ...
        raise VGSError(f"{path}: not a loadable checkpoint ({type(exc).__name__}: {first_line(exc, 200)})") from exc
    if not isinstance(outer, dict) or outer.get("format") != CHECKPOINT_FORMAT:
        raise VGSError(f"{path}: not a vgs checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    payload, checksum = outer.get("payload"), outer.get("sha256")
    if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8 or not isinstance(checksum, str):
        raise VGSError(f"{path}: malformed vgs checkpoint (expected a byte payload and its sha256)")
    inner = payload.numpy().tobytes()
    if sha256_bytes(inner) != outer.get("sha256"):
        raise VGSError(f"{path}: checksum mismatch; the checkpoint is corrupt")
    try:
        content = torch.load(io.BytesIO(inner), map_location=map_location, weights_only=True)
    except Exception as exc:
        raise VGSError(f"{path}: checkpoint payload does not load safely ({type(exc).__name__})") from exc
    if not isinstance(content, dict):
        raise VGSError(f"{path}: checkpoint payload is not a dict")
    return content


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Any]:
    """Load a plain ``state_dict`` file (e.g. torchvision ImageNet weights) safely."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise VGSError(f"{path}: weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise VGSError(f"{path}: not a loadable weights file ({type(exc).__name__}: {first_line(exc, 200)})") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise VGSError(f"{path}: expected a state_dict mapping names to tensors")
    return state
