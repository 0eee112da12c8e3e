"""PRM: pose regression of the residual between the frustum pose and the true pose (METHOD section 2).

With the frustum pose T_f = [R_f | t_f], the residual is dR = R R_f^T, dt = t - dR t_f, so that
T = [dR | dt] o T_f: R = dR R_f, t = dR t_f + dt.

Beyond the paper (``reprojection_residual``): each query's local feature also gets an MLP of its explicit
reprojection residual under the frustum pose (``reprojection_features``): K^-1 kp_2d minus the normalised
projection of T_f kp_3d, that projection and the inverse depth. The paper's MLPs must learn the perspective
division from the normalised pixel and the camera-frame point themselves; with perfect pairs (the GT projections
of ICLM's 3D keypoints) they did not refine the frustum pose in 400 steps, the residual input did
(docs/METHOD.md, "PRM").
"""

from __future__ import annotations

import torch
from torch import nn

from ..geometry import (
    make_transform,
    rotation_6d_to_matrix,
    transform_points,
    yaw_vector_to_matrix,
)
from .gpdm import IDENTITY_ROTATION
from .layers import mlp

RESIDUAL_SCALE = 20.0
"""The reprojection residual's factor in ``reprojection_features``: a 1 deg yaw error moves a normalised
coordinate by about 0.017, so the scaled residual is of order 0.1-1."""
MIN_RESIDUAL_DEPTH = 1.0
"""3D keypoints closer to the frustum-pose camera plane than this (metres) get a zero residual."""


def reprojection_features(normalized: torch.Tensor, kp_frustum: torch.Tensor) -> torch.Tensor:
    """(B, Nq, 6) per query: [RESIDUAL_SCALE (normalized - p), p, 10 m / depth, in front], with p = (x / z, y / z)
    the normalised projection of kp_frustum (B, Nq, 3) (3D keypoints in the frustum-pose camera frame, metres) and
    normalized (B, Nq, 2) = K^-1 kp_2d; the residual is zero for keypoints within MIN_RESIDUAL_DEPTH of the camera
    plane or behind it (in front 0)."""
    depth = kp_frustum[..., 2:].clamp_min(MIN_RESIDUAL_DEPTH)
    in_front = (kp_frustum[..., 2:] > MIN_RESIDUAL_DEPTH).to(kp_frustum)
    projection = kp_frustum[..., :2] / depth
    residual = RESIDUAL_SCALE * (normalized - projection) * in_front
    return torch.cat([residual, projection, 10 / depth, in_front], dim=-1)


def residual_from_params(rotation: torch.Tensor, translation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Head outputs -> (dR (B, 3, 3), dt (B, 3)): rotation (B, 2) yaw vector with translation (B, 2) (x, z)
    for 3 DoF, or rotation (B, 6) 6D with translation (B, 3) for 6 DoF."""
    if rotation.shape[-1] == 2:
        dR = yaw_vector_to_matrix(rotation)
        dt = torch.stack([translation[..., 0], torch.zeros_like(translation[..., 0]), translation[..., 1]], dim=-1)
        return dR, dt
    return rotation_6d_to_matrix(rotation), translation


def compose_residual(dR: torch.Tensor, dt: torch.Tensor, frustum_pose: torch.Tensor) -> torch.Tensor:
    """[dR | dt] o T_f: (B, 4, 4)."""
    R_f, t_f = frustum_pose[..., :3, :3], frustum_pose[..., :3, 3]
    return make_transform(dR @ R_f, (dR @ t_f[..., None])[..., 0] + dt)


class PRM(nn.Module):
    def __init__(self, query_dim: int, conf: dict, dof: int):
        super().__init__()
        d = conf["dim"]
        self.pixel_embed = mlp([2, d, d])
        self.point_embed = mlp([3, d, d])
        self.desc_2d_proj = nn.Linear(query_dim, d)
        self.desc_3d_proj = nn.Linear(query_dim, d)
        self.local_net = mlp([4 * d, d, d], final_activation=True)
        # beyond the paper: added to local_net's output, so that weights without it still load
        self.residual_net = mlp([6, d, d], final_activation=True) if conf.get("reprojection_residual") else None
        self.global_net = mlp([2 * d, d, d], final_activation=True)
        self.rotation_head = mlp([d, d, 2 if dof == 3 else 6])
        self.translation_head = mlp([d, d, 2 if dof == 3 else 3])
        with torch.no_grad():
            self.rotation_head[-1].bias.copy_(torch.tensor(IDENTITY_ROTATION[dof]))

    def forward(self, kp_2d, kp_3d, desc_2d, desc_3d, K, frustum_pose) -> dict[str, torch.Tensor]:
        """kp_2d: (B, Nq, 2) pixels; kp_3d: (B, Nq, 3) cloud frame; desc_2d, desc_3d: (B, Nq, Cq);
        K: (B, 3, 3); frustum_pose: (B, 4, 4) cloud -> camera.

        Returns residual_rotation (B, 3, 3) dR, residual_translation (B, 3) dt, their raw head outputs
        residual_rotation_params, residual_translation_params, and pose (B, 4, 4) = [dR | dt] o T_f.
        """
        pixels = torch.cat([kp_2d, torch.ones_like(kp_2d[..., :1])], dim=-1)
        normalized = (pixels @ torch.linalg.inv(K).transpose(-1, -2))[..., :2]  # K^-1 [u, v, 1]
        kp_frustum = transform_points(frustum_pose, kp_3d)  # frustum-pose camera frame, metres
        fused = torch.cat(
            [self.pixel_embed(normalized), self.desc_2d_proj(desc_2d), self.point_embed(kp_frustum / 10),
             self.desc_3d_proj(desc_3d)],
            dim=-1,
        )
        per_query = self.local_net(fused)
        if self.residual_net is not None:
            per_query = per_query + self.residual_net(reprojection_features(normalized, kp_frustum))
        per_query = torch.cat([per_query, per_query.mean(dim=1, keepdim=True).expand_as(per_query)], dim=-1)
        pose_feat = self.global_net(per_query).mean(dim=1)
        rotation, translation = self.rotation_head(pose_feat), self.translation_head(pose_feat)
        dR, dt = residual_from_params(rotation, translation)
        return {
            "residual_rotation": dR,
            "residual_translation": dt,
            "residual_rotation_params": rotation,
            "residual_translation_params": translation,
            "pose": compose_residual(dR, dt, frustum_pose),
        }
