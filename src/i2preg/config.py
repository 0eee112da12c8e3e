"""YAML configs: one file per dataset and size, merged over the defaults of each module."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from .errors import InputError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, but ``1e-4`` is a float as in YAML 1.2 (YAML 1.1 asks for ``1.0e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str) -> Any:
    """YAML text -> Python values, with ``_Loader``'s floats."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def deep_update(base: dict, update: dict) -> dict:
    """Return a copy of ``base`` with ``update`` merged in recursively (update wins)."""
    out = copy.deepcopy(base)
    for key, value in (update or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


TRAIN_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "stages": [1, 2],  # [2]: stage 2 alone, from init_weights
    "init_weights": None,  # safetensors to start the first stage from (e.g. an earlier session's weights)
    "init_strict": True,  # False: a warm start that loads the tensors init_weights shares with the model
    "lr": 1e-4,  # Adam
    "weight_decay": 1e-6,
    "lr_decay": 0.95,  # StepLR gamma, per epoch
    "batch_size": 2,
    "stage1_epochs": 20,
    "stage2_epochs": 20,
    "stage1_max_steps": -1,  # -1: no limit besides the epochs
    "stage2_max_steps": -1,
    "limit_train_batches": None,  # batches per epoch (None: all)
    "limit_val_batches": None,
    "val_pairs": None,  # validate on the first N pairs of the val split (None: all)
    "val_every_n_epochs": 1,
    "checkpoint_every_n_steps": 500,
    "log_every_n_steps": 10,
    "gradient_clip_val": None,
    "num_workers": 2,
    "accelerator": "auto",
    "devices": "auto",
    "num_nodes": 1,
    "strategy": "auto",
    "precision": "32-true",
    "deterministic": False,
    "progress_bar": True,
}
"""The ``train`` config section."""


def full_config(cfg: dict) -> dict[str, Any]:
    """A config with every section's defaults filled in: data, model, loss, train, eval."""
    from .data.pairs import (
        PAIR_DEFAULTS,  # here, not at the top: those modules import this one
    )
    from .losses import DEFAULT_WEIGHTS
    from .metrics import ACC_RRE_DEG, ACC_RTE_M
    from .model.icl import ICL

    defaults = {
        "data": PAIR_DEFAULTS,
        "model": ICL.default_conf,
        "loss": DEFAULT_WEIGHTS,
        "train": TRAIN_DEFAULTS,
        "eval": {"thresholds": {"rte_thresh": ACC_RTE_M, "rre_thresh": ACC_RRE_DEG}},
    }
    return deep_update(defaults, cfg)


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A path to a YAML file, or the name of a bundled config (``kitti``, ``synthetic-small``...)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    bundled = CONFIG_DIR / f"{Path(name_or_path).stem}.yaml"
    if bundled.is_file():
        return bundled
    raise InputError(f"no such config (bundled ones: {', '.join(available_configs())})", path)


def available_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_config(name_or_path: str | Path, overrides: dict | None = None) -> dict[str, Any]:
    """Load a YAML config (following an optional ``base:`` key naming another config) and apply overrides."""
    path = resolve_config_path(name_or_path)
    try:
        cfg = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise InputError(f"not valid YAML ({str(err).splitlines()[0]})", path) from None
    if not isinstance(cfg, dict):
        raise InputError("a config must be a mapping of sections", path)
    base = cfg.pop("base", None)
    if base is not None:
        cfg = deep_update(load_config(base), cfg)
    return deep_update(cfg, overrides or {})


def parse_override(text: str) -> dict:
    """``"train.lr=1e-3"`` -> ``{"train": {"lr": 0.001}}`` (the value is parsed as YAML)."""
    if "=" not in text:
        raise InputError(f"override {text!r} must look like section.key=value")
    key, value = text.split("=", 1)
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = load_yaml(value)
    return out


def parse_overrides(texts: list[str] | None) -> dict:
    """Several ``parse_override`` texts (repeated ``--set``) merged into one nested dict, later ones winning."""
    overrides: dict = {}
    for text in texts or []:
        overrides = deep_update(overrides, parse_override(text))
    return overrides
