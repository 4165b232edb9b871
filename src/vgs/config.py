"""Run configuration: nested dataclasses, saved as YAML and reloaded strictly.

``Config`` holds everything that defines a run.  It round-trips through
``RUN/config.yaml``; unknown keys and wrong types are errors that name the key.
:func:`compose_config` is where a run's settings are composed, in layers: defaults <
``--preset`` < ``--config FILE`` (only the fields it sets) < flags < ``--set section.field=value``
(values are parsed as YAML, so ``--set train.lr=3e-4`` and ``--set model.bidirectional=false`` work).
Encoder names are validated against the registries of :mod:`vgs.models.factory`.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .augment import AugmentConfig
from .errors import VGSError, first_line
from .features import AudioFeatureConfig
from .images import ImageConfig
from .io import write_text
from .models.factory import AUDIO_ENCODERS, IMAGE_ENCODERS

LOSSES = ("hinge_sampled", "hinge_all", "infonce")
SIMILARITIES = ("misa", "sisa", "sima")


@dataclass
class ModelConfig:
    """The two branches. Shapes: images ``B x embed_dim x H x W``, audio ``B x embed_dim x T'``."""

    image_encoder: str = "efficientnet-lite0"
    audio_encoder: str = "resdavenet"
    embed_dim: int = 1024
    pretrained: bool = True  # ImageNet weights for the image trunk
    image_weights: str | None = None  # a local state_dict file instead of downloading
    freeze_trunk: bool = True  # keep the image trunk fixed (its outputs can then be cached)
    image_head_kernel: int = 0  # 0 = the encoder's default (1 for vgg16/resnet50, 3 for vgg19)
    image_stride: int = 32  # efficientnet-lite0 only: 16 adds a finer (S/16) map for localization
    image_top_blocks: int = 0  # EfficientNet-Lite: train the trunk's last K blocks and its conv head on cached outputs below them
    audio_channels: int = 512  # width of the conv audio nets' middle layers (DAVEnet: 512)
    audio_stack: int = 1  # resdavenet: frames stacked before the first layer (2: every layer and matchmap see half the frames)
    rnn_hidden: int = 256
    rnn_layers: int = 2
    bidirectional: bool = True
    rnn_subsample: int = 8  # frames stacked before the recurrent layers (80 ms steps)
    dropout: float = 0.1
    normalize: bool = True  # L2-normalize region and frame embeddings before the matchmap
    similarity: str = "misa"
    # Ranking captions for an image (image -> speech, in evaluation and search): the similarity plus this weight
    # times SIMA (each region's best frame, averaged over regions), so that a caption must also cover the
    # image, not only be covered by it.  Not used in training; speech -> image keeps the similarity alone (the
    # search's stages bound MISA).  misa only; 0 = off.  docs/results.md, "Ranking captions both ways".
    image_to_speech_sima: float = 0.0
    audio_norm: str = "global"  # input features: training-set statistics (global) or per-caption mean/std (utterance)

    def validate(self) -> None:
        _choice("model.image_encoder", self.image_encoder, tuple(IMAGE_ENCODERS))
        _choice("model.audio_encoder", self.audio_encoder, tuple(AUDIO_ENCODERS))
        _choice("model.similarity", self.similarity, SIMILARITIES)
        _choice("model.audio_norm", self.audio_norm, ("utterance", "global"))
        if not 0 <= self.image_to_speech_sima <= 10:
            raise VGSError(f"model.image_to_speech_sima: expected 0 <= weight <= 10, got {self.image_to_speech_sima}")
        if self.image_to_speech_sima and self.similarity != "misa":
            raise VGSError(f"model.image_to_speech_sima: adds SIMA to misa only, got model.similarity {self.similarity!r}")
        _positive("model.embed_dim", self.embed_dim)
        if self.image_stride not in (16, 32):
            raise VGSError(f"model.image_stride: expected 16 or 32, got {self.image_stride}")
        if self.image_head_kernel not in (0, 1, 3):
            raise VGSError(f"model.image_head_kernel: expected 0, 1 or 3, got {self.image_head_kernel}")
        if not 0 <= self.dropout < 1:
            raise VGSError(f"model.dropout: expected 0 <= dropout < 1, got {self.dropout}")
        if self.image_top_blocks and not self.freeze_trunk:
            raise VGSError(f"model.image_top_blocks: {self.image_top_blocks} needs model.freeze_trunk true (an unfrozen "
                           "trunk trains every block already)")
        if self.audio_stack != 1 and self.audio_encoder != "resdavenet":
            raise VGSError(f"model.audio_stack: only resdavenet stacks frames (lstm/gru use rnn_subsample), got {self.audio_stack} "
                           f"with {self.audio_encoder}")


@dataclass
class TrainConfig:
    """Optimisation, batching, logging and checkpointing."""

    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    top_lr_scale: float = 0.1  # learning rate of the pretrained trunk blocks model.image_top_blocks trains, as a share of lr
    optimizer: str = "adamw"  # adam | adamw | sgd
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # cosine | constant
    warmup_steps: int = 100
    loss: str = "infonce"
    margin: float = 1.0
    init_temperature: float = 0.07  # InfoNCE: logits = MISA / temperature, learnable
    grad_clip: float = 5.0
    seed: int = 0
    workers: int = 2
    cache_image_features: bool = True  # with a frozen trunk, encode each image once
    augment_images: bool = True  # horizontal flips of image files (cached trunk outputs are not flipped)
    spec_augment: bool = True  # time and frequency masking on the audio features
    voice_pairs: bool = True  # batches hold two renderings (voices) of each caption when the data has them
    voice_loss_weight: float = 0.5  # speech-to-speech InfoNCE between renderings of one caption (0 = off)
    batch_clusters: int = 0  # draw each batch from a few of this many clusters of similar images (vgs.negatives; 0 = random)
    negative_queue: int = 0  # past batches whose images and captions are extra InfoNCE impostors (vgs.negatives; 0 = off)
    eval_split: str = "dev"
    eval_every: int = 1  # epochs
    eval_max_items: int = 1000  # dev recall on at most this many images per evaluation
    checkpoint_every_minutes: float = 5.0  # mid-epoch checkpoints, so a kill loses little
    max_minutes: float = 0.0  # stop after this much training time (0 = no limit)
    max_steps: int = 0  # stop after this many optimizer steps; the schedule ends there too (0 = epochs decide)
    amp: bool = True  # bf16 autocast on GPU
    amp_cpu: bool = False  # bf16 autocast on CPU too (worth it with AVX-512 BF16 / AMX; float32, with a warning, without them)
    channels_last: bool = False  # channels-last memory format for the image branch (faster convs on GPU)
    compile: bool = False  # torch.compile the model (GPU; slow to start on CPU)
    max_bad_steps: int = 20  # consecutive non-finite losses before the run stops
    threads: int = 0  # torch intra-op threads (0 = all cores)
    init_from: str = ""  # start from these weights (run folder, checkpoint, export or shipped name); "" = fresh

    def validate(self) -> None:
        _choice("train.loss", self.loss, LOSSES)
        _choice("train.optimizer", self.optimizer, ("adam", "adamw", "sgd"))
        _choice("train.schedule", self.schedule, ("cosine", "constant"))
        _positive("train.epochs", self.epochs)
        _positive("train.lr", self.lr)
        if not (self.voice_loss_weight >= 0 and self.voice_loss_weight <= 10):
            raise VGSError(f"train.voice_loss_weight: expected 0..10, got {self.voice_loss_weight!r}")
        if self.negative_queue and self.loss != "infonce":
            raise VGSError(f"train.negative_queue: queued impostors need train.loss=infonce, got {self.loss!r}")
        if self.batch_size < 2:
            raise VGSError(f"train.batch_size: expected at least 2 (impostors come from the batch), got {self.batch_size}")


@dataclass
class Config:
    """Everything that defines a run; saved as ``RUN/config.yaml``."""

    data: str = ""
    features: AudioFeatureConfig = field(default_factory=AudioFeatureConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def validate(self) -> "Config":
        check_ranges(self)
        self.features.validate()
        self.augment.validate()
        self.image.validate()
        self.model.validate()
        self.train.validate()
        return self


# ----------------------------------------------------------------------------- numeric ranges


@dataclass(frozen=True)
class Range:
    """Allowed values of one numeric field: ``low <= value <= high`` (``low < value`` when ``open_low``)."""

    low: float
    high: float
    open_low: bool = False

    def check(self, name: str, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return  # types are _coerce's job
        low_ok = value > self.low if self.open_low else value >= self.low
        if not (math.isfinite(value) and low_ok and value <= self.high):
            low = f"{'>' if self.open_low else '>='} {self.low:g}"
            raise VGSError(f"{name}: expected a finite number {low} and <= {self.high:g}, got {_show(value)}")


# Every numeric config field, by dotted name.  A numeric field missing from this table must still be
# finite (see check_ranges); add its bounds here when adding the field.  Upper bounds are "sane":
# far above any useful value, low enough that nothing allocates absurd memory.
RANGES: dict[str, Range] = {
    "features.sample_rate": Range(1000, 384_000),
    "features.n_mels": Range(1, 512),
    "features.n_mfcc": Range(1, 512),
    "features.window_ms": Range(0, 1000, open_low=True),
    "features.hop_ms": Range(0, 1000, open_low=True),
    "features.preemphasis": Range(0, 1),
    "features.fmin": Range(0, 192_000),
    "features.max_frames": Range(16, 100_000),
    "image.size": Range(32, 4096),
    "image.mean": Range(-1e3, 1e3),
    "image.std": Range(0, 1e3, open_low=True),
    "model.embed_dim": Range(1, 16384),
    "model.image_head_kernel": Range(0, 3),
    "model.image_stride": Range(16, 32),
    "model.image_top_blocks": Range(0, 8),
    "model.audio_channels": Range(1, 8192),
    "model.rnn_hidden": Range(1, 8192),
    "model.rnn_layers": Range(1, 16),
    "model.rnn_subsample": Range(1, 64),
    "model.audio_stack": Range(1, 8),
    "model.dropout": Range(0, 1),
    "train.epochs": Range(1, 1_000_000),
    "train.batch_size": Range(2, 65536),
    "train.lr": Range(0, 10, open_low=True),
    "train.top_lr_scale": Range(0, 1, open_low=True),
    "train.weight_decay": Range(0, 10),
    "train.warmup_steps": Range(0, 10_000_000),
    "train.margin": Range(0, 100),
    "train.init_temperature": Range(0, 100, open_low=True),
    "train.grad_clip": Range(0, 1e6),  # 0 = no clipping
    "train.seed": Range(0, 2**63 - 1),
    "train.workers": Range(0, 256),
    "train.eval_every": Range(1, 1_000_000),
    "train.eval_max_items": Range(1, 1e9),
    "train.checkpoint_every_minutes": Range(0, 1e6),  # 0 = no mid-epoch checkpoints
    "train.max_minutes": Range(0, 1e7),  # 0 = no limit
    "train.max_steps": Range(0, 1e9),  # 0 = no limit
    "train.max_bad_steps": Range(1, 1_000_000),
    "train.batch_clusters": Range(0, 4096),
    "train.negative_queue": Range(0, 1024),  # each queued batch holds its embeddings in memory
    "train.threads": Range(0, 1024),  # 0 = all cores
}
FINITE = Range(-math.inf, math.inf)


def check_range(name: str, value: Any) -> None:
    """Range-check one field's value (tuples item by item); unknown numeric fields must be finite."""
    rule = RANGES.get(name)
    for item in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(item, float) and not math.isfinite(item):
            raise VGSError(f"{name}: expected a finite number, got {_show(item)}")
        if rule is not None:
            rule.check(name, item)


def check_ranges(obj: Any, prefix: str = "") -> None:
    """Range-check every numeric field of a config (sub)tree; raise VGSError naming the first bad one."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_ranges(value, name + ".")
        else:
            check_range(name, value)


PRESETS: dict[str, dict[str, Any]] = {
    # Zhang / Harwath et al.: VGG16 + 5-layer conv audio net, Adam 1e-4, batch 4, margin-1 hinge with sampled impostors.
    "paper": {
        "model.image_encoder": "vgg16", "model.audio_encoder": "conv5", "model.embed_dim": 1024,
        "model.freeze_trunk": False, "model.normalize": False, "model.dropout": 0.0, "model.similarity": "misa",
        "model.audio_channels": 512,
        "train.optimizer": "adam", "train.lr": 1e-4, "train.batch_size": 4, "train.loss": "hinge_sampled",
        "train.margin": 1.0, "train.weight_decay": 0.0, "train.schedule": "constant", "train.warmup_steps": 0,
        "train.augment_images": False, "train.spec_augment": False, "train.voice_pairs": False,
        "train.voice_loss_weight": 0.0, "augment.enabled": False, "model.audio_norm": "global",
    },
    # The built-in scenes data on 2 CPU cores: frozen, cached EfficientNet-Lite0 and a slim residual audio net.
    "scenes": {
        "model.image_encoder": "efficientnet-lite0", "model.image_stride": 16, "model.freeze_trunk": True,
        "train.cache_image_features": True, "model.audio_encoder": "resdavenet", "model.embed_dim": 256,
        "model.audio_channels": 128, "train.batch_size": 64, "train.lr": 2e-3, "train.epochs": 4, "train.warmup_steps": 50,
        # two epochs on clean features, then two with the voice augmentation (docs/results.md, "Any voice")
        "augment.clean_epochs": 2,
        # the 128-px scenes read at 160 px: a 10 x 10 map; 224 px costs 1.7x the demo's time, 128 px loses localization
        "image.size": 160,
    },
    # Whisper tiny.en's frozen encoder as the audio front end (vgs.whisper; features cached once) and a short
    # trainable head: speech it was never trained on (docs/results.md, "A pretrained speech front end").
    "whisper": {
        "features.kind": "whisper", "model.audio_encoder": "frame-head", "model.embed_dim": 512,
        "model.audio_channels": 512, "augment.enabled": False,
    },
}


# ----------------------------------------------------------------------------- conversion


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 2, 4, 4, 60, 60


def _show(value: Any) -> str:
    """A short repr for error messages: a YAML alias bomb must not be expanded into the message."""
    return _REPR.repr(value)


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise VGSError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise VGSError(f"{name}: expected a positive number, got {value!r}")


def to_dict(obj: Any) -> Any:
    """Dataclass tree to plain dicts/lists (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def _coerce(value: Any, kind: Any, where: str) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except VGSError as exc:
                errors.append(str(exc))
        raise VGSError(errors[0] if errors else f"{where}: unexpected value {_show(value)}")
    if dataclasses.is_dataclass(kind):
        return from_dict(kind, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise VGSError(f"{where}: expected a list, got {type(value).__name__} {_show(value)}")
        args = typing.get_args(kind)
        if args and Ellipsis not in args and len(value) != len(args):  # tuple[float, float, float]: exactly 3
            raise VGSError(f"{where}: expected a list of {len(args)} values, got {len(value)}")
        item_kind = args[0] if args else Any
        return tuple(_coerce(v, item_kind, f"{where}[{i}]") for i, v in enumerate(value))
    if kind is Any:
        return value
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise VGSError(f"{where}: expected true or false, got {_show(value)}")
    if kind in (int, float) and isinstance(value, str):
        try:
            value = float(value) if kind is float else int(value)
        except ValueError:
            pass
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise VGSError(f"{where}: expected an integer, got {_show(value)}")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise VGSError(f"{where}: expected a number, got {_show(value)}")
    if kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise VGSError(f"{where}: expected a string, got {_show(value)}")
    return value


def from_dict(cls: type, data: Any, where: str = "config") -> Any:
    """Build dataclass ``cls`` from a dict, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise VGSError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        shown = sorted(k if isinstance(k, str) and k.isidentifier() else _show(k) for k in unknown)  # '\r' stays on one line
        raise VGSError(f"{where}: unknown field(s) {', '.join(shown)}; expected some of {', '.join(sorted(names))}")
    kwargs = {key: _coerce(value, hints[key], f"{where}.{key}" if where != "config" else key) for key, value in data.items()}
    return cls(**kwargs)


def set_value(config: Config, dotted: str, raw: Any) -> None:
    """Set ``section.field`` on ``config``, type-checked. ``raw`` strings are parsed as YAML."""
    if isinstance(raw, str):
        try:
            raw = yaml.safe_load(raw) if raw.strip() else raw
        except (yaml.YAMLError, RecursionError):
            pass
    parts = dotted.split(".")
    target: Any = config
    for part in parts[:-1]:
        if not dataclasses.is_dataclass(target) or part not in {f.name for f in dataclasses.fields(target)}:
            raise VGSError(f"--set {dotted}: no config section {part!r}")
        target = getattr(target, part)
    name = parts[-1]
    if not dataclasses.is_dataclass(target) or name not in {f.name for f in dataclasses.fields(target)}:
        fields = sorted(f.name for f in dataclasses.fields(target)) if dataclasses.is_dataclass(target) else []
        raise VGSError(f"--set {dotted}: unknown field {name!r}" + (f"; expected one of {', '.join(fields)}" if fields else ""))
    kind = typing.get_type_hints(type(target))[name]
    value = _coerce(raw, kind, dotted)
    check_range(dotted, value)
    setattr(target, name, value)


def parse_overrides(pairs: list[str]) -> list[tuple[str, str]]:
    out = []
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise VGSError(f"--set {pair!r}: expected key=value, e.g. train.lr=3e-4")
        out.append((key.strip(), value))
    return out


def apply_preset(config: Config, name: str) -> None:
    if name not in PRESETS:
        raise VGSError(f"--preset: expected one of {', '.join(PRESETS)}, got {name!r}")
    for key, value in PRESETS[name].items():
        set_value(config, key, value)


def save_config(config: Config, path: str | Path) -> None:
    write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))


# What a run saved before a setting existed meant: a run folder or checkpoint without the key
# behaves as it did when it was trained (a user's partial --config file gets today's defaults).
LEGACY_DEFAULTS: dict[str, Any] = {"model.audio_norm": "global", "features.trim_db": 0.0,
                                   "train.voice_pairs": False, "train.voice_loss_weight": 0.0,
                                   "augment.enabled": False}


def run_config_from_dict(data: Any, where: str = "config") -> Config:
    """The config a run folder or checkpoint saved (keys it predates take :data:`LEGACY_DEFAULTS`)."""
    if not isinstance(data, dict):
        raise VGSError(f"{where}: expected a mapping, got {type(data).__name__}")
    data = {key: dict(value) if isinstance(value, dict) else value for key, value in data.items()}
    for dotted, value in LEGACY_DEFAULTS.items():
        section, name = dotted.split(".")
        if isinstance(data.get(section, {}), dict) and name not in data.get(section, {}):
            data.setdefault(section, {})[name] = value
    return from_dict(Config, data, where).validate()


MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_NESTING = 32


def _nesting_depth(text: str) -> int:
    """The deepest ``[``/``{`` nesting of flow collections (PyYAML takes seconds on thousands: refuse first)."""
    depth = deepest = 0
    for char in text:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(depth - 1, 0)
    return deepest


def read_config_file(path: str | Path) -> dict:
    """The mapping a YAML config file holds (empty for an empty file); size, nesting and syntax checked."""
    path = Path(path)
    if not path.is_file():
        raise VGSError(f"{path}: config file not found")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise VGSError(f"{path}: {path.stat().st_size} bytes is too large for a config (at most {MAX_CONFIG_BYTES})")
    try:
        text = path.read_text(encoding="utf-8")
        depth = _nesting_depth(text)
        if depth > MAX_CONFIG_NESTING:
            raise VGSError(f"{path}: brackets nested {depth} deep; a config nests at most {MAX_CONFIG_NESTING}")
        data = yaml.safe_load(text)
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested 1000s deep
        raise VGSError(f"{path}: not valid YAML ({first_line(exc)})") from exc
    return data or {}


def load_config(path: str | Path, saved_run: bool = False) -> Config:
    """Read a YAML config; ``saved_run``: it is a run's own ``config.yaml`` (see :data:`LEGACY_DEFAULTS`)."""
    data = read_config_file(path)
    try:
        return run_config_from_dict(data) if saved_run else from_dict(Config, data).validate()
    except VGSError as exc:
        raise VGSError(f"{path}: {exc}") from exc


# ----------------------------------------------------------------------------- composition


def _merged(base: dict, layer: Any) -> Any:
    """``layer`` over ``base``: mappings merge key by key, anything else replaces."""
    if not isinstance(base, dict) or not isinstance(layer, dict):
        return layer
    return {**base, **{key: _merged(base.get(key), value) for key, value in layer.items()}}


def apply_config_file(config: Config, path: str | Path) -> Config:
    """``config`` with the fields a YAML file sets replaced (a partial file keeps the rest of ``config``)."""
    try:
        return from_dict(Config, _merged(to_dict(config), read_config_file(path)))
    except VGSError as exc:
        raise VGSError(f"{path}: {exc}") from exc


def compose_config(base: Config | None = None, preset: str | None = None, config_file: str | Path | None = None,
                   flags: dict[str, Any] | None = None, overrides: list[str] | None = None,
                   data: str | Path | None = None) -> Config:
    """The one place a run's settings are composed, each layer over the one before:
    ``base`` (default: the defaults) < ``preset`` < ``config_file`` < ``flags`` (dotted field -> value,
    None = not given; ``data``, the data set folder, is a flag taken as it is) < ``overrides``
    (``--set key=value`` strings). Returns the validated config."""
    config = base if base is not None else Config()
    if preset:
        apply_preset(config, preset)
    if config_file:
        config = apply_config_file(config, config_file)
    for key, value in (flags or {}).items():
        if value is not None:
            set_value(config, key, value)
    if data is not None:
        config.data = str(data)
    for key, value in parse_overrides(overrides or []):
        set_value(config, key, value)
    return config.validate()
