"""Has ICLM learned correspondences? Statistics of its keypoints and heatmaps, and of PRM's residual.

    python benchmarks/iclm_diagnostics.py [--weights W] [--data datasets/synthetic-train --split val] [--pairs 48]

Per pair the N_q keypoint pairs (kp_2d, kp_3d) of ICLM are compared with each other through the GT pose: the
projection error |pi(T_gt kp_3d) - kp_2d| (L_corr, pixels, 3D keypoints in front of the camera only), beside two
references: the error if every kp_2d sat at the mean of its pair's projected 3D keypoints (what a collapsed 2D
branch scores) and the error if every kp_2d were its 3D keypoint projected through the frustum pose instead of
the GT one (what pairing through GPDM's pose alone scores: below it, ICLM sees more than GPDM), with the fine
search, the same through the fine pose (about which the windows of a coarse-to-fine ICLM sit); and the share of
pairs under 8 px (what PnP-RANSAC would have as inliers). The heatmaps'
entropy is given against a uniform one (log T over the 2D heatmap's T tokens, those of the whole image or, coarse
to fine, of the last window; log of the masked points). PRM's residual
(rotation in degrees, translation in metres) is compared with the residual its input pose (the fine pose, or the
frustum pose) actually needs.
Prints a Markdown table of means (and medians) over the pairs; with ``--per-query``, also each query's median
projection error and share under the inlier threshold, laid out as the anchor grid (``iclm.anchor_grid``).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from i2preg.config import parse_overrides
from i2preg.data.collate import Collate
from i2preg.data.pairs import build_dataset
from i2preg.geometry import project_points, rotation_to_axis_angle, transform_points
from i2preg.inference import evaluation_config
from i2preg.losses import MIN_DEPTH, residual_target
from i2preg.model.icl import ICL
from i2preg.model.iclm import anchor_grid
from i2preg.weights import bundled_weights, load_weights, read_weights_config


def entropy(heatmap: torch.Tensor) -> torch.Tensor:
    """(B, Q, N) rows summing to 1 -> (B,) mean entropy over the queries (nats)."""
    return -(heatmap * heatmap.clamp_min(1e-12).log()).sum(-1).mean(-1)


def pair_statistics(out: dict, batch: dict, inlier_px: float) -> dict[str, np.ndarray]:
    """Per pair of the batch: the quantities of the module docstring."""
    pixels, depth = project_points(transform_points(batch["T_gt"], out["kp_3d"]), batch["K"])
    in_front = (depth > MIN_DEPTH).float()
    count = in_front.sum(-1).clamp_min(1)

    def front_mean(values: torch.Tensor) -> torch.Tensor:
        """(B, Q) -> (B,) mean over the queries whose 3D keypoint is in front of the GT camera."""
        return (values * in_front).sum(-1) / count

    error = (out["kp_2d"] - pixels).norm(dim=-1)
    centre = (pixels * in_front[..., None]).sum(1, keepdim=True) / count[:, None, None]
    def pairing_px(pose: torch.Tensor) -> torch.Tensor:
        """(B,) error of pairing each 3D keypoint with its projection through ``pose`` instead of kp_2d."""
        return front_mean((project_points(transform_points(pose, out["kp_3d"]), batch["K"])[0] - pixels).norm(dim=-1))

    prior_pose = out.get("fine_pose", out["frustum_pose"])  # the pose PRM refines
    masked = (out["heatmap_3d"] > 0).sum(-1).float().mean(-1)
    dR_gt, dt_gt = residual_target(prior_pose, batch["T_gt"])
    rotation_deg = lambda R: torch.rad2deg(rotation_to_axis_angle(R).norm(dim=-1))  # noqa: E731
    stats = {
        "corr_px": front_mean(error),
        "collapsed_2d_px": front_mean((centre - pixels).norm(dim=-1)),
        "frustum_pairing_px": pairing_px(out["frustum_pose"]),
        **({"fine_pairing_px": pairing_px(out["fine_pose"])} if "fine_pose" in out else {}),
        f"under_{inlier_px:g}px": front_mean((error < inlier_px).float()),
        "kp_2d_spread_px": out["kp_2d"].std(1).norm(dim=-1),
        "kp_3d_spread_px": pixels.std(1).norm(dim=-1),
        "entropy_2d": entropy(out["heatmap_2d"]),
        "uniform_2d": torch.full_like(count, math.log(out["heatmap_2d"].shape[-1])),
        "entropy_3d": entropy(out["heatmap_3d"]),
        "uniform_3d": masked.clamp_min(1).log(),
        "prm_rotation_deg": rotation_deg(out["residual_rotation"]),
        "needed_rotation_deg": rotation_deg(dR_gt),
        "prm_translation_m": out["residual_translation"].norm(dim=-1),
        "needed_translation_m": dt_gt.norm(dim=-1),
        "query_error_px": torch.where(in_front.bool(), error, torch.nan),  # (B, Q), NaN: behind the GT camera
    }
    return {k: v.double().cpu().numpy() for k, v in stats.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=bundled_weights())
    parser.add_argument("--data", default="datasets/synthetic-train")
    parser.add_argument("--split", default="val")
    parser.add_argument("--pairs", type=int, default=48)
    parser.add_argument("--inlier-px", type=float, default=8.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--per-query", action="store_true", help="each query's errors, as the anchor grid")
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                        help="override an inference setting (evaluate.INFERENCE_SETTINGS)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg = evaluation_config(read_weights_config(args.weights), overrides=parse_overrides(args.set))
    dataset = build_dataset(cfg, args.split, args.data)
    loader = DataLoader(Subset(dataset, range(min(args.pairs, len(dataset)))), batch_size=8,
                        collate_fn=Collate(cfg["model"]))
    model = ICL(cfg["model"])
    load_weights(model, args.weights)
    model.eval()
    parts: list[dict[str, np.ndarray]] = []
    with torch.no_grad():
        for batch in loader:
            parts.append(pair_statistics(model(batch), batch, args.inlier_px))
    stats = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    query_error = stats.pop("query_error_px")

    print(f"{args.weights} on {len(stats['corr_px'])} {args.split} pairs of {args.data}\n")
    print("| quantity | mean | median |\n|---|---|---|")
    for key, values in stats.items():
        print(f"| {key} | {values.mean():.3f} | {np.median(values):.3f} |")
    if args.per_query:
        print_query_grid(query_error, cfg["data"]["crop"], args.inlier_px)


def print_query_grid(query_error: np.ndarray, image_size: list[int], inlier_px: float) -> None:
    """query_error: (pairs, Q) pixels, NaN where the 3D keypoint is behind the camera. One Markdown table a
    statistic, a row per row of anchors (top first), a column per column (left first)."""
    anchors = anchor_grid(query_error.shape[1], *image_size).numpy()
    rows, cols = len(np.unique(anchors[:, 1])), len(np.unique(anchors[:, 0]))
    median = np.nanmedian(query_error, axis=0)
    inliers = 100 * np.nanmean(np.where(np.isnan(query_error), np.nan, query_error < inlier_px), axis=0)
    for title, values, fmt in (("median error (px)", median, "{:.1f}"), (f"% under {inlier_px:g} px", inliers, "{:.0f}")):
        grid = np.full(rows * cols, np.nan)
        grid[: len(values)] = values
        print(f"\n{title}, query q at row q // {cols}, column q % {cols} of the anchor grid\n")
        print("| row | " + " | ".join(str(c) for c in range(cols)) + " |\n|---" * 1 + "|---" * cols + "|")
        for r, line in enumerate(grid.reshape(rows, cols)):
            print(f"| {r} | " + " | ".join(fmt.format(v) for v in line) + " |")


if __name__ == "__main__":
    main()
