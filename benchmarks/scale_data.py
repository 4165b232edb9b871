"""Real-model encodings for the scale benchmark, cached once as a ``vgs index`` folder, and synthetic galleries
drawn to match a real index's statistics.

    python benchmarks/scale_data.py DATA_DIR RUN OUT [--split dev] [--images 1000] [--captions 1000]

writes OUT as an ordinary index (``vgs search RUN --index OUT`` works on it): the images' region
embeddings come from the data set's cached frozen-trunk outputs (``DATA_DIR/cache/image-*``, the cache
``vgs train`` builds; only the model's 1x1 head runs here), the spoken captions' frames from its cached
audio features (computed once when the data set has none for this model) through the model's audio net.
Nothing is re-encoded on a second run: the benchmark reads OUT. When the trunk cache is missing the images
are encoded from their files (about 20-30 images/s on 2 cores).

:func:`synthetic_regions` makes region embeddings for galleries larger than what can be encoded here
(see its docstring for how they match the real statistics).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vgs.io import sha256_file, write_json  # noqa: E402
from vgs.search import INDEX_FORMAT, write_caption_chunk, write_image_chunk  # noqa: E402
from vgs.similarity import PackedFrames  # noqa: E402

CHUNK = 256


def _trunk_caches(model, data_dir: Path, split: str) -> list[tuple[np.ndarray, dict[str, int]]]:  # noqa: ANN001
    """Every cache of this model's trunk for ``split`` in the data set: its outputs (memory-mapped) and each image
    id's row.  Looked up once per model and split (the trunk's identity hashes its weights), not per chunk."""
    from vgs.data.pipeline import trunk_identity

    key = (id(model), data_dir, split)
    if key in _TRUNK_CACHES:
        return _TRUNK_CACHES[key][1]
    identity, found = trunk_identity(model.config, model.net.image.trunk), []
    for settings in sorted((data_dir / "cache").glob(f"image-*/{split}.settings.json")):
        if json.loads(settings.read_text()).get("trunk") == identity:
            ids = json.loads((settings.parent / f"{split}.ids.json").read_text())
            found.append((np.load(settings.parent / f"{split}.npy", mmap_mode="r", allow_pickle=False),
                          {item: i for i, item in enumerate(ids)}))
    _TRUNK_CACHES[key] = (model, found)  # the model kept, so its id is not reused while the entry lives
    return found


_TRUNK_CACHES: dict[tuple[int, Path, str], tuple[object, list[tuple[np.ndarray, dict[str, int]]]]] = {}


def _trunk_features(model, data_dir: Path, split: str, image_ids: list[str]) -> np.ndarray | None:  # noqa: ANN001
    """The cached trunk outputs of ``image_ids`` (``n x C x h x w`` float16) when a cache of this trunk holds them all."""
    for array, where in _trunk_caches(model, data_dir, split):
        if all(i in where for i in image_ids):
            return np.asarray(array[[where[i] for i in image_ids]])
    return None


def _real_regions(model, data_dir: Path, split: str, image_ids: list[str], paths: list[str]) -> torch.Tensor:  # noqa: ANN001
    """``n x D x H x W`` region embeddings of a split's images: from its cached trunk outputs (only the model's
    head runs) when the data set has this trunk's cache, else from the image files (trunk and head)."""
    trunk = _trunk_features(model, data_dir, split, image_ids)
    if trunk is not None:
        return model.net.encode_image_features(torch.from_numpy(trunk).float())
    return model.encode_images(paths, batch_size=32)


def _write_image_chunk(out: Path, meta: dict, emb: torch.Tensor, paths: list[str]) -> None:
    """One chunk of ``n x D x H x W`` image embeddings in IndexWriter's layout (fp16 regions, pooled vectors)."""
    name = f"chunk-{len(meta['image_chunks']):05d}"
    write_image_chunk(out, name, emb.float().flatten(2).transpose(1, 2), paths, tuple(emb.shape[2:]))
    meta["image_chunks"].append(name)


def _finished_chunks(out: Path) -> int:
    """How many full image chunks an interrupted build left (a short last chunk is redone: the gallery may grow)."""
    done = 0
    while (out / "images" / f"chunk-{done:05d}.json").is_file():
        done += 1
    if done and len(json.loads((out / "images" / f"chunk-{done - 1:05d}.json").read_text())["paths"]) < CHUNK:
        done -= 1
    return done


def _index_meta(model, image_root: str) -> dict:  # noqa: ANN001
    return {"format": INDEX_FORMAT, "checkpoint": str(model.checkpoint), "checkpoint_sha256": sha256_file(model.checkpoint),
            "embed_dim": model.net.config.embed_dim, "similarity": model.net.config.similarity, "image_chunks": [],
            "caption_chunks": [], "image_roots": [image_root], "created": time.strftime("%Y-%m-%d %H:%M:%S")}


def _write_captions(out: Path, meta: dict, model, data_dir: Path, split: str, manifest, rows: list[dict]) -> None:  # noqa: ANN001
    """The spoken captions ``rows`` (their audio features, cached in ``data_dir``, through the model's audio net) as
    caption chunks."""
    from vgs.data.cache import build_feature_cache
    from vgs.features import pad_features

    began = time.perf_counter()
    store = build_feature_cache(manifest, split, model.config.features, workers=1)  # the data set's cache, built once
    rows = [row for row in rows if row["id"] in store.index]
    for c0 in range(0, len(rows), CHUNK):
        part = rows[c0: c0 + CHUNK]
        frames_list, length_list = [], []
        for b0 in range(0, len(part), 32):
            feats, lengths = pad_features([store.get(row["id"]) for row in part[b0: b0 + 32]], multiple=16)
            emb, out_lengths = model.net.encode_audio(feats, lengths)
            packed = PackedFrames.from_padded(emb.float(), out_lengths)
            frames_list.append(packed.frames)
            length_list.append(packed.lengths)
        name = f"chunk-{len(meta['caption_chunks']):05d}"
        write_caption_chunk(out, name, torch.cat(frames_list), torch.cat(length_list), {
            "ids": [r["id"] for r in part], "texts": [r.get("text") for r in part],
            "audio": [str(manifest.audio_path(r).resolve()) for r in part],
            "images": [str(manifest.image_path(r).resolve()) for r in part]})
        meta["caption_chunks"].append(name)
    print(f"captions: {len(rows)} in {time.perf_counter() - began:.1f} s")


def build_real_index(data_dir: Path, run: str, out: Path, split: str = "dev", images: int = 1000, captions: int = 1000) -> None:
    """Write ``out`` (a vgs index: image regions + spoken captions of ``split``) from the data set's caches."""
    from vgs.api import load
    from vgs.data.manifest import load_split

    model = load(run, device="cpu")
    manifest = load_split(data_dir, split, strict=False)
    image_ids = list(dict.fromkeys(row["image_id"] for row in manifest.rows))[:images]
    began = time.perf_counter()
    rows_by_image = {row["image_id"]: row for row in manifest.rows}
    paths = [str(manifest.image_path(rows_by_image[i]).resolve()) for i in image_ids]
    meta = _index_meta(model, str(Path(paths[0]).parent))
    with torch.no_grad():
        for c0 in range(0, len(image_ids), CHUNK):
            emb = _real_regions(model, data_dir, split, image_ids[c0: c0 + CHUNK], paths[c0: c0 + CHUNK])
            _write_image_chunk(out, meta, emb, paths[c0: c0 + CHUNK])
        print(f"images: {len(image_ids)} in {time.perf_counter() - began:.1f} s")
        keep = set(image_ids)
        _write_captions(out, meta, model, data_dir, split, manifest, [row for row in manifest.rows if row["image_id"] in keep][:captions])
    write_json(out / "index.json", meta)


def one_per_image_first(rows: list[dict]) -> list[dict]:
    """Manifest rows reordered: every image's first caption, then every image's second, and so on (so the
    first queries of a benchmark cover distinct images)."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["image_id"], []).append(row)
    depth = max(map(len, groups.values()), default=0)
    return [group[k] for k in range(depth) for group in groups.values() if k < len(group)]


DISTRACTOR_SPLIT_CODE = 7  # scenes' split codes are 0-2: distractors are scenes no split ever draws


def _render_distractors(args: tuple[int, int, int, int]) -> np.ndarray:
    """Scenes ``start ... start + count - 1`` of the distractor stream (``count x S x S x 3`` uint8)."""
    from vgs.data.scenes import ScenesConfig, render_scene

    seed, size, start, count = args
    if count <= 0:
        return np.zeros((0, size, size, 3), np.uint8)
    config = ScenesConfig(seed=seed, size=size)
    return np.stack([np.asarray(render_scene(np.random.default_rng([seed, DISTRACTOR_SPLIT_CODE, i, 0]), config)[0])
                     for i in range(start, start + count)])


def build_scenes_index(data_dir: Path, run: str, out: Path, images: int = 100_000, captions: int = 1000,
                       workers: int = 1, seed: int = 0) -> None:
    """Write ``out``: the scenes test split's images, then freshly drawn scenes up to ``images`` in all, and the
    test captions as queries (one caption per image first, so the first queries cover distinct images).

    The distractors come from the scenes generator itself (``render_scene``, deterministic in ``seed`` and
    their number; never written as files: their paths are ``distractor:N``), encoded by the model's trunk
    and head in chunks of 256.  Resumable: finished chunks are kept and counted on a restart.
    """
    from multiprocessing import Pool

    from PIL import Image

    from vgs.api import load
    from vgs.data.manifest import load_split

    model = load(run, device="cpu")
    manifest = load_split(data_dir, "test", strict=False)
    rows_by_image: dict[str, list[dict]] = {}
    for row in manifest.rows:
        rows_by_image.setdefault(row["image_id"], []).append(row)
    test_paths = [str(manifest.image_path(group[0]).resolve()) for group in rows_by_image.values()]
    with Image.open(test_paths[0]) as first_image:
        size = first_image.size[0]  # the scenes' side in pixels, as the data set was drawn
    meta = _index_meta(model, str(Path(test_paths[0]).parent))
    done = _finished_chunks(out)
    meta["image_chunks"] = [f"chunk-{c:05d}" for c in range(done)]
    total = max(images, len(test_paths))
    starts = list(range(done * CHUNK, total, CHUNK))
    began, encoded = time.perf_counter(), 0
    jobs = [(seed, size, max(0, c0 - len(test_paths)), min(c0 + CHUNK, total) - max(c0, len(test_paths))) for c0 in starts]
    with Pool(workers) as pool, torch.no_grad():
        rendered = pool.imap(_render_distractors, jobs)
        for c0, scenes in zip(starts, rendered):
            paths = test_paths[c0: c0 + CHUNK]
            pictures: list = list(paths)
            if len(paths) < CHUNK and c0 + len(paths) < total:
                first = max(0, c0 - len(test_paths))
                pictures += [Image.fromarray(a) for a in scenes]
                paths += [f"distractor:{first + i}" for i in range(len(scenes))]
            _write_image_chunk(out, meta, model.encode_images(pictures, batch_size=64), paths)
            encoded += len(paths)
            rate = encoded / (time.perf_counter() - began)
            print(f"images: {c0 + len(paths)}/{total} ({rate:.0f}/s)", flush=True)
        _write_captions(out, meta, model, data_dir, "test", manifest, one_per_image_first(manifest.rows)[:captions])
    write_json(out / "index.json", meta)


def distractor(image, rng: np.random.Generator):  # noqa: ANN001, ANN201
    """A photo made from ``image`` (PIL): a random crop of 40-90% of its area (aspect 3:4-4:3), a
    horizontal flip half the time, and brightness, contrast, saturation and hue shifts."""
    import torchvision.transforms.functional as TF

    w, h = image.size
    area = rng.uniform(0.4, 0.9) * w * h
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw, ch = min(w, round(np.sqrt(area * aspect))), min(h, round(np.sqrt(area / aspect)))
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out = image.crop((left, top, left + cw, top + ch))
    if rng.random() < 0.5:
        out = TF.hflip(out)
    out = TF.adjust_brightness(out, rng.uniform(0.7, 1.3))
    out = TF.adjust_contrast(out, rng.uniform(0.7, 1.3))
    out = TF.adjust_saturation(out, rng.uniform(0.6, 1.4))
    return TF.adjust_hue(out, rng.uniform(-0.05, 0.05))


def build_flickr8k_index(data_dir: Path, run: str, out: Path, images: int = 100_000, captions: int = 1000,
                         seed: int = 0) -> None:
    """Write ``out``: the dev images, then the train images (cached trunk outputs, or their files), then distractors
    made from both (:func:`distractor`, deterministic in ``seed`` and their number; paths
    ``distractor:N:SOURCE``) up to ``images``, and the dev captions as queries (one per image first).
    Resumable: finished chunks are kept and counted on a restart."""
    from PIL import Image

    from vgs.api import load
    from vgs.data.manifest import load_split

    model = load(run, device="cpu")
    splits = {name: load_split(data_dir, name, strict=False) for name in ("dev", "train")}
    sources: list[tuple[str, str, str]] = []  # (split, image_id, path)
    for name, manifest in splits.items():
        first = {}
        for row in manifest.rows:
            first.setdefault(row["image_id"], row)
        sources += [(name, i, str(manifest.image_path(row).resolve())) for i, row in first.items()]
    meta = _index_meta(model, str(Path(sources[0][2]).parent))
    done = _finished_chunks(out)
    meta["image_chunks"] = [f"chunk-{c:05d}" for c in range(done)]
    total = max(images, len(sources))
    began, encoded = time.perf_counter(), 0
    with torch.no_grad():
        for c0 in range(done * CHUNK, total, CHUNK):
            real = sources[c0: c0 + CHUNK]
            parts, paths = [], []
            for name in ("dev", "train"):
                ids = [image_id for split, image_id, _ in real if split == name]
                if ids:
                    files = [path for split, _, path in real if split == name]
                    parts.append(_real_regions(model, data_dir, name, ids, files))
                    paths += files
            made = range(max(c0, len(sources)), min(c0 + CHUNK, total))
            if len(made):
                pictures = []
                for n in made:
                    k = n - len(sources)
                    source = sources[k % len(sources)][2]
                    with Image.open(source) as image:
                        pictures.append(distractor(image.convert("RGB"), np.random.default_rng([seed, k])))
                    paths.append(f"distractor:{k}:{Path(source).name}")
                parts.append(model.encode_images(pictures, batch_size=32))
            _write_image_chunk(out, meta, torch.cat(parts), paths)
            encoded += len(made)
            rate = encoded / max(time.perf_counter() - began, 1e-9)
            print(f"images: {c0 + len(paths)}/{total} ({rate:.1f} distractors/s)", flush=True)
        manifest = splits["dev"]
        _write_captions(out, meta, model, data_dir, "dev", manifest, one_per_image_first(manifest.rows)[:captions])
    write_json(out / "index.json", meta)


def derive_index(source: Path, out: Path, precision: str = "int8", projection: torch.Tensor | None = None) -> None:
    """Write ``out``: the index ``source`` with its regions stored at ``precision`` and, with ``projection``
    (``k x D``), every region and caption frame replaced by ``normalize(projection @ x)``: what a model
    whose last layers are followed by that projection (then L2-normalized) gives, from the stored
    unit-length embeddings, since ``normalize(P (h / |h|)) = normalize(P h)``.  No image is re-encoded."""
    from torch.nn import functional as F

    from vgs.search import SearchIndex

    index = SearchIndex(source)
    meta = {**index.meta, "region_precision": precision, "image_chunks": [], "caption_chunks": list(index.meta["caption_chunks"])}
    if projection is not None:
        meta.update(embed_dim=int(projection.shape[0]), checkpoint=f"{index.meta['checkpoint']} + projection",
                    checkpoint_sha256=f"{index.meta['checkpoint_sha256']}+projection{tuple(projection.shape)}")
    begin = 0
    for name, regions in zip(index.meta["image_chunks"], index.image_regions):
        emb = torch.from_numpy(np.asarray(regions, dtype=np.float32))  # n x R x D
        if projection is not None:
            emb = F.normalize(emb @ projection.T, dim=-1)
        paths = index.image_paths[begin: begin + len(emb)]
        write_image_chunk(out, name, emb, paths, index.grid, precision=precision)
        meta["image_chunks"].append(name)
        begin += len(emb)
    for name in index.meta["caption_chunks"]:
        folder = source / "captions"
        frames = torch.from_numpy(np.load(folder / f"{name}.frames.npy").astype(np.float32))
        if projection is not None:
            frames = F.normalize(frames @ projection.T, dim=-1)
        write_caption_chunk(out, name, frames, torch.from_numpy(np.load(folder / f"{name}.lengths.npy")),
                            json.loads((folder / f"{name}.json").read_text()))
    write_json(out / "index.json", meta)


def fitted_projection(run: str, data: Path, dim: int, keep: Path) -> torch.Tensor:
    """The ``dim x D`` projection ``vgs export RUN --embed-dim dim --data DATA`` folds into the model, saved to
    ``keep`` (``weight``) and read back from there on a rerun."""
    from safetensors.torch import save

    from vgs.api import load
    from vgs.export import read_exported_weights
    from vgs.io import write_bytes
    from vgs.projection import model_projection

    if keep.exists():
        return read_exported_weights(keep)["weight"]
    projection = model_projection(load(run, device="cpu"), dim, str(data))
    keep.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(keep, save({"weight": projection.contiguous()}))
    return projection


def synthetic_regions(real: np.ndarray, start: int, count: int, seed: int = 0, noise: float = 0.35) -> np.ndarray:
    """``count x R x D`` float32 region sets for synthetic images ``start ...``, drawn to match ``real`` (``n x R x D``).

    Each synthetic image takes one real image's region set (a random base image), replaces a random
    third of its regions by regions of a second real image (so images share content, as photos of
    similar scenes do), keeps the spatial layout, then adds Gaussian noise shaped like the real regions'
    principal spectrum (``noise`` times the per-direction spread) and rescales every region to the norm
    of the region it came from.  So norms, the within-image correlation between regions and the
    dominant directions are the real index's, while no two synthetic images are the same.
    Deterministic in (``start``, ``seed``).
    """
    n, r, d = real.shape
    rng = np.random.default_rng([seed, start])
    base = rng.integers(0, n, count)
    other = rng.integers(0, n, count)
    mix = rng.random((count, r)) < 1 / 3
    out = np.where(mix[:, :, None], real[other], real[base]).astype(np.float32)
    norms = np.linalg.norm(out, axis=2, keepdims=True)
    basis, scale = _spectrum(real)
    shaped = (rng.standard_normal((count * r, len(scale)), dtype=np.float32) * scale) @ basis
    out += noise * shaped.reshape(count, r, d)
    out *= norms / np.maximum(np.linalg.norm(out, axis=2, keepdims=True), 1e-12)
    return out


_SPECTRA: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _spectrum(real: np.ndarray, components: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """The real regions' top principal directions (``c x D``) and their standard deviations (``c``)."""
    key = id(real)
    if key not in _SPECTRA:
        flat = real.reshape(-1, real.shape[-1]).astype(np.float32)
        sample = flat[np.random.default_rng(0).choice(len(flat), min(len(flat), 20000), replace=False)]
        centred = sample - sample.mean(0)
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        c = min(components, len(s))
        _SPECTRA[key] = (vt[:c].astype(np.float32), (s[:c] / np.sqrt(len(sample))).astype(np.float32))
    return _SPECTRA[key]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="a built data set with its caches (Flickr8k speech, or the scenes)")
    parser.add_argument("run")
    parser.add_argument("out", type=Path)
    parser.add_argument("--split", default="dev")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--captions", type=int, default=1000)
    parser.add_argument("--scenes", action="store_true", help="DATA is the built-in scenes: its test split plus distractor "
                        "scenes drawn by the generator, up to --images")
    parser.add_argument("--flickr8k", action="store_true", help="DATA is a built Flickr8k speech set: its dev and train "
                        "images, then distractors made from them (crops, flips, colour changes), up to --images")
    parser.add_argument("--workers", type=int, default=1, help="--scenes: processes drawing distractors")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for encoding")
    parser.add_argument("--derive-from", type=Path, help="DATA and RUN are ignored: write OUT from this index with its "
                        "regions stored at --regions, projected by --projection when given (see derive_index)")
    parser.add_argument("--regions", default="int8", choices=("float16", "int8"))
    parser.add_argument("--projection", type=Path, help="with --derive-from: a k x D projection (.safetensors, tensor 'weight')")
    parser.add_argument("--embed-dim", type=int, help="with --derive-from: fit the projection instead, as `vgs export RUN "
                        "--embed-dim K --data DATA` does (vgs.projection.model_projection on DATA's train split); it is "
                        "kept as OUT/projection.safetensors")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.derive_from:
        from vgs.export import read_exported_weights

        projection = read_exported_weights(args.projection)["weight"] if args.projection else None
        if args.embed_dim:
            projection = fitted_projection(args.run, args.data, args.embed_dim, args.out / "projection.safetensors")
        derive_index(args.derive_from, args.out, args.regions, projection)
        return
    if args.flickr8k:
        build_flickr8k_index(args.data, args.run, args.out, args.images, args.captions)
    elif args.scenes:
        build_scenes_index(args.data, args.run, args.out, args.images, args.captions, args.workers)
    else:
        build_real_index(args.data, args.run, args.out, args.split, args.images, args.captions)


if __name__ == "__main__":
    main()
