"""Real-model encodings for the scale benchmark, cached once as a ``vgs index`` folder, and synthetic galleries
drawn to match a real index's statistics.

    python benchmarks/scale_data.py DATA_DIR RUN OUT [--split dev] [--images 1000] [--captions 1000]

writes OUT as an ordinary index (``vgs search RUN --index OUT`` works on it): the images' region
embeddings come from the data set's cached frozen-trunk outputs (``DATA_DIR/cache/image-*``, the cache
``vgs train`` builds; only the model's 1x1 head runs here), the spoken captions' frames from its cached
log-mels through the model's audio net.  Nothing is re-encoded on a second run: the benchmark reads OUT.
When the trunk cache is missing the images are encoded from their files (about 30 images/s on 2 cores).

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

from vgs.io import save_npy, sha256_file, write_json  # noqa: E402
from vgs.search import INDEX_FORMAT, pooled  # noqa: E402
from vgs.similarity import PackedFrames  # noqa: E402

CHUNK = 256


def _trunk_features(model, data_dir: Path, split: str, image_ids: list[str]) -> np.ndarray | None:  # noqa: ANN001
    """The cached trunk outputs of ``image_ids`` (``n x C x h x w`` float16) when a cache of this trunk exists."""
    from vgs.data.pipeline import trunk_identity

    identity = trunk_identity(model.config, model.net.image.trunk)
    for settings in sorted((data_dir / "cache").glob(f"image-*/{split}.settings.json")):
        saved = json.loads(settings.read_text())
        if saved.get("trunk") == identity:
            ids = json.loads((settings.parent / f"{split}.ids.json").read_text())
            where = {item: i for i, item in enumerate(ids)}
            if all(i in where for i in image_ids):
                array = np.load(settings.parent / f"{split}.npy", mmap_mode="r", allow_pickle=False)
                return np.asarray(array[[where[i] for i in image_ids]])
    return None


def build_real_index(data_dir: Path, run: str, out: Path, split: str = "dev", images: int = 1000, captions: int = 1000) -> None:
    """Write ``out`` (a vgs index: image regions + spoken captions of ``split``) from the data set's caches."""
    from vgs.api import load
    from vgs.data.manifest import load_split
    from vgs.features import AudioFeatureStore, cache_folder, pad_features

    model = load(run, device="cpu")
    manifest = load_split(data_dir, split, strict=False)
    image_ids = list(dict.fromkeys(row["image_id"] for row in manifest.rows))[:images]
    began = time.perf_counter()
    trunk = _trunk_features(model, data_dir, split, image_ids)
    rows_by_image = {row["image_id"]: row for row in manifest.rows}
    paths = [str(manifest.image_path(rows_by_image[i]).resolve()) for i in image_ids]
    meta = {"format": INDEX_FORMAT, "checkpoint": str(model.checkpoint), "checkpoint_sha256": sha256_file(model.checkpoint),
            "embed_dim": model.net.config.embed_dim, "similarity": model.net.config.similarity, "image_chunks": [],
            "caption_chunks": [], "image_roots": [str(Path(paths[0]).parent)], "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    with torch.no_grad():
        for c0 in range(0, len(image_ids), CHUNK):
            if trunk is not None:
                emb = model.net.encode_image_features(torch.from_numpy(trunk[c0: c0 + CHUNK]).float())
            else:
                emb = model.encode_images(paths[c0: c0 + CHUNK])
            regions = emb.float().flatten(2).transpose(1, 2)  # n x R x D
            name = f"chunk-{len(meta['image_chunks']):05d}"
            save_npy(out / "images" / f"{name}.regions.npy", regions.numpy().astype(np.float16))
            save_npy(out / "images" / f"{name}.pooled.npy", pooled(regions, 1).numpy())
            write_json(out / "images" / f"{name}.json", {"paths": paths[c0: c0 + CHUNK], "grid": list(emb.shape[2:])})
            meta["image_chunks"].append(name)
        print(f"images: {len(image_ids)} in {time.perf_counter() - began:.1f} s ({'cached trunk' if trunk is not None else 'files'})")
        began = time.perf_counter()
        store = AudioFeatureStore(cache_folder(data_dir, model.config.features), split)
        keep = set(image_ids)
        rows = [row for row in manifest.rows if row["image_id"] in keep and row["id"] in store.index][:captions]
        for c0 in range(0, len(rows), CHUNK):
            part = rows[c0: c0 + CHUNK]
            frames_list, length_list = [], []
            for b0 in range(0, len(part), 32):
                feats, lengths = pad_features([store.get(row["id"]) for row in part[b0: b0 + 32]], multiple=16)
                emb, out_lengths = model.net.encode_audio(feats, lengths)
                packed = PackedFrames.from_padded(emb.float(), out_lengths)
                frames_list.append(packed.frames)
                length_list.append(packed.lengths)
            frames, lens = torch.cat(frames_list), torch.cat(length_list)
            name = f"chunk-{len(meta['caption_chunks']):05d}"
            folder = out / "captions"
            save_npy(folder / f"{name}.frames.npy", frames.numpy().astype(np.float16))
            save_npy(folder / f"{name}.lengths.npy", lens.numpy().astype(np.int64))
            owner = torch.repeat_interleave(torch.arange(len(lens)), lens)
            means = torch.zeros(len(lens), frames.shape[1]).index_add(0, owner, frames)
            save_npy(folder / f"{name}.pooled.npy", torch.nn.functional.normalize(means, dim=-1).numpy())
            write_json(folder / f"{name}.json", {
                "ids": [r["id"] for r in part], "texts": [r.get("text") for r in part],
                "audio": [str(manifest.audio_path(r).resolve()) for r in part],
                "images": [str(manifest.image_path(r).resolve()) for r in part]})
            meta["caption_chunks"].append(name)
        print(f"captions: {len(rows)} in {time.perf_counter() - began:.1f} s")
    write_json(out / "index.json", meta)


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
    parser.add_argument("data", type=Path)
    parser.add_argument("run")
    parser.add_argument("out", type=Path)
    parser.add_argument("--split", default="dev")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--captions", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    build_real_index(args.data, args.run, args.out, args.split, args.images, args.captions)


if __name__ == "__main__":
    main()
