"""YAML configs: loading (one file per dataset and size, a ``base:`` key naming another), merging, ``--set``
overrides. The defaults they are merged over are gathered by ``assembly.full_config``."""

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
