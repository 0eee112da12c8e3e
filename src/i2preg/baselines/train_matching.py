"""Training of the matching baseline with the machinery of ``i2preg.train``: the same data, sampler, optimiser
and learning-rate schedule as ICL, in one stage as long as ICL's two together. A run lives in ``runs/NAME/``::

    config.yaml                 the resolved config (``baselines.matching.matching_config``)
    stage1/                     Lightning checkpoints and logs of the single stage
    model.safetensors           the final weights, config (``method: matching``) in the header
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch

from ..config import deep_update
from ..train import ICLModule, fit_stage, run_config, stage_finished
from ..weights import load_weights
from .matching import MatchingNet, estimate_poses, matching_config
from .matching_loss import matching_loss


class MatchingModule(ICLModule):
    """``MatchingNet`` with ``matching_loss``; validation poses from ``matching.estimate_poses``. Resumption,
    the validation summary and the optimiser are ``ICLModule``'s."""

    def __init__(self, cfg: dict[str, Any]):
        L.LightningModule.__init__(self)  # not ICLModule.__init__: it builds ICL
        self.cfg, self.stage = cfg, 1
        self.model = MatchingNet(cfg["model"])
        self._val_errors: list[dict[str, np.ndarray]] = []

    def forward(self, batch: dict) -> dict:
        return self.model(batch)

    def losses(self, out: dict, batch: dict) -> dict[str, torch.Tensor]:
        return matching_loss(out, batch, self.model.token_stride, self.cfg["loss"])

    def predicted_pose(self, out: dict, batch: dict) -> torch.Tensor:
        return estimate_poses(out, batch["K"], self.cfg["eval"])[0]


def single_stage(cfg: dict) -> dict:
    """The config ``train._trainer`` reads for stage 1, lengthened to ICL's two stages together."""
    train = cfg["train"]
    steps = [int(train["stage1_max_steps"]), int(train["stage2_max_steps"])]
    return deep_update(cfg, {"train": {"stage1_epochs": int(train["stage1_epochs"]) + int(train["stage2_epochs"]),
                                       "stage1_max_steps": -1 if -1 in steps else sum(steps)}})


def train_matching(cfg: dict, run_dir: str | Path, resume: bool = False, overrides: dict | None = None,
                   callbacks: Sequence[L.Callback] = ()) -> Path:
    """Train the matching baseline (or continue a killed run, for longer with ``overrides``, with ``callbacks``,
    as in ``train.train``), from ``train.init_weights`` when set; returns the final weights' path.
    ``train.stages`` does not apply: the baseline has one stage."""
    run_dir = Path(run_dir)
    cfg = run_config(cfg, run_dir, resume, matching_config, overrides)
    weights = run_dir / "model.safetensors"
    if resume and stage_finished(weights, cfg):
        return weights
    torch.set_float32_matmul_precision("high")
    L.seed_everything(int(cfg["train"]["seed"]) + 1, workers=True)
    module = MatchingModule(cfg)
    if cfg["train"]["init_weights"]:
        load_weights(module.model, Path(cfg["train"]["init_weights"]))
    fit_stage(module, single_stage(cfg), run_dir, 1, weights, resume, callbacks)
    return weights
