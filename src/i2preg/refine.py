"""Edge alignment: a non-learned refinement of a pose on the dense cloud (beyond the paper; ``eval.refine``).

Under a good pose the cloud's depth discontinuities (a facade's edge, a pole, a car's outline against what lies
behind) project onto the image's intensity edges. Starting from a pose (PRM's, or any solver's), this scores
hypotheses ``dT @ T`` (a yaw about the camera's vertical axis and a lateral shift along its x axis, on a grid
that shrinks each pass) by the blurred image gradient across each of the cloud's foreground depth-jump points at
its projection, and keeps the best; a small penalty on the offset keeps the start unless the edges clearly
prefer another pose. The depth along the optical axis is left to the network: edges
pin it weakly. It needs the cloud denser than the network's input (``data.dense_points``): on the 48
held-out pairs of the stage-2 design set the true pose outscores GPDM's in 73 % of the pairs with 8,192 points
and in 88 % with 40,960 (docs/METHOD.md, "Edge alignment after the network").
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree

from .geometry import project_points, transform_points

EDGE_DEFAULTS: dict[str, Any] = {
    "blur_px": 2.0,  # Gaussian sigma of the gradient maps
    "jump_m": 0.3,  # a point is an edge point if a neighbour in the image lies this much deeper
    "neighbours": 9,  # image-plane neighbours searched for the jump
    "radius_px": 8.0,  # within this distance
    "yaw_deg": 3.0,  # first grid: yaw offsets -yaw_deg..yaw_deg
    "steps": 10,  # grid steps either side of 0, yaw and lateral alike
    "lateral_m": 1.2,  # first grid: lateral offsets (camera x) -lateral_m..lateral_m
    "passes": 2,  # each later grid spans one step of the previous one either side of its best
    "penalty": 0.1,  # score (relative to the grid centre's) lost per first-grid range of offset
}
"""The ``eval.edges`` settings of ``eval.refine: edges``, chosen on the 100 validation pairs of the training world
(world seed 1) and 100 pairs of an unseen world (seed 3; docs/what-we-tried.md), never on the test set."""


def gradient_maps(image: torch.Tensor, blur_px: float) -> torch.Tensor:
    """(3, h, w) RGB in [0, 1] -> (2, h, w) the Gaussian-blurred magnitudes |d/du|, |d/dv| of its grey image's
    Sobel gradient."""
    grey = image.mean(0).detach().cpu().numpy().astype(np.float32)
    maps = [cv2.GaussianBlur(np.abs(cv2.Sobel(grey, cv2.CV_32F, *order, ksize=3)), (0, 0), blur_px)
            for order in ((1, 0), (0, 1))]
    return torch.from_numpy(np.stack(maps))


def depth_edge_points(points_cam: torch.Tensor, K: torch.Tensor, image_size: tuple[int, int],
                      conf: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Camera-frame points (N, 3) -> the foreground points of depth jumps (E, 3), their weights (E,) and the
    absolute image-plane components (E, 2) of the unit direction towards the deeper side. A point's weight is the
    largest depth by which one of its ``neighbours`` image-plane neighbours within ``radius_px`` lies behind it,
    capped at 5 m; it is kept where that exceeds ``jump_m``. Points more than 20 px outside the (h, w) image or
    nearer than 0.5 m are left out."""
    h, w = image_size
    uv, depth = project_points(points_cam, K)
    near = (depth > 0.5) & (uv[:, 0] > -20) & (uv[:, 0] < w + 20) & (uv[:, 1] > -20) & (uv[:, 1] < h + 20)
    points_cam, uv, depth = points_cam[near], uv[near].numpy(), depth[near].numpy()
    if len(depth) < 2:
        return points_cam[:0], torch.zeros(0), torch.zeros(0, 2)
    index = cKDTree(uv).query(uv, min(conf["neighbours"], len(depth)), distance_upper_bound=conf["radius_px"])[1]
    # a missing neighbour (index len(depth)) is no jump
    behind = np.append(depth, -np.inf)[index] - depth[:, None]  # (E, k)
    jump = np.clip(behind.max(axis=1), 0, 5)
    towards = ((np.vstack([uv, np.zeros((1, 2))])[index] - uv[:, None]) * (behind > conf["jump_m"])[..., None]).sum(1)
    direction = np.abs(towards) / np.maximum(np.linalg.norm(towards, axis=1, keepdims=True), 1e-9)
    keep = jump > conf["jump_m"]
    return points_cam[keep], torch.from_numpy(jump[keep]), torch.from_numpy(direction[keep])


def yaw_shift(yaw_rad: float, lateral_m: float) -> torch.Tensor:
    """(4, 4) float64: a rotation by yaw_rad about the camera's y axis, then a shift by lateral_m along its x axis."""
    c, s = math.cos(yaw_rad), math.sin(yaw_rad)
    return torch.tensor([[c, 0, s, lateral_m], [0, 1, 0, 0], [-s, 0, c, 0], [0, 0, 0, 1]], dtype=torch.float64)


def edge_scores(gradients: torch.Tensor, points_cam: torch.Tensor, weights: torch.Tensor, directions: torch.Tensor,
                K: torch.Tensor, yaws: torch.Tensor, laterals: torch.Tensor) -> torch.Tensor:
    """How well the depth jumps of camera-frame points (E, 3) (weights (E,), directions (E, 2)) fall on image edges
    across them once each hypothesis ``yaw_shift(yaws[i], laterals[j])`` moves them: (Y, L) the weighted mean over
    the points of the gradient maps (2, h, w) at the projection, each component times the jump direction's. A
    projection outside the map counts for nothing. A yaw moves a point's depth and image row, the shift only its
    column: both are computed per yaw (Y, E), the columns per hypothesis (Y, L, E)."""
    h, w = gradients.shape[-2:]
    x, y, z = points_cam.T  # (E,) each; a y-axis rotation leaves y as it is
    c, s = yaws.cos().float()[:, None], yaws.sin().float()[:, None]  # (Y, 1)
    depth = c * z - s * x  # (Y, E)
    inverse = 1 / depth.clamp_min(0.5)
    grid_u = (K[0, 0] * (2 / (w - 1))) * ((c * x + s * z)[:, None] + laterals.float()[None, :, None]) \
        * inverse[:, None] + (K[0, 2] * (2 / (w - 1)) - 1)  # (Y, L, E), grid_sample's align_corners=True
    grid_v = (K[1, 1] * (2 / (h - 1))) * y * inverse + (K[1, 2] * (2 / (h - 1)) - 1)  # (Y, E)
    Y, L, E = grid_u.shape
    grid = torch.stack([grid_u, grid_v[:, None].expand(Y, L, E)], -1).view(1, Y * L, E, 2)
    values = F.grid_sample(gradients[None], grid, align_corners=True)[0]  # (2, Y L, E)
    across = (directions[:, 0] * values[0] + directions[:, 1] * values[1]).view(Y, L, E)
    row_weights = ((grid_v.abs() <= 1) & (depth > 0.5)).to(across.dtype) * weights  # (Y, E)
    inside = (grid_u.abs() <= 1).to(across.dtype) * row_weights[:, None]
    return (across * inside).sum(-1) / inside.sum(-1).clamp_min(1e-6)


def refine_pose(image: torch.Tensor, K: torch.Tensor, points: torch.Tensor, pose: torch.Tensor,
                conf: dict | None = None) -> torch.Tensor:
    """One pair. image (3, h, w) RGB in [0, 1] with intrinsics K (3, 3); points (N, 3) the dense cloud (cloud
    frame); pose (4, 4) cloud -> camera, the start. Returns the refined pose (4, 4), cloud -> camera, in the
    start's dtype; the start itself when the cloud has no depth-jump points in view.

    Each pass scores the (2 steps + 1)^2 hypotheses ``yaw_shift`` of a grid about the current best (offsets
    -yaw..yaw by -lateral..lateral, the first pass's from ``conf``, each later one a step of the last either side),
    relative to the grid's middle hypothesis (the current best) less ``penalty`` times the offset in first-grid
    ranges, so that a far hypothesis must score clearly better to win."""
    conf = {**EDGE_DEFAULTS, **(conf or {})}
    K64, start = K.double().cpu(), pose.double().cpu()
    gradients = gradient_maps(image, conf["blur_px"])
    points_cam, weights, directions = depth_edge_points(transform_points(start, points.double().cpu()), K64,
                                                        tuple(gradients.shape[-2:]), conf)
    if len(points_cam) == 0:
        return pose
    weights, directions, K32 = weights.float(), directions.float(), K.float().cpu()
    steps = conf["steps"]
    fractions = torch.arange(-steps, steps + 1, dtype=torch.float64) / steps
    offset = torch.hypot(*torch.meshgrid(fractions, fractions, indexing="ij")).flatten()  # in grid ranges
    correction = torch.eye(4, dtype=torch.float64)
    yaw, lateral = math.radians(conf["yaw_deg"]), conf["lateral_m"]
    for level in range(conf["passes"]):
        moved = transform_points(correction, points_cam).float()  # the edge points under the current best
        scores = edge_scores(gradients, moved, weights, directions, K32, fractions * yaw, fractions * lateral)
        scores = scores.double().flatten()
        scores = scores / scores[len(scores) // 2].clamp_min(1e-9) - conf["penalty"] * offset / steps**level
        best_yaw, best_lateral = divmod(int(scores.argmax()), len(fractions))
        correction = yaw_shift(float(fractions[best_yaw]) * yaw, float(fractions[best_lateral]) * lateral) @ correction
        yaw, lateral = yaw / steps, lateral / steps
    return (correction @ start).to(pose)


def refine_poses(images: torch.Tensor, Ks: torch.Tensor, clouds: list[torch.Tensor], poses: torch.Tensor,
                 conf: dict | None = None) -> torch.Tensor:
    """``refine_pose`` over a batch: images (B, 3, h, w), Ks (B, 3, 3), clouds B dense clouds (N_b, 3), poses
    (B, 4, 4) -> (B, 4, 4)."""
    return torch.stack([refine_pose(i, k, c, p, conf) for i, k, c, p in zip(images, Ks, clouds, poses)])
