"""The fine search: GPDM's frustum pose refined one pyramid level finer (beyond the paper; ``model.fine``).

GPDM's pose search scores hypotheses with the coarse points and the coarsest image map, whose resolution leaves
its pose about half a metre off. The fine search scores a small grid of poses about that pose in the camera's own
axes (lateral shift, forward shift, yaw) with the same kind of score (``pose_search.HypothesisScorer``) on finer
inputs: the points of a finer pyramid level nearest the view, each with its own encoder feature and its coarse
point's, against the pixel tokens of the image decoder. The pose moves to the softmax-weighted mean of the grid,
``iterations`` times, each grid about the last pose. In training the first grid's centre is jittered, so that the
search learns to move from wherever GPDM leaves it.

Before those grids, a wide grid (lateral shift x yaw, up to 9 deg either way) scored the same way, each logit less
``wide_penalty`` per degree of yaw offset, moves the pose to its softmax-weighted mean: GPDM's yaw errors of
5-12 deg lie beyond what the fine grids reach, and the penalty, a prior that GPDM's yaw is mostly right, keeps the
pose where the score does not clearly prefer another yaw. It is not trained (no loss on it).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .layers import gather
from .pose_search import HypothesisScorer, points_near_view, vector_yaws, yaw_vectors


def camera_axes(rotation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The camera's x (right) and z (forward) axes in the cloud's (x, z) plane, (..., 2) each, for the 3-DoF
    rotation d (..., 2) (``geometry.frustum_params_to_pose``)."""
    d = nn.functional.normalize(rotation, dim=-1)
    return torch.stack([d[..., 1], -d[..., 0]], dim=-1), d


def offsets_to(centre: torch.Tensor, rotation: torch.Tensor, target_centre: torch.Tensor,
               target_rotation: torch.Tensor) -> torch.Tensor:
    """How far the 3-DoF pose (target_centre, target_rotation) lies from (centre, rotation), all (..., 2), in the
    latter camera's axes: (..., 3) = (lateral m, forward m, yaw rad in (-pi, pi])."""
    right, forward = camera_axes(rotation)
    shift = target_centre - centre
    yaw = vector_yaws(target_rotation) - vector_yaws(rotation)
    yaw = torch.atan2(yaw.sin(), yaw.cos())
    return torch.stack([(shift * right).sum(-1), (shift * forward).sum(-1), yaw], dim=-1)


def apply_offsets(centre: torch.Tensor, rotation: torch.Tensor, offsets: torch.Tensor):
    """The poses (centre (..., 2), unit rotation (..., 2)) at offsets (..., 3) (``offsets_to``) from (centre,
    rotation) (..., 2) each; offsets may carry extra leading dimensions after the batch's (broadcast)."""
    right, forward = camera_axes(rotation)
    moved = centre + offsets[..., :1] * right + offsets[..., 1:2] * forward
    return moved, yaw_vectors(vector_yaws(rotation) + offsets[..., 2])


def offset_grid(radii, steps) -> torch.Tensor:
    """(G, 3) offsets (lateral m, forward m, yaw rad; ``offsets_to``): every combination of -r..r steps an axis, for
    radii (3,) and steps (3,)."""
    axes = [torch.arange(-r, r + 1, dtype=torch.float32) * step for r, step in zip(radii, steps)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


class FineSearch(HypothesisScorer):
    """Refines 3-DoF poses on finer point and image features (module docstring).

    conf (``ICL.default_conf["fine"]``): dim, the score's width; num_points, the fine-level points nearest the view
    that a grid scores; steps (lateral m, forward m, yaw deg) and radii (steps either way) of the grid;
    iterations; train_jitter (m, deg): the half-range of the uniform jitter of the first grid's centre in training;
    wide_steps (lateral m, yaw deg) and wide_radii of the wide grid before them (radii [0, 0]: none) and
    wide_penalty, its logits' penalty per degree of yaw offset.
    """

    def __init__(self, image_dim: int, point_dim: int, conf: dict):
        super().__init__(image_dim, point_dim, conf["dim"], conf["residual_layers"])
        self.num_points, self.iterations = conf["num_points"], conf["iterations"]
        lateral, forward, yaw = conf["steps"]
        self.register_buffer("steps", torch.tensor([lateral, forward, math.radians(yaw)]), persistent=False)
        self.register_buffer("grid", offset_grid(conf["radii"], self.steps), persistent=False)  # (G, 3)
        (lateral, yaw), (lateral_radius, yaw_radius) = conf["wide_steps"], conf["wide_radii"]
        wide = offset_grid([lateral_radius, 0, yaw_radius], [lateral, 0.0, math.radians(yaw)])
        self.register_buffer("wide_grid", wide, persistent=False)  # (G', 3), no forward shift
        self.register_buffer("wide_prior", -conf["wide_penalty"] * wide[:, 2].abs().rad2deg(), persistent=False)
        metres, degrees = conf["train_jitter"]
        self.register_buffer("jitter", torch.tensor([metres, metres, math.radians(degrees)]), persistent=False)

    def forward(self, token_map, point_feats, xyz, heights, centre, rotation, K, image_size) -> dict[str, torch.Tensor]:
        """token_map (B, Ci, h, w) the pixel tokens of the (H, W) = image_size image; point_feats (B, M, Cp), xyz
        (B, M, 3) cloud frame and heights (B, M) (``geometry.ground_heights``), the fine-level points; centre (B, 2)
        and rotation (B, 2) the 3-DoF pose to refine (detached); K (B, 3, 3).

        Returns fine_centre (B, 2), fine_rotation (B, 2) (unit d): the refined pose; and over the I iterations, for
        the loss: fine_logits (B, I, G) of the G grid hypotheses, fine_grid_centres (B, I, 2) and
        fine_grid_rotations (B, I, 2) the poses each grid is centred on, fine_grid (G, 3) the grid's offsets
        (``offsets_to``) and fine_steps (3,) its steps.
        """
        image, points = self.image_proj(token_map), self.point_proj(point_feats)
        centre, rotation = centre.detach(), nn.functional.normalize(rotation.detach(), dim=-1)
        if len(self.wide_grid) > 1:  # untrained: no graph for a backward pass (and the in-place residual layers)
            with torch.no_grad():
                centre, rotation = self.step(self.wide_grid, image, points, xyz, heights, centre, rotation, K,
                                             image_size, self.wide_prior)[1:]
        if self.training:
            jitter = (2 * torch.rand_like(self.jitter.expand(len(centre), 3)) - 1) * self.jitter
            centre, rotation = apply_offsets(centre, rotation, jitter)
        logits, centres, rotations = [], [], []
        for _ in range(self.iterations):
            centres.append(centre)
            rotations.append(rotation)
            grid_logits, centre, rotation = self.step(self.grid, image, points, xyz, heights, centre, rotation, K,
                                                      image_size)
            logits.append(grid_logits)
        return {"fine_centre": centre, "fine_rotation": rotation, "fine_logits": torch.stack(logits, 1),
                "fine_grid_centres": torch.stack(centres, 1), "fine_grid_rotations": torch.stack(rotations, 1),
                "fine_grid": self.grid, "fine_steps": self.steps}

    def step(self, grid, image, points, xyz, heights, centre, rotation, K, image_size, prior=None):
        """One grid (G, 3) of offsets (``offsets_to``) about the poses centre, rotation (B, 2) each, scored on the
        projected image (B, dim, h, w) and point features (B, M, dim) of the points xyz (B, M, 3) (heights (B, M))
        nearest the view -> the grid's logits (B, G) and the pose at their softmax-weighted mean offset (detached),
        each logit plus prior (G,) if given."""
        index = points_near_view(xyz, centre, rotation, K, image_size, min(self.num_points, xyz.shape[1]))
        hypotheses = apply_offsets(centre[:, None], rotation[:, None], grid)
        logits = self.hypothesis_logits(image, gather(points, index), gather(xyz, index),
                                        heights.gather(1, index), *hypotheses, K, image_size)
        weights = (logits if prior is None else logits + prior).softmax(dim=-1)
        offset = (weights[..., None] * grid).sum(1)  # (B, 3)
        return (logits, *apply_offsets(centre, rotation, offset.detach()))
