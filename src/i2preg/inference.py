"""Trained weights on pairs: the config they run with, the forward pass, the solvers and the confidence.

One path for ``api`` (one call's inputs), ``evaluate`` and ``compare`` (a test set): ``infer`` runs a network on a
collated batch and solves the final pose, ``run`` does so over a loader.

Solvers (``SOLVERS``), for ICL: ``prm``, the network's own final pose; ``pnp``, OpenCV's EPnP + RANSAC on ICL's
keypoint pairs kp_2d <-> kp_3d (settings ``eval.pnp``); ``frustum``, GPDM's frustum pose alone; ``fine``, the fine
search's refinement of it (``model.fine``, beyond the paper; weights trained with it). The matching
baseline has one: PnP-RANSAC on its mutual nearest-neighbour matches (``baselines.matching.estimate_poses``).
With ``eval.refine: edges`` the pose of any solver, and the baseline's, is then refined by edge alignment on the
batch's dense clouds (``refine.refine_poses``), with ``lines`` turned to the yaw that lines the clouds' walls up
with the images' horizontal lines (``lines.align_poses``); both beyond the paper.

Point draws (``eval.point_draws``, beyond the paper): the network sees a sample of ``data.num_points`` of a cloud's
voxel-kept points, and its poses move with the sample. With D draws, each pair is run with D samples of its
points (one image encoding for all) and each pose is the consensus of the D (``geometry.consensus_pose``).
"""

from __future__ import annotations

import operator
import os
import time
from dataclasses import dataclass
from typing import Any, Iterator

import cv2
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from .assembly import full_config
from .baselines.matching import MatchingNet, estimate_poses
from .baselines.pnp import pnp_poses
from .config import deep_update, load_config
from .data.collate import Collate, first_draws
from .data.pairs import build_dataset
from .errors import InputError, require_folder
from .geometry import consensus_pose, project_points, transform_points
from .lines import align_poses
from .refine import refine_poses

SOLVERS = ("prm", "pnp", "frustum", "fine")
"""Where ICL's final pose comes from (module docstring)."""

REFINEMENTS = ("none", "edges", "lines")
"""``eval.refine``: what follows the solver, for every method (module docstring)."""


def checked_draws(point_draws: Any) -> int:
    """``eval.point_draws`` (an int, NumPy's included) as an int, checked."""
    try:
        count = operator.index(point_draws)
    except TypeError:
        count = 0
    if isinstance(point_draws, bool) or count < 1:
        raise InputError(f"point_draws (eval.point_draws) must be a whole number of at least 1, not {point_draws!r}")
    return count


def checked_refinement(refine: str) -> str:
    """``refine`` if it is one of ``REFINEMENTS``, else an InputError."""
    if refine not in REFINEMENTS:
        raise InputError(f"eval.refine must be one of {', '.join(REFINEMENTS)}, not {refine!r}")
    return refine

CONFIDENCE_SIGMA_PX = 8.0
"""Pixel scale of ``reprojection_confidence``."""

INFERENCE_SETTINGS = {("gpdm", "mask_source"), ("gpdm", "refine_iterations"), ("gpdm", "refine_shrink"),
                      ("gpdm", "refine_points"), ("fine", "iterations"), ("fine", "wide_steps"),
                      ("fine", "wide_radii"), ("fine", "wide_penalty")}
"""(section, key) of the model settings an evaluation may override: they change what the network computes
with its weights, not the weights."""


def reprojection_confidence(
    kp_2d: torch.Tensor, kp_3d: torch.Tensor, pose: torch.Tensor, K: torch.Tensor, sigma_px: float = CONFIDENCE_SIGMA_PX
) -> torch.Tensor:
    """How well the predicted pose explains the model's own correspondences, in [0, 1].

    ICLM is trained so that the true pose maps each 3D keypoint onto its 2D partner (L_corr), and PRM
    regresses the pose from these pairs; when the pose is right, they agree under it. The score is the
    mean over the Nq queries of exp(-d^2 / (2 sigma_px^2)), d the pixel distance between kp_2d and kp_3d
    projected through ``pose`` and K; a 3D keypoint behind the camera scores 0.

    kp_2d: (B, Nq, 2) input-image pixels. kp_3d: (B, Nq, 3) cloud frame. pose: (B, 4, 4) cloud -> camera.
    K: (B, 3, 3). Returns (B,).
    """
    uv, depth = project_points(transform_points(pose, kp_3d), K)
    agreement = torch.exp(-(uv - kp_2d).square().sum(-1) / (2 * sigma_px**2))
    return (agreement * (depth > 0)).mean(-1)


def evaluation_config(
    weights_config: dict, config: str | os.PathLike | dict | None = None, overrides: dict | None = None
) -> dict[str, Any]:
    """The full config to run weights with: the weights' own (``weights_config``, from their header) with the
    ``data`` section of ``config`` (a YAML path, a bundled name, or a config dict) in place of its own and its
    ``eval`` section merged over their own, then ``overrides`` (nested dict) merged in. The model always comes
    from the weights (but for the ``INFERENCE_SETTINGS``), and so does the network input size: the data's crop
    and point count must stay those the weights were trained with."""
    trained = full_config(weights_config)
    cfg = dict(trained)
    if config is not None:
        other = full_config(config if isinstance(config, dict) else load_config(config))
        cfg["data"], cfg["eval"] = other["data"], deep_update(trained["eval"], other["eval"])
    changed = {(section, key) for section, values in (overrides or {}).get("model", {}).items()
               for key in (values if isinstance(values, dict) else {None: None})}
    if not changed <= INFERENCE_SETTINGS:
        allowed = ", ".join(f"model.{section}.{key}" for section, key in sorted(INFERENCE_SETTINGS))
        raise InputError(f"the model settings come from the weights; overrides may change only {allowed}")
    cfg = deep_update(cfg, overrides or {})
    checked_refinement(cfg["eval"]["refine"])
    checked_draws(cfg["eval"]["point_draws"])
    data, input_size = cfg["data"], trained["data"]
    if list(data["crop"]) != list(input_size["crop"]) or int(data["num_points"]) != int(input_size["num_points"]):
        raise InputError(
            f"the weights take {list(input_size['crop'])} images and {input_size['num_points']} points, the data"
            f" config gives crop {list(data['crop'])} and {data['num_points']} points (data.crop, data.num_points)",
            None if isinstance(config, dict) else config,
        )
    return cfg


def with_sequences(overrides: dict | None, split: str, sequences: list[str] | None) -> dict:
    """``overrides`` (nested dict) with ``data.{split}_sequences`` set to ``sequences`` when given."""
    if sequences is None:
        return overrides or {}
    return deep_update(overrides or {}, {"data": {f"{split}_sequences": [str(s) for s in sequences]}})


def resolve_device(device: str) -> torch.device:
    """"cpu", "cuda" or "auto" (cuda when torch sees a GPU) -> a torch device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise InputError(f"device must be cpu, cuda or auto, not {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("device cuda requested but torch sees no CUDA GPU")
    return torch.device(device)


def to_device(batch: dict, device: torch.device) -> dict:
    """Move the tensors (and lists of tensors) of a collated batch to ``device``; ``meta`` stays."""
    def move(value):
        if isinstance(value, torch.Tensor):
            return value.to(device, non_blocking=True)
        if isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
            return [v.to(device, non_blocking=True) for v in value]
        return value

    return {key: move(value) for key, value in batch.items()}


def pair_loader(cfg: dict, split: str, data_root: str | os.PathLike | None, limit: int | None,
                batch_size: int, device: torch.device = torch.device("cpu")) -> DataLoader:
    """The first ``limit`` (None: all) protocol pairs of ``split`` under ``data_root`` (None: the config's), in
    order, collated for ``cfg``'s model to run on ``device``.

    On CUDA, ``train.num_workers`` loader workers build the batches beside the network. On the CPU they get only the
    cores that torch's threads leave free (``os.cpu_count() - torch.get_num_threads()``; by default none), as a
    worker on the network's cores competes with it: there the collate runs between the batches, its kNN on every
    core. ``i2preg eval`` of the 200 test pairs on 2 cores took 41-43 s against 44-46 s with one worker, whose
    collate doubled the forward's time (121-129 against 195-204 ms a pair)."""
    if data_root is not None:
        require_folder(data_root)
    if batch_size < 1 or (limit is not None and limit < 1):
        raise InputError(f"need batch_size >= 1 and limit >= 1, got {batch_size} and {limit}")
    dataset = build_dataset(cfg, split, data_root, checked_draws(cfg["eval"]["point_draws"]))
    pairs = Subset(dataset, range(min(len(dataset), limit or len(dataset))))
    workers = int(cfg["train"]["num_workers"])
    if device.type != "cuda":
        workers = min(workers, max(0, (os.cpu_count() or 1) - torch.get_num_threads()))
    return DataLoader(pairs, batch_size=batch_size, collate_fn=Collate(cfg["model"], knn_workers=1 if workers else -1),
                      num_workers=workers)


POSE_OUTPUTS = ("frustum_pose", "fine_pose", "prior_pose", "pose")
"""The network's outputs that are poses: with point draws, each the consensus of its draws."""


def search_scores(out: dict) -> torch.Tensor:
    """(B,) the fine search's logit of its best hypothesis at any of its grids (``fine_logits``), a pair's: how
    well the network's learned score rates its own final pose, comparable between runs of one model (``api.chosen_run``
    weighs an input's runs by it: its mirror images', its yaw sectors')."""
    return out["fine_logits"].flatten(1).max(1).values


def merge_draws(pose: torch.Tensor, solved: torch.Tensor, draws: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Poses (P x D, 4, 4) of P pairs' D point draws (consecutive rows) and whether each was solved (P x D,) ->
    each pair's consensus of its solved draws (P, 4, 4), whether any was solved (P,) and how many draws agree
    with the consensus (P,) int64 (``geometry.consensus_pose``)."""
    pairs = len(pose) // draws
    solved = solved.view(pairs, draws)
    merged, agreeing = consensus_pose(pose.view(pairs, draws, 4, 4), solved)
    return merged.to(pose), solved.any(1), agreeing


def merged_outputs(out: Any, draws: int, rows: int) -> Any:
    """The network's outputs on P pairs' D point draws (rows = P x D) -> one row a pair: the poses
    (``POSE_OUTPUTS``) the consensus of the draws, every other output with a row a sample the first draw's, and
    the outputs without (the token centres of a whole map, (T, 2) ``*_uv``) as they are."""
    if isinstance(out, dict):
        return {key: merge_draws(value, torch.ones(rows, dtype=torch.bool, device=value.device), draws)[0]
                if key in POSE_OUTPUTS else value if key.endswith("_uv") and value.dim() == 2
                else merged_outputs(value, draws, rows) for key, value in out.items()}
    if isinstance(out, list):
        return [merged_outputs(value, draws, rows) for value in out]
    return out[::draws] if isinstance(out, torch.Tensor) and out.dim() and len(out) == rows else out


def solve(model: nn.Module, out: dict, batch: dict, solver: str, eval_cfg: dict
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """After the network: the final poses (B, 4, 4) cloud -> camera, whether each solve succeeded (B,) bool, how
    many of the pair's point draws agree with its pose (B,) int64 (``merge_draws``; 1 without draws) and the poses
    (B, 4, 4) before ``eval.refine`` (the final poses themselves without it).
    solver: one of ``SOLVERS`` for ICL (module docstring); the matching baseline always solves PnP on its matches.
    eval_cfg: the ``eval`` section (its ``pnp``, ``refine``, ``edges`` and ``lines``, and ``matching`` for the
    baseline). A batch of point draws (``batch["draws"]``) gives one pose a pair, the consensus of its draws',
    refined after. ``batch["line_evidence"]`` (rows, P) and ``batch["ground_normals"]`` (rows, 3), where given: the
    images' ``lines.line_evidence`` and the clouds' ``lines.ground_normals`` for ``lines``, computed once for several
    runs of a batch."""
    refine = checked_refinement(eval_cfg.get("refine", "none"))
    if isinstance(model, MatchingNet):
        pose, solved = estimate_poses(out, batch["K"], eval_cfg)[:2]
    elif solver not in SOLVERS:
        raise InputError(f"solver must be one of {', '.join(SOLVERS)}, not {solver!r}")
    elif solver == "pnp":
        pose, solved = pnp_poses(out["kp_2d"], out["kp_3d"], batch["K"], eval_cfg["pnp"])
    else:
        if solver == "fine" and "fine_pose" not in out:
            raise InputError("solver fine needs weights trained with the fine search (model.fine.num_points > 0)")
        pose = out[{"frustum": "frustum_pose", "fine": "fine_pose", "prm": "pose"}[solver]]
        solved = torch.ones(len(pose), dtype=torch.bool, device=pose.device)
    agreeing = torch.ones(len(pose), dtype=torch.long, device=pose.device)
    if batch.get("draws", 1) > 1:
        pose, solved, agreeing = merge_draws(pose, solved, batch["draws"])
        batch = first_draws(batch)
    if refine != "none" and "dense_points" not in batch:
        raise InputError(f"eval.refine: {refine} needs the pairs' dense clouds (data.dense_points > 0)")
    unrefined = pose
    if refine == "edges":
        pose = refine_poses(batch["image"], batch["K"], batch["dense_points"], pose, eval_cfg.get("edges")).to(pose)
    elif refine == "lines":
        pose = align_poses(batch["image"], batch["K"], batch["dense_points"], pose, eval_cfg.get("lines"),
                           batch.get("line_evidence"), batch.get("ground_normals")).to(pose)
    return pose, solved, agreeing, unrefined


@dataclass
class Inference:
    """One batch through a network and a solver. out: the network's outputs (with point draws, a row a pair:
    ``merged_outputs``); pose (B, 4, 4) the final poses, cloud -> camera; solved (B,) bool: the solve succeeded (a
    failed PnP gives the identity); confidence (B,) ``reprojection_confidence`` of ``pose`` (with point draws, its
    mean over the draws' keypoint pairs; None for the matching baseline, which has no keypoint pairs);
    draws_agreeing (B,) int64: how many of the pair's point draws agree with its pose (``eval.point_draws``; 1
    without draws); unrefined_pose (B, 4, 4): the solver's poses before ``eval.refine`` (``pose`` without it);
    network_seconds, solver_seconds: wall time of the forward pass and of the solve (CUDA synchronised)."""

    out: dict[str, torch.Tensor]
    pose: torch.Tensor
    solved: torch.Tensor
    confidence: torch.Tensor | None
    draws_agreeing: torch.Tensor
    unrefined_pose: torch.Tensor
    network_seconds: float
    solver_seconds: float


def timestamp(device: torch.device) -> float:
    """A timestamp after the device's queued work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@torch.inference_mode()
def infer(model: nn.Module, batch: dict, solver: str = "prm", eval_cfg: dict | None = None,
          encoded: tuple | None = None) -> Inference:
    """Run ``model`` (in eval mode, on the batch's device) on a collated ``batch`` and solve its final poses
    (``solve``; ``eval_cfg`` is needed by the pnp solver and the matching baseline). encoded: ICL's
    ``encode(batch)``, computed once for runs of the batch that differ only in its ``yaw_prior`` (None: the model
    encodes the batch itself)."""
    device = batch["image"].device
    start = timestamp(device)
    out = model(batch) if encoded is None else model(batch, encoded)
    forwarded = timestamp(device)
    pose, solved, draws_agreeing, unrefined_pose = solve(model, out, batch, solver, eval_cfg or {})
    solved_at = timestamp(device)
    draws = batch.get("draws", 1)
    confidence = None
    if "kp_2d" in out:  # in the network's dtype; with point draws the mean over the draws' keypoint pairs
        dtype = out["kp_3d"].dtype
        # coarse to fine: the global stage's 2D keypoints, found over the whole image; a frustum-centred window
        # starts at the frustum pose's projection, so its keypoints agree with that pose by construction
        kp_2d = out["coarse_stages"][0]["kp_2d"] if out.get("coarse_stages") else out["kp_2d"]
        confidence = reprojection_confidence(kp_2d, out["kp_3d"], pose.to(dtype).repeat_interleave(draws, dim=0),
                                             batch["K"].to(dtype)).view(-1, draws).mean(1)
    if draws > 1:
        out = merged_outputs(out, draws, len(batch["image"]))
    return Inference(out, pose, solved, confidence, draws_agreeing, unrefined_pose, forwarded - start,
                     solved_at - forwarded)


def run(model: nn.Module, loader: DataLoader, device: torch.device, solver: str = "prm", eval_cfg: dict | None = None,
        progress: bool = True, desc: str = "eval") -> Iterator[tuple[dict, Inference]]:
    """``infer`` over the batches of ``loader`` on ``device``: yields each batch (moved to ``device``) and its
    ``Inference``. The model goes to ``device`` in eval mode; torch's and OpenCV's RNGs (PnP-RANSAC) are seeded
    with 0 first, so that a run repeats exactly. On CUDA the first batch runs once more before its timed pass, with
    the RNGs put back after it (CUDA's first calls load its libraries and pick its kernels: a cold batch of 8 took 336
    ms a pair on an H200, a warm one 10 ms)."""
    torch.manual_seed(0)
    cv2.setRNGSeed(0)
    model.eval().to(device)
    with tqdm(total=len(loader.dataset), unit="pair", desc=desc, disable=not progress) as bar:
        for index, batch in enumerate(loader):
            batch = to_device(batch, device)
            if index == 0 and device.type == "cuda":
                with torch.random.fork_rng(devices=[device], device_type=device.type):
                    infer(model, batch, solver, eval_cfg)
                cv2.setRNGSeed(0)
            result = infer(model, batch, solver, eval_cfg)
            batch = first_draws(batch)
            yield batch, result
            bar.update(len(batch["meta"]))
