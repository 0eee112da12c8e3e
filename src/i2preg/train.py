"""Training with Lightning. ICL trains in two stages: stage 1 trains GPDM (L_cls + L_fru), stage 2 the rest with
GPDM frozen (``train.stage2_trains_gpdm``: trained on, its terms beside the stage-2 ones). The matching baseline
(``method: matching``) trains in one stage as long as ICL's two together, with the same data, sampler, optimiser and
learning-rate schedule. Each stage is one ``TrainingModule`` built from parts: the network, its loss function and
its pose function (validation).

A run lives in ``runs/NAME/``::

    config.yaml                 the resolved config (``assembly.full_config``)
    stage1/ stage2/             Lightning checkpoints (last.ckpt, per-epoch); version_N/: TensorBoard and
                                CSV logs (metrics.csv) of the N-th launch (a resume is a new launch)
    stage1.safetensors          ICL's stage-1 weights, written when stage 1 ends (stage 2 starts from them)
    model.safetensors           the final weights (end of the last stage) with their config in the header

``--resume`` continues where a killed run stopped, in the stage it was in; with a longer schedule
(``SCHEDULE_KEYS``, e.g. ``--resume --set train.stage1_epochs=15``) it also trains a finished run on from its last
checkpoint. Every random choice of a
training sample is a function of (seed, epoch, index), so a run resumed from an epoch-end or a mid-epoch
checkpoint ends with exactly the weights of an uninterrupted run (CPU, deterministic algorithms).
"""

from __future__ import annotations

import logging
import math
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import lightning as L
import numpy as np
import torch
import yaml
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.utils.data import DataLoader, Sampler

from .assembly import full_config
from .baselines.matching import MatchingNet
from .baselines.matching_loss import matching_loss
from .config import deep_update
from .data.collate import Collate
from .data.pairs import build_dataset
from .errors import InputError, require_output_folder
from .files import write_text
from .inference import solve
from .losses import compute_losses
from .metrics import registration_errors, summarize
from .model.icl import ICL
from .weights import load_weights, read_weights_config, save_weights

SCHEDULE_KEYS = ("stage1_epochs", "stage2_epochs", "stage1_max_steps", "stage2_max_steps")
"""The ``train`` keys that a resumed run may change: how long it trains."""


class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` keys: the order and each sample's random draws depend only on
    (seed, epoch, index), never on a global RNG, so resumption is exact. Splits the indices
    between DDP ranks itself (pad by wrapping so every rank gets the same count). ``skip`` drops
    the first keys of the next pass once: a run resumed mid-epoch sets it to what was done."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch, self.skip = size, seed, 0, 0

    def _rank(self) -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.size / self._rank()[1])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rank, world = self._rank()
        order = np.random.default_rng((self.seed, self.epoch)).permutation(self.size)
        order = np.resize(order, len(self) * world)  # wrap so that every rank has len(self) samples
        keys = [(self.epoch, int(i)) for i in order[rank::world]][self.skip :]
        self.skip = 0
        return iter(keys)


class TrainingModule(L.LightningModule):
    """One training stage built from parts: ``model`` (its parameters that require grad are trained; ``self.model``,
    so checkpoints hold ``model.*``), ``loss(out, batch)`` -> the loss terms with ``total``, and ``pose(out, batch)``
    -> (B, 4, 4) the poses validation scores with the protocol metric. ``forward``: the model's forward pass of this
    stage (default: the model itself). ``stage``: its number, that of the run's ``stageN`` folder."""

    def __init__(self, cfg: dict[str, Any], model: nn.Module, loss: Callable[[dict, dict], dict[str, torch.Tensor]],
                 pose: Callable[[dict, dict], torch.Tensor], forward: Callable[[dict], dict] | None = None,
                 stage: int = 1):
        super().__init__()
        self.cfg, self.model, self.losses, self.predicted_pose, self.stage = cfg, model, loss, pose, stage
        self.stage_forward = forward  # a function, not a module: the weights are self.model's alone
        self._val_errors: list[dict[str, np.ndarray]] = []

    def forward(self, batch: dict) -> dict:
        return self.model(batch) if self.stage_forward is None else self.stage_forward(batch)

    def train_dataloader(self) -> DataLoader:
        """The training pairs, from where the restored loop stands: its epoch, after the batches of that epoch
        a mid-epoch checkpoint trained on. Lightning asks for the loader once the checkpoint is restored and
        draws its first batches before any ``on_train_*`` hook, so the sampler must know both here."""
        loader = make_loader(self.cfg, "train")
        epochs, batches = self.trainer.fit_loop.epoch_progress.current, self.trainer.fit_loop.epoch_loop.batch_progress
        epoch, skip = epochs.processed, 0
        if epochs.started > epochs.processed:  # saved inside epoch ``processed``: after a batch...
            if batches.is_last_batch:  # ...its last (Lightning goes on with the next epoch)
                epoch += 1
            else:
                skip = batches.current.processed * int(self.cfg["train"]["batch_size"])
        loader.sampler.set_epoch(epoch)
        loader.sampler.skip = skip
        return loader

    def val_dataloader(self) -> DataLoader:
        return make_loader(self.cfg, "val", limit=self.cfg["train"]["val_pairs"])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses = self.losses(self(batch), batch)
        bs = batch["image"].shape[0]
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, batch_size=bs, sync_dist=False)
        self.log("train/loss", losses["total"].detach(), prog_bar=True, batch_size=bs, logger=False)
        return losses["total"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self(batch)
        bs = batch["image"].shape[0]
        self.log_dict({f"val/{k}": v for k, v in self.losses(out, batch).items()}, batch_size=bs, sync_dist=True)
        pose = self.predicted_pose(out, batch).detach().double().cpu().numpy()
        self._val_errors.append(registration_errors(pose, batch["T_gt"].double().cpu().numpy()))

    def on_validation_epoch_end(self) -> None:
        if not self._val_errors:
            return
        errors = {k: np.concatenate([e[k] for e in self._val_errors]) for k in self._val_errors[0]}
        self._val_errors.clear()
        s = summarize(errors, **self.cfg["eval"]["thresholds"])
        metrics = {"val/rte": s["rte_mean"], "val/rre": s["rre_mean"], "val/rte_median": s["rte_median"],
                   "val/rre_median": s["rre_median"], "val/acc": s["acc"]}
        self.log_dict({k: torch.tensor(v, dtype=torch.float32) for k, v in metrics.items()}, prog_bar=True, sync_dist=True)

    def configure_optimizers(self):
        opt_cfg = self.cfg["train"]
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=opt_cfg["lr"], weight_decay=opt_cfg["weight_decay"])
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=opt_cfg["lr_decay"])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def icl_stage(cfg: dict, stage: int) -> TrainingModule:
    """ICL's stage 1 (GPDM alone: its forward, L_cls + L_fru, the frustum pose) or stage 2 (all but GPDM, which
    ``train.stage2_trains_gpdm`` trains too, and the modules ``train.frozen`` names, which stay as they are: the full
    forward, all terms, the final pose)."""
    model = ICL(cfg["model"]).requires_grad_(stage == 2)
    model.freeze_gpdm(stage == 2 and not cfg["train"]["stage2_trains_gpdm"])
    if stage == 2:
        for name in cfg["train"]["frozen"]:
            module = getattr(model, str(name), None)
            if not isinstance(module, nn.Module) or module in model.gpdm_modules():
                raise InputError(f"train.frozen: {name!r} is not one of ICL's stage-2 modules")
            module.requires_grad_(False)
    return TrainingModule(cfg, model, partial(compute_losses, weights=cfg["loss"], stage=stage),
                          partial(solve_pose, solver="frustum" if stage == 1 else "prm", model=model, eval_cfg=cfg["eval"]),
                          model.forward_gpdm if stage == 1 else None, stage)


def matching_stage(cfg: dict) -> TrainingModule:
    """The matching baseline: ``MatchingNet``, ``matching_loss``, PnP-RANSAC on its matches."""
    model = MatchingNet(cfg["model"])
    return TrainingModule(cfg, model, partial(matching_loss, token_stride=model.token_stride, weights=cfg["loss"]),
                          partial(solve_pose, solver="pnp", model=model, eval_cfg=cfg["eval"]))


def solve_pose(out: dict, batch: dict, solver: str, model: nn.Module, eval_cfg: dict) -> torch.Tensor:
    """``inference.solve``'s poses (B, 4, 4) of a batch's outputs: what validation scores."""
    return solve(model, out, batch, solver, eval_cfg)[0]


def make_loader(cfg: dict, split: str, limit: int | None = None) -> DataLoader:
    """A DataLoader over the protocol pairs of ``split`` with the model's collate.

    Training draws ``(epoch, index)`` keys from an ``EpochSampler``; other splits are read in order
    with each pair's fixed seed (every rank reads all of them).
    """
    dataset = build_dataset(cfg, split)
    if limit is not None and limit < len(dataset):
        dataset = torch.utils.data.Subset(dataset, range(limit))
    train = cfg["train"]
    sampler = EpochSampler(len(dataset), seed=int(train["seed"])) if split == "train" else None
    return DataLoader(
        dataset,
        batch_size=int(train["batch_size"]),
        sampler=sampler,
        collate_fn=Collate(cfg["model"]),
        num_workers=int(train["num_workers"]),
    )


class StepLimit(L.Callback):
    """Stops training once ``max_steps`` optimizer steps are done (-1: no limit), after the validation Lightning
    runs when it is told to stop. Lightning's own ``Trainer(max_steps=...)`` is not used: it makes every restore
    a restart (2.6: ``_FitLoop.restarting``), so a run resumed from an epoch-end checkpoint closes that epoch a
    second time (one epoch counted too many: ``max_epochs`` ends early and the sampler's epoch is one ahead).
    A run stopped by the limit inside an epoch and continued with a higher one starts the next epoch."""

    def __init__(self, max_steps: int):
        self.max_steps = max_steps

    def _check(self, trainer: L.Trainer) -> None:
        if 0 <= self.max_steps <= trainer.global_step and not trainer.should_stop:
            trainer.should_stop = True
            rank_zero_info(f"training stopped: max_steps={self.max_steps} reached")

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._check(trainer)  # a restored run already at the limit trains no further step

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        self._check(trainer)


def hardware(train: dict) -> dict[str, Any]:
    """The Trainer's accelerator, devices, num_nodes, strategy and precision, from the config's ``train``."""
    return {"accelerator": train["accelerator"], "devices": train["devices"], "num_nodes": int(train["num_nodes"]),
            "strategy": train["strategy"], "precision": train["precision"]}


def check_hardware(train: dict) -> None:
    """Refuse, as one ``InputError``, settings of ``hardware`` that Lightning cannot run on this machine (a GPU
    where torch sees none, more devices than it has, an unknown strategy or precision) before a run writes anything:
    a bare Trainer is built with them, quietly, and thrown away."""
    settings = hardware(train)
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")  # "GPU available: ..." comes with the real one
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        L.Trainer(**settings, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False)
    except (MisconfigurationException, ValueError, ImportError) as err:
        listed = ", ".join(f"{key}={value}" for key, value in settings.items())
        raise InputError(f"Lightning cannot train with {listed} here: {str(err).splitlines()[0]}") from None
    finally:
        log.setLevel(level)


def _trainer(cfg: dict, run_dir: Path, stage: int, callbacks: Sequence[L.Callback] = ()) -> L.Trainer:
    train = cfg["train"]
    stage_dir = run_dir / f"stage{stage}"
    # Both write last.ckpt (the newest of a step and an epoch-end checkpoint), which --resume reads.
    common = {"dirpath": stage_dir, "save_last": True, "auto_insert_metric_name": False, "enable_version_counter": False}
    callbacks = [
        ModelCheckpoint(filename="step{step:07d}", every_n_train_steps=int(train["checkpoint_every_n_steps"]),
                        save_top_k=1, **common),
        ModelCheckpoint(filename="epoch{epoch:03d}", save_on_train_epoch_end=True, save_top_k=-1, **common),
        StepLimit(int(train[f"stage{stage}_max_steps"])),
        *callbacks,
    ]
    # One log version per launch (stage1/version_0, version_1 after a resume...): CSVLogger would delete
    # the metrics.csv of an earlier launch in the same folder.
    version = f"version_{len(list(stage_dir.glob('version_*')))}"
    loggers = [TensorBoardLogger(run_dir, name=f"stage{stage}", version=version),
               CSVLogger(run_dir, name=f"stage{stage}", version=version)]
    return L.Trainer(
        default_root_dir=stage_dir,
        max_epochs=int(train[f"stage{stage}_epochs"]),
        **hardware(train),
        deterministic=bool(train["deterministic"]),
        gradient_clip_val=train["gradient_clip_val"],
        limit_train_batches=train["limit_train_batches"],
        limit_val_batches=train["limit_val_batches"],
        check_val_every_n_epoch=int(train["val_every_n_epochs"]),
        log_every_n_steps=int(train["log_every_n_steps"]),
        enable_progress_bar=bool(train["progress_bar"]),
        use_distributed_sampler=False,  # EpochSampler splits between ranks itself
        callbacks=callbacks,
        logger=loggers,
    )


def train(cfg: dict, run_dir: str | Path, resume: bool = False, overrides: dict | None = None,
          callbacks: Sequence[L.Callback] = ()) -> Path:
    """Run the stages of ``train.stages`` (stage 1 then 2), or continue a killed run (``resume``), for longer
    when ``overrides`` (``--set``: on resume only ``train.SCHEDULE_KEYS``) say so; returns the path of the
    weights of the last stage run. ``callbacks`` join every stage's Trainer. A config with ``method: matching``
    trains the baseline instead (``train_matching``)."""
    run_dir = require_output_folder(run_dir)
    if not resume:  # a missing sequence or file: one line now, not an error inside the Trainer after the model
        for split in ("train", "val"):
            build_dataset(cfg, split)
    cfg = run_config(cfg, run_dir, resume, overrides)
    torch.set_float32_matmul_precision("high")
    if cfg.get("method", "icl") == "matching":
        return train_matching(cfg, run_dir, resume, callbacks)
    stages = [int(stage) for stage in cfg["train"]["stages"]]
    for stage in stages:
        done = run_dir / ("stage1.safetensors" if stage == 1 else "model.safetensors")
        if resume and stage_finished(done, cfg):
            continue
        L.seed_everything(int(cfg["train"]["seed"]) + stage, workers=True)
        module = icl_stage(cfg, stage)
        if stage == 2 and 1 in stages:
            load_weights(module.model, run_dir / "stage1.safetensors")
        elif cfg["train"]["init_weights"]:
            start = cfg["train"]["init_weights"]
            unmatched = load_weights(module.model, Path(start), strict=bool(cfg["train"]["init_strict"]))
            if unmatched:
                print(f"warm start from {start}: {len(unmatched)} tensors not shared with the model: {', '.join(unmatched)}")
        fit_stage(module, cfg, run_dir, stage, done, resume, callbacks)
    return run_dir / ("model.safetensors" if stages[-1] == 2 else "stage1.safetensors")


def train_matching(cfg: dict, run_dir: Path, resume: bool, callbacks: Sequence[L.Callback] = ()) -> Path:
    """The matching baseline's single stage (``single_stage``; ``train.stages`` does not apply) for a run's full
    config, from ``train.init_weights`` when set; returns the final weights' path."""
    weights = run_dir / "model.safetensors"
    if resume and stage_finished(weights, cfg):
        return weights
    L.seed_everything(int(cfg["train"]["seed"]) + 1, workers=True)
    module = matching_stage(cfg)
    if cfg["train"]["init_weights"]:
        load_weights(module.model, Path(cfg["train"]["init_weights"]))
    fit_stage(module, single_stage(cfg), run_dir, 1, weights, resume, callbacks)
    return weights


def single_stage(cfg: dict) -> dict:
    """The config ``_trainer`` reads for the baseline's stage 1, lengthened to ICL's two stages together."""
    train = cfg["train"]
    steps = [int(train["stage1_max_steps"]), int(train["stage2_max_steps"])]
    return deep_update(cfg, {"train": {"stage1_epochs": int(train["stage1_epochs"]) + int(train["stage2_epochs"]),
                                       "stage1_max_steps": -1 if -1 in steps else sum(steps)}})


def run_config(cfg: dict, run_dir: Path, resume: bool, overrides: dict | None = None) -> dict:
    """The config of a run: on resume the run's own ``config.yaml`` (keys added since get their defaults
    from ``full_config``) with the ``train.SCHEDULE_KEYS`` of ``overrides`` over it (any other override is an
    error), otherwise ``full_config(cfg)``; its hardware settings checked (``check_hardware``), then written
    there."""
    path = run_dir / "config.yaml"
    if resume and path.exists():
        cfg = full_config(yaml.safe_load(path.read_text()))
        schedule = dict((overrides or {}).get("train", {}))
        other = [f"{section}.{key}" for section, keys in (overrides or {}).items() for key in keys
                 if section != "train" or key not in SCHEDULE_KEYS]
        if other:
            raise InputError(f"a resumed run keeps its config: only train.{{{','.join(SCHEDULE_KEYS)}}} may change, "
                             f"not {', '.join(other)}", path)
        cfg["train"].update(schedule)
    else:
        cfg = full_config(cfg)
    check_hardware(cfg["train"])
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(path, yaml.safe_dump(cfg, sort_keys=False))
    return cfg


def stage_finished(weights: Path, cfg: dict) -> bool:
    """Whether a stage's ``weights`` exist and were trained to ``cfg``'s schedule (``SCHEDULE_KEYS``): a resumed
    run skips such a stage and trains any other on from its last checkpoint."""
    if not weights.exists():
        return False
    trained = read_weights_config(weights)["train"]
    return all(trained.get(key) == cfg["train"][key] for key in SCHEDULE_KEYS)


def fit_stage(module: L.LightningModule, cfg: dict, run_dir: Path, stage: int, weights: Path, resume: bool,
              callbacks: Sequence[L.Callback] = ()) -> None:
    """Fit ``module`` (its own ``train_dataloader`` and ``val_dataloader``) for one stage with the trainer ``cfg``
    sets and ``callbacks`` (from the stage's last checkpoint on resume) and save its weights with the module's
    own config."""
    last = run_dir / f"stage{stage}" / "last.ckpt"
    trainer = _trainer(cfg, run_dir, stage, callbacks)
    trainer.fit(module, ckpt_path=str(last) if resume and last.exists() else None)
    if trainer.interrupted:
        raise KeyboardInterrupt
    if trainer.is_global_zero:
        save_weights(module.model, weights, module.cfg, {"stage": stage, "global_step": trainer.global_step})
    trainer.strategy.barrier()
