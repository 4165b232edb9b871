"""Search a photo collection by voice (and spoken captions by image): ``vgs index`` / ``vgs search``.

An index is a folder of plain files (no pickle anywhere):

* ``index.json``: the run it was built with (checkpoint checksum), shapes, and the chunk list;
* ``images/chunk-NNNNN.{regions,pooled}.npy`` + ``.json``: per chunk of images, the region
  embeddings (``n x R x D`` float16, for matchmap re-ranking; or, built with ``--regions int8``, int8
  with one float32 scale per region in ``chunk-NNNNN.scales.npy``: half the disk, the scores within
  the rounding, see :class:`vgs.codecs.Int8Regions`), the pooled, L2-normalized
  embeddings (``n x D`` float32, for the first stage) and the image paths;
* ``captions/...``: the same for spoken captions (packed frames, lengths, ids, texts);
* ``faiss-images.index`` / ``faiss-captions.index``: FAISS indexes over the pooled vectors
  (exact inner product for small collections, IVF for large ones), rebuilt when chunks change.

Voice search (speech -> images) is exact by default up to :data:`EXACT_AUTO_MAX_IMAGES` images: every
region of every image sits in one FAISS inner-product index, each query frame fetches its best
regions gallery-wide, and the threshold algorithm (:mod:`vgs.first_stage`) scores candidates with the
model's matchmap similarity (MISA) until no other image can enter the top-k.  Above that, the
centroid stage (:mod:`vgs.centroids`) ranks every image by a cheap bound of MISA on a few of its regions
(int8 products),
MISA on the int8 codes narrows the best :data:`DEFAULT_CANDIDATES` to
:data:`vgs.centroids.CODE_RERANK_DEPTH`, and those are scored exactly:
:meth:`SearchIndex.centroid_candidates`.  ``images/chunk-NNNNN.{codes,errors}.npy``
(optional, :mod:`vgs.codecs`) hold int8 PCA codes with error bounds: the exact stage then keeps
``d + 2`` floats per region in memory instead of ``D``, and the ``compact`` stage searches the codes
alone.  The older first stage (``pooled``: FAISS proposes candidates by pooled embedding, MISA
re-ranks them) stays available, and serves image -> speech search.  Chunks are written
atomically, so an interrupted ``vgs index`` resumes where it stopped, and re-running it on
another folder adds images to the existing index.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.nn import functional as F
from .progress import tqdm

from .api import Model, load
from .audio import load_audio
from . import centroids as centroid_stage
from .centroids import BASIS_SAMPLE, PROJECTED_DIMS, REPRESENTATIVES, Int8Representatives, project, representatives
from .codecs import REGION_PRECISIONS, Int8Regions, RegionCodec, build_codes, load_codes, principal_basis, quantize_regions
from .errors import InputError, VGSError
from .first_stage import FIRST_STAGES, RegionSearch
from .io import clean_stale_tmp, gather_rows, load_npy, save_npy, sha256_file, write_json, write_text
from .similarity import PackedFrames, similarity_matrix

# ``auto`` uses the exact first stage up to this many images, the centroid stage above. Measured side
# by side on 1 thread (docs/benchmarks.md, section 8): at 1,000 real images exact 173 ms vs pooled
# 207 ms (p50); at 10,000 synthetic images exact 2,039 ms vs pooled 376 ms; at 39,680 real images
# exact 5,487 ms, the centroid stage 73 ms at 100% agreement (200 queries), pooled 155 ms at 27%.
EXACT_AUTO_MAX_IMAGES = 5_000
# Candidates of the centroid (or pooled) first stage. On a real 100k scenes gallery and 200 spoken queries
# (docs/benchmarks.md, section 8, "Reading in place") the centroid stage kept 96.5% of the exhaustive
# top-10s with 3,000, 93.5% with 2,000 (an earlier scenes model's gallery: 97.5% with 2,000; the Flickr8k
# 100k gallery: 100%); the bound's depth grows with the gallery. 3,000 cost 38-41 ms a query there (p50),
# 90 ms at a million (statistics-matched), on one AVX2 core.
DEFAULT_CANDIDATES = 3000

log = logging.getLogger("vgs.search")

INDEX_FORMAT = "vgs-index/1"
CHUNK_NAME = re.compile(r"chunk-[0-9]{5,9}")  # the only chunk names an index may list: no path can be formed
MAX_EMBED_DIM = 16384
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
IVF_THRESHOLD = 20_000  # collections at least this large get an IVF index
DEFAULT_CODE_DIM = 128  # `vgs index` writes int8 codes of this many PCA dimensions (0: none)


@dataclass
class Hit:
    """One search result: its position in the index, score, and what it is."""

    index: int
    score: float
    path: str | None = None  # images
    id: str | None = None  # captions
    text: str | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted); symlinks resolving outside ``folder`` are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VGSError(f"{folder}: image folder not found")
    root = folder.resolve()
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and p.resolve().is_relative_to(root))


def pooled(embeddings: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean over ``dim`` then L2-normalize: the first-stage vector."""
    return F.normalize(embeddings.float().mean(dim=dim), dim=-1)


def representative_array(regions: torch.Tensor) -> np.ndarray:
    """``n x R x D`` regions -> the indices of each image's representative regions (:mod:`vgs.centroids`),
    ``n x min(REPRESENTATIVES, R)``, as stored: uint8, or uint16 for grids of more than 256 regions."""
    return representatives(regions.float()).numpy().astype(np.uint8 if regions.shape[1] <= 256 else np.uint16)


def _float_regions(regions) -> torch.Tensor:  # noqa: ANN001
    """One chunk's stored regions (float16 array or :class:`vgs.codecs.Int8Regions`), ``n x R x D`` float32."""
    return torch.from_numpy(np.asarray(regions[:], dtype=np.float32))


def write_image_chunk(folder: Path, name: str, regions: torch.Tensor | np.ndarray, paths: list[str],
                      grid: tuple[int, int], pooled_vectors: np.ndarray | None = None, precision: str = "float16") -> None:
    """One image chunk of an index folder: ``n x R x D`` regions (stored float16, or int8 with per-region
    scales), their pooled vectors (computed from ``regions`` unless given), their representatives, then the
    chunk's JSON, written last so that a chunk with a JSON is complete.  The one writer of this layout."""
    regions = torch.as_tensor(np.asarray(regions)) if isinstance(regions, np.ndarray) else regions
    images = Path(folder) / "images"
    if precision == "int8":
        codes, scales = quantize_regions(regions)
        save_npy(images / f"{name}.scales.npy", scales)
        save_npy(images / f"{name}.regions.npy", codes)
        regions = torch.from_numpy(Int8Regions(codes, scales)[:])  # representatives of what is stored
    else:
        save_npy(images / f"{name}.regions.npy", regions.numpy().astype(np.float16))
    save_npy(images / f"{name}.pooled.npy", pooled(regions, 1).numpy() if pooled_vectors is None
             else np.asarray(pooled_vectors, dtype=np.float32))
    save_npy(images / f"{name}.representatives.npy", representative_array(regions))
    write_json(images / f"{name}.json", {"paths": list(paths), "grid": list(grid)})


def write_caption_chunk(folder: Path, name: str, frames: torch.Tensor, lengths: torch.Tensor, info: dict) -> None:
    """One caption chunk of an index folder: packed ``F x D`` frames (stored float16), ``M`` lengths, the
    captions' pooled, L2-normalized frames, then the chunk's JSON (``info``: ids, texts, audio, images),
    written last.  The one writer of this layout."""
    captions = Path(folder) / "captions"
    frames, lengths = frames.detach().cpu().float(), lengths.detach().cpu()
    save_npy(captions / f"{name}.frames.npy", frames.numpy().astype(np.float16))
    save_npy(captions / f"{name}.lengths.npy", lengths.numpy().astype(np.int64))
    owner = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    means = torch.zeros(len(lengths), frames.shape[1]).index_add(0, owner, frames)
    save_npy(captions / f"{name}.pooled.npy", F.normalize(means, dim=-1).numpy())
    write_json(captions / f"{name}.json", info)


# ----------------------------------------------------------------------------- building


class IndexWriter:
    """Adds images and captions to an index folder, chunk by chunk (resumable)."""

    def __init__(self, folder: str | Path, model: Model, chunk: int = 256, precision: str | None = None):
        """``precision``: how regions are stored, ``float16`` or ``int8`` (None: as the index at ``folder``
        does, float16 for a new one)."""
        self.folder = Path(folder)
        self.model = model
        self.chunk = chunk
        self.meta = self._open(precision)

    @property
    def precision(self) -> str:
        return self.meta["region_precision"]

    def _open(self, precision: str | None) -> dict:
        checkpoint_sha = sha256_file(self.model.checkpoint) if self.model.checkpoint else "untrained"
        if self.folder.is_dir():
            clean_stale_tmp(self.folder)  # left by a killed `vgs index`
        meta_path = self.folder / "index.json"
        if meta_path.exists():
            meta = read_meta(self.folder)
            if meta["checkpoint_sha256"] != checkpoint_sha:
                raise VGSError(f"{self.folder}: this index was built with another model ({meta['checkpoint']}); "
                               "use a new --out, or the same run")
            if precision is not None and precision != meta["region_precision"]:
                raise VGSError(f"{self.folder}: this index stores {meta['region_precision']} regions, "
                               f"not {precision}; use a new --out, or the same --regions")
            return meta
        if precision not in (None, *REGION_PRECISIONS):
            raise VGSError(f"--regions: expected one of {', '.join(REGION_PRECISIONS)}, got {precision!r}")
        return {"format": INDEX_FORMAT, "checkpoint": str(self.model.checkpoint), "checkpoint_sha256": checkpoint_sha,
                "embed_dim": self.model.embed_dim, "similarity": self.model.similarity_kind,
                "region_precision": precision or "float16",
                "image_chunks": [], "caption_chunks": [], "created": time.strftime("%Y-%m-%d %H:%M:%S")}

    def _save_meta(self) -> None:
        write_json(self.folder / "index.json", self.meta)

    def indexed_paths(self) -> set[str]:
        paths: set[str] = set()
        for name in self.meta["image_chunks"]:
            paths.update(json.loads((self.folder / "images" / f"{name}.json").read_text())["paths"])
        return paths

    def add_images(self, paths: Sequence[Path], progress: bool = True, root: str | Path | None = None) -> tuple[int, list[str]]:
        """Encode and add images not yet in the index. Returns (added, problems).

        ``root``: the folder the images come from (default: their common folder); the server serves
        only files that resolve inside a recorded root.
        """
        done = self.indexed_paths()
        resolved = [p.resolve() for p in paths]
        if resolved:
            root = Path(root).resolve() if root is not None else Path(os.path.commonpath([p.parent for p in resolved]))
            outside = [str(p) for p in resolved if not p.is_relative_to(root)]
            if outside:
                raise VGSError(f"{outside[0]}: outside the image folder {root} (a symlink?); not indexed")
            roots = self.meta.setdefault("image_roots", [])
            if str(root) not in roots:
                roots.append(str(root))
        todo = [str(p) for p in resolved if str(p) not in done]
        problems: list[str] = []
        added = 0
        bar = tqdm(total=len(todo), desc="index images", unit="img", disable=not progress)
        for c0 in range(0, len(todo), self.chunk):
            batch_paths, tensors = [], []
            for path in todo[c0: c0 + self.chunk]:
                try:
                    tensors.append(self.model.pixels([path])[0])
                    batch_paths.append(path)
                except InputError as exc:
                    problems.append(str(exc))
            if not tensors:
                bar.update(len(todo[c0: c0 + self.chunk]))
                continue
            regions = self.model.encode_images(torch.stack(tensors)).flatten(2).transpose(1, 2)  # n x R x D
            name = f"chunk-{len(self.meta['image_chunks']):05d}"
            write_image_chunk(self.folder, name, regions, batch_paths, self._grid(), precision=self.precision)
            self.meta["image_chunks"].append(name)
            self._save_meta()  # the chunk is durable before it is listed
            added += len(batch_paths)
            bar.update(len(todo[c0: c0 + self.chunk]))  # after encoding: the bar tracks the real work
        bar.close()
        return added, problems

    def _grid(self) -> tuple[int, int]:
        size = self.model.config.image.size
        out = self.model.encode_images(torch.zeros(1, 3, size, size))
        return int(out.shape[2]), int(out.shape[3])

    def add_captions(self, manifest_path: str | Path, progress: bool = True) -> tuple[int, list[str]]:
        """Encode the spoken captions of a manifest (for image->speech search)."""
        from .data.manifest import read_manifest

        manifest = read_manifest(manifest_path, strict=False)
        problems = list(manifest.problems)
        done: set[str] = set()
        for name in self.meta["caption_chunks"]:
            done.update(json.loads((self.folder / "captions" / f"{name}.json").read_text())["ids"])
        rows = [row for row in manifest.rows if row["id"] not in done]
        added = 0
        bar = tqdm(total=len(rows), desc="index captions", unit="cap", disable=not progress)
        for c0 in range(0, len(rows), self.chunk):
            kept, signals = [], []
            for row in rows[c0: c0 + self.chunk]:
                try:
                    signals.append(load_audio(manifest.audio_path(row)))
                    kept.append(row)
                except InputError as exc:
                    problems.append(str(exc))
            if not kept:
                bar.update(len(rows[c0: c0 + self.chunk]))
                continue
            packed = self.model.encode_audio(signals)
            name = f"chunk-{len(self.meta['caption_chunks']):05d}"
            write_caption_chunk(self.folder, name, packed.frames, packed.lengths, {
                "ids": [r["id"] for r in kept], "texts": [r.get("text") for r in kept],
                "audio": [str(manifest.audio_path(r).resolve()) for r in kept],
                "images": [str(manifest.image_path(r).resolve()) for r in kept]})
            self.meta["caption_chunks"].append(name)
            self._save_meta()
            added += len(kept)
            bar.update(len(rows[c0: c0 + self.chunk]))  # after encoding: the bar tracks the real work
        bar.close()
        return added, problems


def build_index(model: Model, out: str | Path, images: str | Path | None = None, captions: str | Path | None = None,
                progress: bool = True, codes: int = DEFAULT_CODE_DIM, precision: str | None = None) -> dict:
    """``vgs index``: add a folder of images and/or a caption manifest to the index at ``out``.

    ``codes``: PCA dimensions of the int8 region codes (:mod:`vgs.codecs`; 0: write none).
    ``precision``: how the regions are stored (:class:`IndexWriter`).
    """
    writer = IndexWriter(out, model, precision=precision)
    summary: dict = {"images_added": 0, "captions_added": 0, "problems": []}
    if images is not None:
        summary["images_added"], problems = writer.add_images(list_images(images), progress, root=images)
        summary["problems"] += problems
    if captions is not None:
        summary["captions_added"], problems = writer.add_captions(captions, progress)
        summary["problems"] += problems
    index = SearchIndex(out)
    if codes and index.image_count:
        index.build_codes(codes)
    index.faiss_images()  # build and save the first-stage indexes now, not at the first query
    if index.caption_count:
        index.faiss_captions()
    summary["images"] = index.image_count
    summary["captions"] = index.caption_count
    return summary


def read_meta(folder: Path) -> dict:
    path = Path(folder) / "index.json"
    if not path.is_file():
        raise VGSError(f"{folder}: not an index (no index.json); build one with `vgs index`")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VGSError(f"{path}: corrupt index metadata ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
        raise VGSError(f"{path}: not a vgs index (expected format {INDEX_FORMAT!r})")
    dim = meta.get("embed_dim")
    if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= MAX_EMBED_DIM:
        raise VGSError(f"{path}: field 'embed_dim': expected an integer 1..{MAX_EMBED_DIM}, got {str(dim)[:40]}")
    for key in ("image_chunks", "caption_chunks"):
        names = meta.get(key)
        if not isinstance(names, list) or not all(isinstance(n, str) and CHUNK_NAME.fullmatch(n) for n in names):
            raise VGSError(f"{path}: field {key!r}: expected a list of chunk names like 'chunk-00000'")
    roots = meta.get("image_roots", [])
    if not isinstance(roots, list) or not all(isinstance(r, str) and Path(r).is_absolute() for r in roots):
        raise VGSError(f"{path}: field 'image_roots': expected a list of absolute folder paths")
    if not isinstance(meta.get("checkpoint_sha256"), str):
        raise VGSError(f"{path}: field 'checkpoint_sha256': expected a string")
    meta.setdefault("region_precision", "float16")  # indexes written before int8 regions
    if meta["region_precision"] not in REGION_PRECISIONS:
        raise VGSError(f"{path}: field 'region_precision': expected one of {', '.join(REGION_PRECISIONS)}, "
                       f"got {str(meta['region_precision'])[:40]}")
    return meta


def _chunk_file(folder: Path, path: Path) -> Path:
    """``path`` after checking that it resolves inside the index ``folder`` (no symlink out)."""
    if not path.resolve().is_relative_to(folder.resolve()):
        raise VGSError(f"{path}: resolves outside the index folder {folder}; refusing to read it")
    if not path.is_file():
        raise VGSError(f"{path}: missing from the index; rebuild it with `vgs index`")
    return path


def _chunk_info(folder: Path, path: Path, lists: tuple[str, ...]) -> dict:
    """A chunk's JSON, checked: an object whose ``lists`` are lists of equal length."""
    try:
        info = json.loads(_chunk_file(folder, path).read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:
        raise VGSError(f"{path}: corrupt chunk metadata (not JSON: {str(exc)[:80]})") from exc
    if not isinstance(info, dict) or not all(isinstance(info.get(key), list) for key in lists):
        raise VGSError(f"{path}: corrupt chunk metadata (expected an object with lists {', '.join(lists)})")
    if len({len(info[key]) for key in lists}) != 1:
        raise VGSError(f"{path}: corrupt chunk metadata ({', '.join(lists)} differ in length)")
    return info


def _chunk_array(folder: Path, path: Path, shape: tuple[int | None, ...], mmap: bool = False) -> np.ndarray:
    """A chunk's array, checked against ``shape`` (None: any size) and a numeric dtype."""
    array = load_npy(_chunk_file(folder, path), mmap=mmap)
    if array.ndim != len(shape) or any(want is not None and have != want for have, want in zip(array.shape, shape)) \
            or array.dtype.kind not in "fiu":
        wanted = " x ".join("n" if w is None else str(w) for w in shape)
        raise VGSError(f"{path}: corrupt index array (shape {tuple(array.shape)} {array.dtype}, expected {wanted} numbers)")
    return array


def open_index(index_dir: str | Path, run: str | Path | None = None, device: str | None = None) -> tuple[Model, "SearchIndex"]:
    """Load an index and the model to query it with (``run``, default: the one it was built with).

    Used by ``vgs search`` and ``vgs serve``: a checkpoint other than the one the index was built with
    is refused, since its embeddings would not match the index's.
    """
    folder = Path(index_dir)
    meta = read_meta(folder)
    untrained = meta["checkpoint_sha256"] == "untrained"
    if run is None:
        if untrained or meta.get("checkpoint") in (None, "None"):
            raise VGSError(f"{folder}: this index was built with an untrained model; give the run to use")
        run = meta["checkpoint"]
    model = load(run, device=device)
    if model.checkpoint is not None and meta["checkpoint_sha256"] != sha256_file(model.checkpoint):
        raise VGSError(f"{folder}: this index was built with another model ({meta.get('checkpoint')}), not "
                       f"{model.checkpoint}; use that run, or rebuild the index with `vgs index`")
    return model, SearchIndex(folder)


# ----------------------------------------------------------------------------- searching


@dataclass
class SearchIndex:
    """A loaded index. Region embeddings stay memory-mapped; pooled vectors are in memory."""

    folder: Path
    meta: dict = field(init=False)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        self.meta = read_meta(self.folder)
        self._load_images()
        self._load_captions()
        self._faiss: dict[str, object] = {}
        self._regions: RegionSearch | None = None
        self._representatives: tuple[Int8Representatives, torch.Tensor] | None = None  # and their basis

    def _load_images(self) -> None:
        folder = self.folder / "images"
        dim = self.meta["embed_dim"]
        self.image_paths: list[str] = []
        regions, pooled_parts = [], []
        for name in self.meta["image_chunks"]:
            info = _chunk_info(self.folder, folder / f"{name}.json", ("paths",))
            grid = info.get("grid")
            if not (isinstance(grid, list) and len(grid) == 2 and all(isinstance(g, int) and 1 <= g <= 1024 for g in grid)) \
                    or (regions and tuple(grid) != self.grid) or not all(isinstance(p, str) for p in info["paths"]):
                raise VGSError(f"{folder / (name + '.json')}: corrupt chunk metadata (expected string paths and the "
                               "same [rows, cols] grid as the other chunks)")
            n = len(info["paths"])
            self.image_paths += info["paths"]
            self.grid = tuple(grid)
            regions.append(self._chunk_regions(name, n, grid[0] * grid[1]))
            pooled_parts.append(_chunk_array(self.folder, folder / f"{name}.pooled.npy", (n, dim)))
        self.image_regions = regions
        self.region_dtype = np.result_type(np.float16, *(r.dtype for r in regions))  # as gathered: float32 for int8 (decoded)
        self.image_offsets = np.cumsum([0] + [len(r) for r in regions])
        self.image_pooled = np.concatenate(pooled_parts) if pooled_parts else np.zeros((0, dim), np.float32)

    def _chunk_regions(self, name: str, n: int, per_image: int) -> np.ndarray | Int8Regions:
        """A chunk's ``n x R x D`` regions, memory-mapped: float16 as stored, or :class:`Int8Regions`.  A plain
        view of the mapping: numpy's ``memmap`` indexing costs about 17 us a gather in Python."""
        path = self.folder / "images" / f"{name}.regions.npy"
        stored = _chunk_array(self.folder, path, (n, per_image, self.meta["embed_dim"]), mmap=True).view(np.ndarray)
        if self.meta["region_precision"] == "float16":
            return stored
        scales_path = self.folder / "images" / f"{name}.scales.npy"
        scales = _chunk_array(self.folder, scales_path, (n, per_image))
        if stored.dtype != np.int8:
            raise VGSError(f"{path}: corrupt index array (expected int8 regions, got {stored.dtype})")
        if scales.dtype != np.float32 or not (np.isfinite(scales).all() and (scales > 0).all()):
            raise VGSError(f"{scales_path}: corrupt index array (expected finite positive float32 scales)")
        return Int8Regions(stored, scales)

    def _load_captions(self) -> None:
        folder = self.folder / "captions"
        self.caption_ids: list[str] = []
        self.caption_texts: list[str | None] = []
        self.caption_audio: list[str] = []
        self.caption_images: list[str] = []
        frames, lengths, pooled_parts = [], [], []
        dim = self.meta["embed_dim"]
        for name in self.meta["caption_chunks"]:
            info = _chunk_info(self.folder, folder / f"{name}.json", ("ids", "texts", "audio", "images"))
            n = len(info["ids"])
            self.caption_ids += info["ids"]
            self.caption_texts += info["texts"]
            self.caption_audio += info["audio"]
            self.caption_images += info["images"]
            length = _chunk_array(self.folder, folder / f"{name}.lengths.npy", (n,))
            if length.dtype.kind not in "iu" or (n and int(length.min()) < 1):
                raise VGSError(f"{folder / (name + '.lengths.npy')}: corrupt index array (expected positive integer lengths)")
            frames.append(_chunk_array(self.folder, folder / f"{name}.frames.npy", (int(length.sum()), dim)))
            lengths.append(length.astype(np.int64))
            pooled_parts.append(_chunk_array(self.folder, folder / f"{name}.pooled.npy", (n, dim)))
        self.caption_frames = torch.from_numpy(np.concatenate(frames)).float() if frames else torch.zeros(0, dim)
        self.caption_lengths = torch.from_numpy(np.concatenate(lengths)) if lengths else torch.zeros(0, dtype=torch.long)
        self.caption_starts = torch.cumsum(self.caption_lengths, 0) - self.caption_lengths
        self.caption_pooled = np.concatenate(pooled_parts) if pooled_parts else np.zeros((0, dim), np.float32)

    def image_roots(self) -> list[Path]:
        """Folders the indexed images come from (older indexes: the images' common folder)."""
        roots = self.meta.get("image_roots")
        if roots:
            return [Path(r) for r in roots]
        return [Path(os.path.commonpath([Path(p).parent for p in self.image_paths]))] if self.image_paths else []

    def image_file(self, i: int) -> Path:
        """The file of image ``i``, resolved (symlinks followed) and checked to lie inside an image root."""
        path = Path(self.image_paths[i]).resolve()
        if path.suffix.lower() not in IMAGE_SUFFIXES or not any(path.is_relative_to(r) for r in self.image_roots()):
            raise VGSError(f"{self.image_paths[i]}: resolves outside the indexed image folders; not served")
        return path

    @property
    def image_count(self) -> int:
        return len(self.image_paths)

    @property
    def caption_count(self) -> int:
        return len(self.caption_ids)

    def regions_of(self, indices: Sequence[int] | np.ndarray, as_stored: bool = False) -> torch.Tensor:
        """Region embeddings of the given images: ``n x D x H x W`` float32 (one gather per chunk file).

        float16 regions are gathered as stored and converted by torch: numpy's float16 -> float32 made
        this 2x slower (2,000 images of 49 x 64: 25.8 ms, most of a 100k-image query's re-ranking).  With
        ``as_stored`` they stay float16, a channels-last view of the gathered rows (no conversion or copy),
        which :func:`vgs.similarity.similarity_matrix` scores on CPU by its float16 kernel."""
        indices = np.asarray(indices, dtype=np.int64)
        dim = self.meta["embed_dim"]
        out = gather_rows(self.image_regions, self.image_offsets, indices,
                          np.zeros((len(indices), self.grid[0] * self.grid[1], dim), dtype=self.region_dtype))
        if as_stored and out.dtype == np.float16:
            return torch.from_numpy(out).view(len(indices), *self.grid, dim).permute(0, 3, 1, 2)
        return torch.from_numpy(out).float().transpose(1, 2).reshape(len(indices), dim, *self.grid)

    def captions_of(self, indices: Sequence[int]) -> PackedFrames:
        pieces = [self.caption_frames[int(self.caption_starts[i]): int(self.caption_starts[i] + self.caption_lengths[i])]
                  for i in indices]
        lengths = self.caption_lengths[list(indices)]
        owner = torch.repeat_interleave(torch.arange(len(indices)), lengths)
        return PackedFrames(torch.cat(pieces), owner, lengths)

    # -------------------------------------------------------------- FAISS first stage

    def _faiss_index(self, kind: str, vectors: np.ndarray):  # noqa: ANN202
        import faiss

        if kind in self._faiss:
            return self._faiss[kind]
        path = self.folder / f"faiss-{kind}.index"
        signature = f"{len(vectors)}:{self.meta[('image' if kind == 'images' else 'caption') + '_chunks'][-1:]}"
        sig_path = self.folder / f"faiss-{kind}.signature"
        index = None
        if path.exists() and sig_path.exists() and sig_path.read_text(errors="replace") == signature:
            index = self._read_faiss(path, vectors)
        if index is None:
            index = make_faiss_index(vectors)
            tmp = path.with_name(f".{path.name}.tmp")
            faiss.write_index(index, str(tmp))
            tmp.replace(path)
            write_text(sig_path, signature)
        self._faiss[kind] = index
        return index

    def _read_faiss(self, path: Path, vectors: np.ndarray):  # noqa: ANN202
        """The saved FAISS index, or None (it is rebuilt) when it is unreadable or does not match the vectors."""
        import faiss

        try:
            _chunk_file(self.folder, path)
            index = faiss.read_index(str(path))  # FAISS's own binary format: no pickle
        except (RuntimeError, VGSError, MemoryError) as exc:
            log.warning("%s: unreadable FAISS index (%s); rebuilding it", path, str(exc).splitlines()[0][:120] if str(exc) else exc)
            return None
        if index.d != self.meta["embed_dim"] or index.ntotal != len(vectors):
            log.warning("%s: FAISS index does not match the chunks (d=%d, n=%d); rebuilding it", path, index.d, index.ntotal)
            return None
        if hasattr(index, "nprobe"):
            index.nprobe = max(8, index.nlist // 16)
        return index

    def faiss_images(self):  # noqa: ANN201
        return self._faiss_index("images", self.image_pooled)

    def faiss_captions(self):  # noqa: ANN201
        return self._faiss_index("captions", self.caption_pooled)

    # -------------------------------------------------------------- region first stage (vgs.first_stage)

    def build_codes(self, dim: int = DEFAULT_CODE_DIM) -> RegionCodec:
        """Write int8 region codes for every image chunk that lacks them (:func:`vgs.codecs.build_codes`)."""
        codec = build_codes(self.folder, self.meta["image_chunks"], self.image_regions, dim)
        self._regions = None
        return codec

    def region_search(self) -> RegionSearch:
        """The region-level first stages, over the codes when every chunk has them, else the full regions."""
        if self._regions is None:
            codec = RegionCodec.load(self.folder, self.meta["embed_dim"])
            codes = None
            if codec is not None:
                codes = load_codes(self.folder, self.meta["image_chunks"], [len(r) for r in self.image_regions],
                                   self.grid[0] * self.grid[1], codec)
            self._regions = RegionSearch(self.image_regions, codec, codes)
        return self._regions

    def _representative_chunks(self) -> list[np.ndarray]:
        """Each image chunk's representative indices, ``n x m`` (:func:`representative_array`), in index order.

        Read from the chunk's ``representatives.npy``: its first ``m`` columns, since farthest-point picks
        are nested (a file of more picks holds the first ``m``).  A chunk without a readable one (an index
        built before them, fewer picks, or a damaged file) gets them computed from its regions, and written
        when the folder allows.  Indices are checked against the grid before they address a region.
        """
        regions_per_image = self.grid[0] * self.grid[1] if self.image_regions else 0
        width, out = min(REPRESENTATIVES, regions_per_image), []
        for name, regions in zip(self.meta["image_chunks"], self.image_regions):
            path = self.folder / "images" / f"{name}.representatives.npy"
            try:
                array = _chunk_array(self.folder, path, (len(regions), None))
                if array.dtype.kind != "u" or array.shape[1] < width or (array.size and int(array.max()) >= regions_per_image):
                    raise VGSError(f"{path}: corrupt index array (expected at least {width} region indices per image, "
                                   f"each below {regions_per_image})")
                array = array[:, :width]
            except VGSError as exc:
                if path.exists():
                    log.warning("%s; recomputing it from the regions", exc)
                array = representative_array(_float_regions(regions))
                try:
                    save_npy(path, array)
                    path.with_name(f"{name}.centroids.npy").unlink(missing_ok=True)  # what indexes kept before them
                except OSError:
                    pass  # a read-only index: kept in memory only
            out.append(array)
        return out

    def image_representatives(self) -> Int8Representatives:
        """The centroid stage's image side, in memory: every image's representative regions projected on
        :meth:`centroid_basis`, ``N x m x d``, int8 with one scale per image.  Built on first use from the
        regions (one pass over them)."""
        return self._load_representatives()[0]

    def centroid_basis(self) -> torch.Tensor:
        """The ``d x D`` principal basis the centroid stage projects regions and frames on
        (:func:`vgs.codecs.principal_basis`, fitted on representatives of up to 8 chunks spread over
        the index)."""
        return self._load_representatives()[1]

    def _load_representatives(self) -> tuple[Int8Representatives, torch.Tensor]:
        if self._representatives is None:
            picks, dim = self._representative_chunks(), self.meta["embed_dim"]

            def gathered(c: int) -> torch.Tensor:  # chunk c's representatives, n x m x D float32
                index = torch.from_numpy(picks[c].astype(np.int64))
                return _float_regions(self.image_regions[c]).gather(1, index[..., None].expand(-1, -1, dim))

            spread = np.unique(np.linspace(0, max(len(picks) - 1, 0), min(len(picks), 8)).round().astype(int))
            sample = torch.cat([gathered(c).reshape(-1, dim) for c in spread]) if len(spread) else torch.zeros(1, dim)
            basis = principal_basis(sample[torch.linspace(0, len(sample) - 1, min(len(sample), BASIS_SAMPLE)).long()], PROJECTED_DIMS)
            width = picks[0].shape[1] if picks else 0
            parts = [Int8Representatives.quantize(project(gathered(c), basis)) for c in range(len(picks))]
            self._representatives = Int8Representatives.cat(parts, width, len(basis)), basis
        return self._representatives

    def centroid_candidates(self, frames: torch.Tensor, count: int, k: int = 10) -> np.ndarray:
        """Images worth scoring exactly for one caption's ``T x D`` frames, in index order
        (:func:`vgs.centroids.candidates`): the best ``count`` by the centroid bound, narrowed by MISA on
        the int8 region codes to ``max(CODE_RERANK_DEPTH, 2 k)`` when the index has codes (first on their
        leading ``CODE_LEAD_DIMS`` coordinates when the codes have more, principal ones)."""
        regions, query = self.region_search(), frames.numpy()
        coarse = lead = None
        if regions.codes is not None:
            coarse = lambda ids: regions.code_scores(ids, query, int8_query=True)  # noqa: E731
            dims = regions.codec.leading(centroid_stage.CODE_LEAD_DIMS)
            if dims is not None:
                lead = lambda ids: regions.code_scores(ids, query, int8_query=True, dims=dims)  # noqa: E731
        return centroid_stage.candidates(self.image_representatives(), frames, count, self.centroid_basis(), coarse,
                                         max(centroid_stage.CODE_RERANK_DEPTH, 2 * k), lead)

    # -------------------------------------------------------------- queries

    def search_audio(self, model: Model, frames: PackedFrames, k: int = 10, candidates: int = DEFAULT_CANDIDATES,
                     exhaustive: bool = False, first_stage: str = "auto") -> list[Hit]:
        """Speech -> images. ``frames``: one encoded caption.

        ``first_stage``: ``auto`` (default: ``exact`` up to :data:`EXACT_AUTO_MAX_IMAGES` images, where it
        costs about what the others do, else ``centroids``), ``exact`` (the exhaustive MISA top-k, see
        :mod:`vgs.first_stage`), ``centroids`` (``candidates`` by a lower bound of MISA from representative
        regions and frame centroids, :mod:`vgs.centroids`, re-ranked), ``compact`` (exact on the int8 codes), ``ivf``
        (approximate region index) or ``pooled`` (``candidates`` by pooled embedding, re-ranked);
        ``exhaustive`` scores every image. Models whose similarity is not MISA use ``pooled``.
        """
        if self.image_count == 0:
            raise VGSError(f"{self.folder}: the index holds no images")
        if first_stage == "auto":
            first_stage = "exact" if self.image_count <= EXACT_AUTO_MAX_IMAGES else "centroids"
        if first_stage not in FIRST_STAGES:
            raise VGSError(f"first stage: expected auto or one of {', '.join(FIRST_STAGES)}, got {first_stage!r}")
        if model.similarity_kind != "misa":
            first_stage = "pooled"  # the region stages and the centroid bound hold for MISA only
        if first_stage == "exact" and not exhaustive and self.region_search().index_bytes() > self.region_search().max_bytes:
            log.warning("%s: too many images for the exact first stage's in-memory region index; using centroids", self.folder)
            first_stage = "centroids"
        if not exhaustive and first_stage not in ("pooled", "centroids"):
            found = self.region_search().search(frames.frames.detach().cpu().float().numpy(), k, first_stage,
                                                lambda ids: _chunked_scores(model, self, ids, frames))
            return [Hit(int(i), float(s), path=self.image_paths[int(i)]) for i, s in zip(found.ids, found.scores)]
        if exhaustive:
            ids = np.arange(self.image_count)
        elif first_stage == "centroids":
            ids = self.centroid_candidates(frames.frames.detach().cpu().float(), candidates, k)
        else:
            query = pooled(frames.frames, 0).numpy()[None, :]
            _, found = self.faiss_images().search(query, min(candidates, self.image_count))
            ids = found[0][found[0] >= 0]
        scores = _chunked_scores(model, self, ids, frames)
        order = np.lexsort((ids, -scores))[:k]  # ties: the lower image index first, as the exact stages do
        return [Hit(int(ids[o]), float(scores[o]), path=self.image_paths[int(ids[o])]) for o in order]

    def search_image(self, model: Model, regions: torch.Tensor, k: int = 10, candidates: int = 500,
                     exhaustive: bool = False) -> list[Hit]:
        """Image -> spoken captions. ``regions``: ``1 x D x H x W``."""
        if self.caption_count == 0:
            raise VGSError(f"{self.folder}: the index holds no spoken captions; add some with `vgs index ... --captions MANIFEST`")
        if exhaustive:
            ids = np.arange(self.caption_count)
        else:
            query = pooled(regions.flatten(2)[0], 1).numpy()[None, :]
            _, found = self.faiss_captions().search(query, min(candidates, self.caption_count))
            ids = found[0][found[0] >= 0]
        scores = model.caption_scores(regions, self.captions_of(ids.tolist()))[0].numpy()
        order = np.argsort(-scores, kind="stable")[:k]
        return [Hit(int(ids[o]), float(scores[o]), id=self.caption_ids[int(ids[o])], text=self.caption_texts[int(ids[o])],
                    path=self.caption_images[int(ids[o])]) for o in order]


class EmbeddingScorer:
    """What searching an index needs of a :class:`vgs.api.Model` once the query is encoded: scores of one
    similarity kind on the stored embeddings (CPU).  For benchmarks and tests that hold embeddings only."""

    device = torch.device("cpu")

    def __init__(self, kind: str = "misa"):
        self.similarity_kind = kind

    def scores(self, regions: torch.Tensor, captions: PackedFrames) -> torch.Tensor:
        """``N x D x H x W`` regions and ``M`` packed captions -> ``N x M`` scores."""
        return similarity_matrix(regions, captions, kind=self.similarity_kind)


def _chunked_scores(model: Model, index: SearchIndex, ids: np.ndarray, frames: PackedFrames, chunk: int = 2048) -> np.ndarray:
    """Matchmap scores of one caption against the images ``ids`` (bounded memory)."""
    out = []
    for c0 in range(0, len(ids), chunk):
        regions = index.regions_of(ids[c0: c0 + chunk], as_stored=model.device.type == "cpu")
        out.append(model.scores(regions, frames)[:, 0].numpy())
    return np.concatenate(out) if out else np.zeros(0)


def make_faiss_index(vectors: np.ndarray):  # noqa: ANN201
    """Exact inner product below :data:`IVF_THRESHOLD` vectors, IVF-Flat (inner product) above."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1] if vectors.ndim == 2 else 1
    if len(vectors) < IVF_THRESHOLD:
        index = faiss.IndexFlatIP(dim)
    else:
        nlist = int(4 * np.sqrt(len(vectors)))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = vectors[np.random.default_rng(0).choice(len(vectors), size=min(len(vectors), 50 * nlist), replace=False)]
        index.train(sample)
        index.nprobe = max(8, nlist // 16)
    if len(vectors):
        index.add(vectors)
    return index
