"""``i2preg eval``: the benchmark protocol (METHOD section 3) on trained weights, with the paper's figures.

The final pose is PRM's (``solver="prm"``) or, as an ablation, OpenCV's EPnP + RANSAC on ICL's own keypoint
pairs kp_2d <-> kp_3d (``solver="pnp"``, settings ``eval.pnp``); the forward pass, the solvers and the confidence
are ``inference``'s.

Written into ``out_dir``::

    pairs.csv                   one row per pair: errors of the final and the frustum pose (RTE, RRE, the
                                camera centre's offset in the true camera's axes and the yaw offset about its
                                vertical axis), confidence, time
    summary.json                the protocol statistics of both poses, the confidence's ROC AUC, the config,
                                the weights' path and sha256, device and speed
    cumulative_rte.png          cumulative error curves of the final and the frustum pose
    cumulative_rre.png
    acc_vs_thresholds.png       Acc as a function of the RTE threshold and of the RRE threshold
    pair_XXXX_projection.png    the cloud projected with the predicted pose (top) and the true one (bottom)
    pair_XXXX_keypoints.png     the 2D-3D correspondences kp_2d <-> kp_3d (projected with the true pose)
    pair_XXXX_overlap.png       the true frustum vs the classifier (cls_logits > 0) vs the geometric mask M
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from . import visualize as viz
from .assembly import load_model
from .errors import InputError, require_output_folder
from .files import sha256, write_text
from .geometry import project_pose
from .inference import (
    CONFIDENCE_SIGMA_PX,
    SOLVERS,
    evaluation_config,
    pair_loader,
    resolve_device,
    run,
    with_sequences,
)
from .metrics import centre_offsets, format_table, registration_errors, success, summarize, yaw_offsets
from .weights import read_weights_config, resolve_weights

DEFAULT_FIGURE_PAIRS = 3
"""Pairs drawn when none are named: the first ones."""

POSES = (("final", "", "pose"), ("frustum", "frustum_", "frustum_pose"))
"""The poses evaluated, PRM's final one and GPDM's frustum pose: (table row, CSV column prefix, model output);
``FINE_POSE`` joins them for weights with the fine search."""

FINE_POSE = ("fine", "fine_", "fine_pose")

ERROR_KEYS = ("rte", "rre", "rre_geodesic")
OFFSET_KEYS = ("centre_dx", "centre_dy", "centre_dz")
"""``metrics.centre_offsets``: the predicted camera centre minus the true one, in the true camera's axes."""
YAW_KEY = "yaw_offset"
"""``metrics.yaw_offsets``: how far right of the true camera's optical axis the predicted camera looks, degrees."""


def evaluated_poses(model: torch.nn.Module) -> tuple[tuple[str, str, str], ...]:
    """``POSES``, and ``FINE_POSE`` when ``model`` has the fine search."""
    return (*POSES, FINE_POSE) if getattr(model, "fine", None) is not None else POSES


def csv_columns(poses: tuple[tuple[str, str, str], ...]) -> list[str]:
    """pairs.csv's columns: the pair, each pose's errors, success, centre and yaw offsets, the confidence, how many
    point draws agree with the final pose (``eval.point_draws``; 1 without draws), the time."""
    return ["index", "sequence", "frame", "camera",
            *(prefix + k for _, prefix, _ in poses for k in (*ERROR_KEYS, "success", *OFFSET_KEYS, YAW_KEY)),
            "confidence", "draws_agreeing", "forward_ms"]


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` (B,) for the labels ``positive`` (B,) bool: the probability
    that a random positive scores above a random negative (ties count half); nan with a single class."""
    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    pos, neg = scores[positive][:, None], scores[~positive][None]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def pair_list(text: str) -> list[int]:
    """``"0,5,9"`` -> [0, 5, 9] (``""``: none); for ``--figure-pairs``."""
    return [int(part) for part in text.split(",") if part.strip()]



def finite_or_none(value: Any) -> Any:
    """JSON has no nan: non-finite floats become null, recursively."""
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def predict(
    model: torch.nn.Module, loader: DataLoader, device: torch.device, cfg: dict, solver: str, keep: set[int],
    progress: bool,
) -> tuple[list[dict[str, Any]], dict[int, tuple[dict, dict]], float]:
    """Run the model over ``loader`` with ``solver`` (``inference.run``). Returns one CSV row per pair (the
    columns of ``csv_columns``), the sample and outputs (on the CPU, no batch dimension; ``pose`` the final one)
    of the pairs whose index is in ``keep``, and the seconds spent in the model's forward (the solve is not part
    of forward_ms)."""
    rows, kept, forward_seconds = [], {}, 0.0
    thresholds, poses = cfg["eval"]["thresholds"], evaluated_poses(model)
    for batch, result in run(model, loader, device, solver, cfg["eval"], progress):
        forward_seconds += result.network_seconds
        out = {**result.out, "pose": result.pose}
        confidence = result.confidence.cpu()
        T_gt = batch["T_gt"].double().cpu().numpy()
        per_pose = {}
        for _, prefix, key in poses:
            T_pred = out[key].double().cpu().numpy()
            errors = registration_errors(T_pred, T_gt)
            errors["success"] = success(errors, **thresholds)
            errors.update(zip(OFFSET_KEYS, centre_offsets(T_pred, T_gt).T))
            errors[YAW_KEY] = yaw_offsets(T_pred, T_gt)
            per_pose.update({prefix + name: values for name, values in errors.items()})
        for b, meta in enumerate(batch["meta"]):
            rows.append({
                **{k: meta[k] for k in ("index", "sequence", "frame", "camera")},
                **{k: v[b].item() for k, v in per_pose.items()},
                "confidence": confidence[b].item(),
                "draws_agreeing": result.draws_agreeing[b].item(),
                "forward_ms": 1000 * result.network_seconds / len(batch["meta"]),
            })
            if meta["index"] in keep:
                kept[meta["index"]] = (
                    {k: batch[k][b].cpu() for k in ("image", "K", "points", "T_gt")},
                    {k: v[b].cpu() for k, v in out.items() if isinstance(v, torch.Tensor)},
                )
    return rows, kept, forward_seconds


def pair_figures(sample: dict, out: dict, errors: dict[str, float]) -> dict[str, np.ndarray]:
    """The three pictures of one pair, by kind. sample: the pair's image (3, H, W), K (3, 3), points (N, 3)
    and T_gt (4, 4); out: its model outputs (batch dimension removed); errors: ``rte`` and ``rre`` of its
    final pose. All on the CPU."""
    image, K, points, T_gt = sample["image"], sample["K"], sample["points"], sample["T_gt"]
    height, width = image.shape[-2:]
    _, depth, visible = project_pose(points.double(), T_gt.double(), K.double(), height, width)
    depth_range = (float(depth[visible].min()), float(depth[visible].max())) if visible.any() else None
    predicted = viz.draw_projection(image, points, out["pose"], K, depth_range)
    truth = viz.draw_projection(image, points, T_gt, K, depth_range)
    caption = f"predicted: RTE {errors['rte']:.2f} m, RRE {errors['rre']:.2f} deg"
    projection = np.concatenate([viz.add_caption(predicted, caption), viz.add_caption(truth, "ground truth")])
    keypoints = viz.add_caption(
        viz.draw_correspondences(image, out["kp_2d"], out["kp_3d"], T_gt, K), "kp_2d - kp_3d (true pose)"
    )
    _, _, in_frustum = project_pose(out["coarse_xyz"].double(), T_gt.double(), K.double(), height, width)
    overlap = viz.plot_overlap(
        out["coarse_xyz"], T_gt, K, (height, width),
        {"true frustum": in_frustum, "classifier (cls_logits > 0)": out["cls_logits"] > 0,
         "geometric mask M": out["mask"]},
    )
    return {"projection": projection, "keypoints": keypoints, "overlap": overlap}


def summary_figures(errors: dict[str, dict[str, np.ndarray]], thresholds: dict) -> dict[str, np.ndarray]:
    """The error curves over all pairs, by file name. errors: pose name -> ``registration_errors``."""
    rte, rre = thresholds["rte_thresh"], thresholds["rre_thresh"]
    return {
        "cumulative_rte.png": viz.plot_cumulative_errors({n: e["rte"] for n, e in errors.items()}, rte, "RTE (m)"),
        "cumulative_rre.png": viz.plot_cumulative_errors({n: e["rre"] for n, e in errors.items()}, rre, "RRE (deg)"),
        "acc_vs_thresholds.png": viz.plot_accuracy_vs_thresholds(errors, rte, rre),
    }


def confidence_report(confidence: np.ndarray, successes: np.ndarray) -> dict[str, Any]:
    """How well the confidence (B,) separates the successful pairs (B,) bool from the failures."""
    def mean(values):
        return float(values.mean()) if values.size else float("nan")

    return {
        "definition": "mean over queries of exp(-d^2 / (2 sigma_px^2)), d: pixels between kp_2d and kp_3d"
                      " projected with the predicted pose",
        "sigma_px": CONFIDENCE_SIGMA_PX,
        "roc_auc_success": roc_auc(confidence, successes),
        "mean_success": mean(confidence[successes]),
        "mean_failure": mean(confidence[~successes]),
    }


def offset_by_camera(rows: list[dict[str, Any]], keys, poses=POSES) -> dict[str, dict[str, list[float]]]:
    """Per pose of ``poses`` (default ``POSES``: final, frustum) and camera: the means of the columns ``keys`` (e.g.
    ``OFFSET_KEYS``, the camera-centre offset: x right, y down, z forward, metres) over that camera's pairs. A
    systematic offset shows here, e.g. a model that places the camera of a stereo rig between its two cameras."""
    by_camera = {camera: [r for r in rows if r["camera"] == camera] for camera in sorted({r["camera"] for r in rows})}
    return {name: {str(camera): [float(np.mean([r[prefix + k] for r in mine])) for k in keys]
                   for camera, mine in by_camera.items()} for name, prefix, _ in poses}


def evaluate(
    weights: str | os.PathLike | None,
    data_root: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    config: str | os.PathLike | None = None,
    split: str = "test",
    limit: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
    figure_pairs: list[int] | None = None,
    overrides: dict | None = None,
    progress: bool = True,
    solver: str = "prm",
    sequences: list[str] | None = None,
) -> dict[str, Any]:
    """Evaluate ``weights`` (a file or a bundled model's name; None: the bundled model) on the protocol pairs
    of ``split`` under ``data_root``; write the files of the module docstring into ``out_dir``, print the
    table, return the summary (as in summary.json, with nan where the file has null).

    config: a YAML path or bundled name whose ``data`` and ``eval`` sections replace the weights' (another
    dataset); overrides: nested dict merged last (``{"data": {"test_sequences": ["00"]}}``); sequences: the
    split's sequences (in place of the config's). limit: the first N pairs. figure_pairs: indices of the pairs
    to draw (default: the first 3). data_root None: the config's data root. solver: one of
    ``inference.SOLVERS`` (module docstring).
    """
    if solver not in SOLVERS:
        raise InputError(f"solver must be one of {', '.join(SOLVERS)}, not {solver!r}")
    weights, out_dir = resolve_weights(weights), require_output_folder(out_dir)
    weights_config = read_weights_config(weights)
    if weights_config.get("method", "icl") != "icl":
        raise InputError(f"{weights_config['method']} weights: evaluate them with i2preg compare", weights)
    cfg = evaluation_config(weights_config, config, with_sequences(overrides, split, sequences))
    torch_device = resolve_device(device)
    loader = pair_loader(cfg, split, data_root, limit, batch_size, torch_device)
    num_pairs = len(loader.dataset)
    figure_pairs = list(range(min(DEFAULT_FIGURE_PAIRS, num_pairs))) if figure_pairs is None else list(figure_pairs)
    outside = [i for i in figure_pairs if not 0 <= i < num_pairs]
    if outside:
        raise InputError(f"figure pairs {outside} are not among the {num_pairs} evaluated pairs")
    model, cfg = load_model(weights, cfg)

    thresholds, poses = cfg["eval"]["thresholds"], evaluated_poses(model)
    start = time.perf_counter()
    rows, kept, forward_seconds = predict(model, loader, torch_device, cfg, solver, set(figure_pairs), progress)
    wall_seconds = time.perf_counter() - start

    # The statistics are those of the CSV's rows, the numbers anyone can recompute from the file.
    errors = {name: {k: np.array([row[prefix + k] for row in rows]) for k in (*ERROR_KEYS, "success")}
              for name, prefix, _ in poses}
    stats = {name: summarize(e, **thresholds) for name, e in errors.items()}
    table = format_table(stats)
    figures = summary_figures(errors, thresholds)
    for index in figure_pairs:
        pictures = pair_figures(*kept[index], rows[index])  # rows are in pair order
        figures.update({f"pair_{index:04d}_{kind}.png": rgb for kind, rgb in pictures.items()})

    out_dir.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    writer = csv.DictWriter(text, csv_columns(poses), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(out_dir / "pairs.csv", text.getvalue())
    for name, rgb in figures.items():
        viz.save_image(out_dir / name, rgb)
    summary = {
        **stats,
        "table": table,
        "thresholds": thresholds,
        "confidence": confidence_report(np.array([r["confidence"] for r in rows]), errors["final"]["success"]),
        "centre_offset_by_camera": offset_by_camera(rows, OFFSET_KEYS, poses),
        "yaw_offset_by_camera": offset_by_camera(rows, (YAW_KEY,), poses),
        "pairs": num_pairs,
        "split": split,
        "solver": solver,
        "data_root": None if data_root is None else str(Path(data_root).resolve()),
        "weights": {"path": str(weights.resolve()), "sha256": sha256(weights)},
        "device": str(torch_device),
        "batch_size": batch_size,
        "seconds_per_pair": forward_seconds / num_pairs,
        "wall_seconds_per_pair": wall_seconds / num_pairs,
        "figures": sorted(figures),
        "config": cfg,
    }
    write_text(out_dir / "summary.json", json.dumps(finite_or_none(summary), indent=2, allow_nan=False) + "\n")
    print(table)
    return summary
