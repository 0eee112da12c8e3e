"""Weights files: safetensors (no pickle) with the resolved config (YAML) in the header; the bundled models."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .errors import InputError, require_file
from .files import atomic_path

BUNDLED_DIR = Path(__file__).resolve().parent / "weights"
"""Where the package's own trained models live, one ``NAME.safetensors`` each: ``synthetic-small`` (ICL) and
``matching-small`` (the matching baseline at the same sizes and training budget, for ``i2preg compare``)."""
DEFAULT_MODEL = "synthetic-small"
MATCHING_MODEL = "matching-small"


def bundled_weights(name: str = DEFAULT_MODEL) -> Path:
    """The path of the bundled model ``name`` (it may not be installed yet: check ``is_file``)."""
    return BUNDLED_DIR / f"{name}.safetensors"


def bundled_names() -> list[str]:
    return sorted(p.stem for p in BUNDLED_DIR.glob("*.safetensors"))


def resolve_weights(name_or_path: str | os.PathLike | None = None) -> Path:
    """A weights file: ``name_or_path`` when it is a file, else the bundled model of that name (None: the
    default one, ``synthetic-small``)."""
    path = Path(name_or_path if name_or_path is not None else DEFAULT_MODEL)
    if path.is_file():
        return path
    bundled = bundled_weights(path.name)
    if path.parent == Path(".") and bundled.is_file():
        return bundled
    raise InputError(
        f"no such weights file or bundled model (bundled: {', '.join(bundled_names()) or 'none installed'});"
        " train one with `i2preg train --config synthetic-small --data DATA` and pass its"
        " runs/synthetic-small/model.safetensors", bundled if name_or_path is None else path)


def save_weights(model: torch.nn.Module, path: Path, cfg: dict, extra: dict | None = None) -> None:
    """Weights as safetensors with the config (YAML) and ``extra`` (JSON) in the header; atomic."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"config": yaml.safe_dump(cfg, sort_keys=False), "extra": json.dumps(extra or {})}
    with atomic_path(path) as temp:
        save_file(tensors, str(temp), metadata=metadata)


def load_weights(model: torch.nn.Module, path: Path, strict: bool = True) -> list[str]:
    """Load ``path`` into ``model``; weights of another architecture are an InputError naming the file.
    ``strict=False`` (a warm start) loads the tensors whose names the model shares and returns the names of
    the model's tensors the file lacks and of the file's tensors the model lacks."""
    try:
        result = model.load_state_dict(load_file(str(path)), strict=strict)
        return [*result.missing_keys, *result.unexpected_keys]
    except RuntimeError as err:
        problem = str(err).splitlines()[0]
        raise InputError(f"weights do not fit the model of their config ({problem})", path) from None


def read_weights_config(weights: Path) -> dict[str, Any]:
    """The resolved config stored in the safetensors header of ``weights`` (``save_weights``)."""
    require_file(weights)
    try:
        with safe_open(str(weights), "pt") as file:
            text = (file.metadata() or {}).get("config")
    except (SafetensorError, OSError) as err:
        raise InputError(f"not a safetensors file ({err})", weights) from None
    if text is None:
        raise InputError("no config in the safetensors header (write weights with i2preg.weights.save_weights)", weights)
    return yaml.safe_load(text)


def export_checkpoint(checkpoint: Path, out: Path, cfg: dict) -> None:
    """Write the model weights of a Lightning checkpoint (of ``train.TrainingModule``) as safetensors with ``cfg``
    in the header: how an unfinished run's weights travel to a later ``i2preg train --init``."""
    state = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
    prefix = "model."
    model = {k[len(prefix):]: v for k, v in state["state_dict"].items() if k.startswith(prefix)}
    extra = {"checkpoint": Path(checkpoint).name, "epoch": state["epoch"], "global_step": state["global_step"]}
    metadata = {"config": yaml.safe_dump(cfg, sort_keys=False), "extra": json.dumps(extra)}
    with atomic_path(out) as temp:
        save_file({k: v.contiguous() for k, v in model.items()}, str(temp), metadata=metadata)
