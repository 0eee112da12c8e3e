"""The full config of a run or a weights file, and the model it describes.

Each config section's defaults live in the module that reads them (``data.pairs.PAIR_DEFAULTS``,
``model.icl.ICL.default_conf``, ``losses.DEFAULT_WEIGHTS``, ``baselines``); ``full_config`` gathers them for the
config's ``method``: ``icl`` (the default) or ``matching``, the explicit-matching baseline. This module sits above
the model, the data, the losses and the baselines, and none of them imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from .baselines.matching import MATCH_DEFAULTS, MatchingNet
from .baselines.matching_loss import LOSS_DEFAULTS as MATCHING_LOSS_DEFAULTS
from .baselines.pnp import PNP_DEFAULTS
from .config import deep_update
from .data.pairs import PAIR_DEFAULTS
from .errors import InputError
from .lines import LINE_DEFAULTS
from .losses import DEFAULT_WEIGHTS
from .metrics import ACC_RRE_DEG, ACC_RTE_M
from .model.icl import ICL
from .refine import EDGE_DEFAULTS
from .weights import load_weights, read_weights_config

METHODS = ("icl", "matching")
"""The ``method`` a config describes: ICL, or the explicit-matching baseline (``baselines.matching``)."""

TRAIN_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "stages": [1, 2],  # [2]: stage 2 alone, from init_weights
    "init_weights": None,  # safetensors to start the first stage from (e.g. an earlier run's weights)
    "stage2_trains_gpdm": False,  # stage 2 trains the GPDM set too, with its stage-1 terms (docs/TRAINING.md, run 17)
    "frozen": [],  # stage 2: these modules of ICL stay as init_weights has them too (e.g. [image_decoder, iclm, prm])
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
"""The ``train`` section (``train.py``; the matching baseline trains one stage of stage1 + stage2 epochs)."""

EVAL_DEFAULTS: dict[str, Any] = {
    "thresholds": {"rte_thresh": ACC_RTE_M, "rre_thresh": ACC_RRE_DEG},  # Acc: RTE and RRE below both
    "pnp": PNP_DEFAULTS,  # PnP-RANSAC of the pnp solver and of the matching baseline
    "refine": "none",  # "edges" (refine.py) or "lines" (lines.py): the final pose refined on data.dense_points
    "edges": EDGE_DEFAULTS,
    "lines": LINE_DEFAULTS,  # "lines": the yaw set by the image's and the cloud's horizontal lines (lines.py)
    "point_draws": 1,  # >1: each pose the consensus of the network run on that many draws of the point sample
}
"""The ``eval`` section; the matching baseline adds ``matching`` (``baselines.matching.MATCH_DEFAULTS``)."""

INPUT_SIZE_KEYS = {"image_size": "crop", "num_points": "num_points"}
"""model.KEY -> data.KEY: the network input size is the data's crop and point count, stated once in the data
section. Configs and weights headers written before state it in the model section too (``full_config``)."""


def full_config(cfg: dict) -> dict[str, Any]:
    """``cfg`` (a YAML config or a weights header's) with every section's defaults filled in for its method:
    data, model, loss, train, eval, and ``method: matching`` for the baseline (whose model and loss sections are
    its own). An older config's model.image_size and model.num_points must equal data.crop and data.num_points
    and are dropped."""
    method = cfg.get("method", "icl")
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    data = deep_update(PAIR_DEFAULTS, cfg.get("data") or {})
    model = dict(cfg.get("model") or {})
    for model_key, data_key in INPUT_SIZE_KEYS.items():
        if model_key in model:
            stated = model.pop(model_key)
            if _as_list(stated) != _as_list(data[data_key]):
                raise InputError(f"model.{model_key} {stated} differs from data.{data_key} {data[data_key]}: the network"
                                 f" input is the data's; state it once, as data.{data_key}")
    if method == "matching":
        model_defaults, loss_defaults = MatchingNet.default_conf, MATCHING_LOSS_DEFAULTS
        eval_defaults = {**EVAL_DEFAULTS, "matching": MATCH_DEFAULTS}
        model = deep_update(model_defaults, {k: v for k, v in model.items() if k in model_defaults})
        loss = {key: (cfg.get("loss") or {}).get(key, value) for key, value in loss_defaults.items()}
    else:
        model_defaults, loss_defaults, eval_defaults = ICL.default_conf, DEFAULT_WEIGHTS, EVAL_DEFAULTS
        model = deep_update(model_defaults, model)
        loss = deep_update(loss_defaults, cfg.get("loss") or {})
    full = {
        "data": data,
        "model": model,
        "loss": loss,
        "train": deep_update(TRAIN_DEFAULTS, cfg.get("train") or {}),
        "eval": deep_update(eval_defaults, cfg.get("eval") or {}),
    }
    defaults = {"data": PAIR_DEFAULTS, "model": model_defaults, "loss": loss_defaults, "train": TRAIN_DEFAULTS,
                "eval": eval_defaults}
    for section, section_defaults in defaults.items():
        _refuse_text_for_numbers(section_defaults, full[section], f"{section}.")
    for (section, key), least in AT_LEAST.items():
        if full[section][key] < least:
            raise InputError(f"{section}.{key} must be at least {least}, not {full[section][key]}")
    return {**full, "method": method} if method != "icl" else full


AT_LEAST = {("train", "batch_size"): 1, ("train", "num_workers"): 0, ("data", "num_points"): 1}
"""Counts a config cannot go below (below them PyTorch or NumPy failed with a traceback deep in a run)."""


def _refuse_text_for_numbers(defaults: dict, values: dict, prefix: str) -> None:
    """An ``InputError`` for the first of ``values`` that is text where its default is a number (``--set
    train.lr=abc``), which would otherwise fail as a traceback deep in training."""
    for key, default in defaults.items():
        value = values.get(key)
        if isinstance(default, dict) and isinstance(value, dict):
            _refuse_text_for_numbers(default, value, f"{prefix}{key}.")
        elif isinstance(default, (int, float)) and not isinstance(default, bool) and isinstance(value, str):
            raise InputError(f"{prefix}{key} must be a number, not {value!r}")


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def build_model(cfg: dict) -> nn.Module:
    """The untrained network of a full config: ``ICL``, or ``MatchingNet`` for ``method: matching``."""
    return MatchingNet(cfg["model"]) if cfg.get("method", "icl") == "matching" else ICL(cfg["model"])


def load_model(weights: Path, cfg: dict | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The trained network of a weights file and its full config (``cfg``: that config, already read from the
    file's header and changed in what the weights allow, e.g. ``inference.INFERENCE_SETTINGS``)."""
    cfg = full_config(read_weights_config(weights)) if cfg is None else cfg
    model = build_model(cfg)
    load_weights(model, weights)
    return model, cfg
