"""Building one index on many workers: ``vgs index --shard i/N`` on each, then ``vgs index --merge``.

Shard ``i`` of ``N`` encodes the images ``i, i + N, i + 2N, ...`` of the sorted image list (so every
shard gets a fair mix of the folder) into its own ordinary index folder ``OUT/shards/iiiii-of-NNNNN``:
resumable like any ``vgs index`` (chunks are atomic and listed only once written), and marked
complete by a ``done.json`` naming how many images it holds.  Shard 0 also indexes the spoken captions,
if any.  The shards can run as separate processes on one machine or as a job array on several
(``OUT`` on a shared disk); any launcher that sets ``i`` works (``--shard $SLURM_ARRAY_TASK_ID/N``,
or torchrun's ``$RANK/$WORLD_SIZE``).

``merge_shards`` checks that all ``N`` shards are complete and were built with the same model, then
writes the merged index into ``OUT`` with its images in the same order and the same chunks a
single-process ``vgs index`` writes (sorted paths, 256 per chunk), so both give the same search
results.  FAISS indexes, region codes and the region index are derived files, rebuilt for the merged
index (FAISS's own ``merge_from`` would need identical IVF training on every worker).  Re-running a
merge rewrites the same files: it is safe to interrupt.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np

from .errors import VGSError
from .io import atomic_write, gather_rows, write_json

SHARD_SPEC = re.compile(r"([0-9]{1,6})/([0-9]{1,6})")
SHARD_DIR = re.compile(r"([0-9]{5})-of-([0-9]{5})")
MAX_SHARDS = 99_999
CHUNK = 256  # images per chunk, as IndexWriter


def parse_shard(spec: str) -> tuple[int, int]:
    """``"i/N"`` -> ``(i, N)`` with ``0 <= i < N <= 99999``."""
    match = SHARD_SPEC.fullmatch(spec.strip())
    if not match:
        raise VGSError(f"--shard: expected i/N (e.g. 0/4), got {spec!r}")
    index, count = int(match.group(1)), int(match.group(2))
    if not 1 <= count <= MAX_SHARDS or not 0 <= index < count:
        raise VGSError(f"--shard {spec}: expected 0 <= i < N <= {MAX_SHARDS}")
    return index, count


def shard_folder(out: Path, index: int, count: int) -> Path:
    return Path(out) / "shards" / f"{index:05d}-of-{count:05d}"


def build_shard(model, out: str | Path, images: str | Path | None, captions: str | Path | None,  # noqa: ANN001
                shard: tuple[int, int], progress: bool = True, precision: str | None = None) -> dict:
    """``vgs index --shard i/N``: index shard ``i``'s share of ``images`` (and, on shard 0, ``captions``);
    ``precision``: how its regions are stored (:class:`vgs.search.IndexWriter`)."""
    from .search import IndexWriter, list_images

    index, count = shard
    folder = shard_folder(Path(out), index, count)
    writer = IndexWriter(folder, model, precision=precision)
    summary: dict = {"images_added": 0, "captions_added": 0, "problems": [], "shard": f"{index}/{count}"}
    if images is not None:
        mine = list_images(images)[index::count]
        summary["images_added"], problems = writer.add_images(mine, progress, root=images)
        summary["problems"] += problems
    if captions is not None and index == 0:
        summary["captions_added"], problems = writer.add_captions(captions, progress)
        summary["problems"] += problems
    held = len(writer.indexed_paths())
    write_json(folder / "done.json", {"shard": index, "of": count, "images": held, "images_folder": str(images)})
    summary["images"] = held
    return summary


def _shard_meta(folder: Path) -> dict:
    from .search import read_meta

    done = folder / "done.json"
    if not done.is_file():
        raise VGSError(f"{folder}: shard not finished (no done.json); run its `vgs index --shard` again")
    return read_meta(folder)


def merge_shards(out: str | Path, checkpoint_sha256: str | None = None) -> dict:
    """Merge the complete shards under ``OUT/shards`` into the index at ``OUT`` (see the module docstring)."""
    from .search import SearchIndex, write_image_chunk

    out = Path(out)
    found = sorted(p for p in (out / "shards").glob("*-of-*") if p.is_dir() and SHARD_DIR.fullmatch(p.name))
    if not found:
        raise VGSError(f"{out / 'shards'}: no shard folders (NNNNN-of-NNNNN); run `vgs index --shard i/N` first")
    counts = {int(SHARD_DIR.fullmatch(p.name).group(2)) for p in found}
    if len(counts) != 1:
        raise VGSError(f"{out / 'shards'}: shards of different counts ({sorted(counts)}); keep one set")
    count = counts.pop()
    present = {int(SHARD_DIR.fullmatch(p.name).group(1)) for p in found}
    missing = sorted(set(range(count)) - present)
    if missing:
        raise VGSError(f"{out / 'shards'}: shard(s) {missing[:10]} of {count} missing; run them with `vgs index --shard i/{count}`")
    metas = [_shard_meta(shard_folder(out, i, count)) for i in range(count)]
    first = metas[0]
    for i, meta in enumerate(metas):
        for key in ("checkpoint_sha256", "embed_dim", "similarity", "region_precision"):
            if meta.get(key) != first.get(key):
                raise VGSError(f"{shard_folder(out, i, count) / 'index.json'}: field {key!r} differs from shard 0's; "
                               "every shard must use the same model and --regions")
    if checkpoint_sha256 is not None and first["checkpoint_sha256"] != checkpoint_sha256:
        raise VGSError(f"{shard_folder(out, 0, count) / 'index.json'}: built with another model ({first.get('checkpoint')})")
    if (out / "index.json").is_file():
        existing = json.loads((out / "index.json").read_text())
        if existing.get("merged_from") != count:
            raise VGSError(f"{out}: already holds an index not merged from these {count} shards; merge into a new --out")
    shards = [SearchIndex(shard_folder(out, i, count)) for i in range(count)]
    grids = {s.grid for s in shards if s.image_count}
    if len(grids) > 1:
        raise VGSError(f"{out / 'shards'}: shards have different region grids {sorted(grids)}")
    paths = [p for s in shards for p in s.image_paths]
    owner = np.repeat(np.arange(count), [s.image_count for s in shards])
    local = np.concatenate([np.arange(s.image_count) for s in shards]) if paths else np.zeros(0, np.int64)
    if len(set(paths)) != len(paths):
        raise VGSError(f"{out / 'shards'}: an image is in two shards; were they run on different folders?")
    order = sorted(range(len(paths)), key=paths.__getitem__)  # the single-process order: sorted paths
    for stale in (out / "images").glob("chunk-*") if (out / "images").is_dir() else []:
        stale.unlink()  # an interrupted earlier merge
    names = []
    for c0 in range(0, len(order), CHUNK):
        take = np.array(order[c0: c0 + CHUNK])
        regions = _gather(shards, owner[take], local[take])
        pooled = np.stack([shards[owner[j]].image_pooled[local[j]] for j in take])
        name = f"chunk-{len(names):05d}"
        write_image_chunk(out, name, regions, [paths[j] for j in take], next(iter(grids)), pooled_vectors=pooled,
                          precision=first["region_precision"])
        names.append(name)
    caption_chunks = _copy_captions(shard_folder(out, 0, count), out, metas[0]["caption_chunks"])
    roots = sorted({r for m in metas for r in m.get("image_roots", [])})
    meta = {**{k: v for k, v in first.items() if k not in ("image_chunks", "caption_chunks", "image_roots")},
            "image_chunks": names, "caption_chunks": caption_chunks, "image_roots": roots, "merged_from": count}
    for derived in list(out.glob("faiss-*")) + list(out.glob("codec*")):
        derived.unlink()
    write_json(out / "index.json", meta)
    return {"images": len(paths), "shards": count, "captions": sum(s.caption_count for s in shards[:1])}


def _gather(shards: list, owners: np.ndarray, local: np.ndarray) -> np.ndarray:
    """``n x R x D`` float32 regions of (shard, local image) pairs, as stored (float16, or int8 decoded: writing
    them again as int8 gives back the same codes), one read per shard chunk file."""
    first = next(s for s in shards if s.image_count)
    out = np.empty((len(owners), first.grid[0] * first.grid[1], first.meta["embed_dim"]), dtype=np.float32)
    for s in np.unique(owners):
        where = np.nonzero(owners == s)[0]
        shard = shards[s]
        out[where] = gather_rows(shard.image_regions, shard.image_offsets, local[where], np.empty((len(where), *out.shape[1:]), dtype=out.dtype))
    return out


def _copy_captions(source: Path, out: Path, names: list[str]) -> list[str]:
    """Shard 0's caption chunks, copied as they are."""
    for name in names:
        for suffix in (".frames.npy", ".lengths.npy", ".pooled.npy", ".json"):
            src = source / "captions" / f"{name}{suffix}"
            dst = out / "captions" / f"{name}{suffix}"
            with src.open("rb") as reader, atomic_write(dst) as writer:
                shutil.copyfileobj(reader, writer)
    return list(names)

