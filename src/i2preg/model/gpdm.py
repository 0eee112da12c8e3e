"""GPDM: geometric-prior-guided overlap detection (METHOD section 2).

Per coarse point an in-frustum logit, a PointNet-style frustum pose head, and the geometric mask: the coarse
points that the frustum pose projects into the image. The frustum pose head is, for the 3-DoF protocol, the
pose search (``pose_search.PoseSearch``, beyond the paper: the regressed centre, the yaw and a refinement from
scored pose hypotheses) and otherwise the paper's regression of the centre and the rotation.
"""

from __future__ import annotations

import torch
from torch import nn

from ..geometry import (
    frustum_params_to_pose,
    in_image,
    make_transform,
    matrix_to_rotation_6d,
    pose_to_frustum_params,
    project_points,
    rotation_6d_to_matrix,
    transform_points,
)
from .layers import mlp
from .pose_search import PoseSearch

PARAM_DIMS = {3: (2, 2), 6: (3, 6)}
"""Degrees of freedom -> (centre dims, rotation dims): 3 DoF = c (c_x, c_z) and d (-sin yaw, cos yaw);
6 DoF = the 3D camera centre and the 6D rotation (two columns before Gram-Schmidt)."""

IDENTITY_ROTATION = {3: (0.0, 1.0), 6: (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)}


def pose_from_params(centre: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Pose (B, 4, 4) (cloud -> camera) from a camera centre in the cloud frame, (B, 2) (c_x, c_z) with
    rotation (B, 2) (d) for 3 DoF, or (B, 3) with rotation (B, 6) (6D) for 6 DoF."""
    if rotation.shape[-1] == 2:
        return frustum_params_to_pose(centre, rotation)
    R = rotation_6d_to_matrix(rotation)
    return make_transform(R, -(R @ centre[..., None])[..., 0])


def params_from_pose(T: torch.Tensor, dof: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of ``pose_from_params``: T (B, 4, 4) -> (centre, rotation) of the given DoF."""
    if dof == 3:
        return pose_to_frustum_params(T)
    R, t = T[..., :3, :3], T[..., :3, 3]
    return -(R.transpose(-1, -2) @ t[..., None])[..., 0], matrix_to_rotation_6d(R)


class GPDM(nn.Module):
    def __init__(self, image_dim: int, point_dim: int, conf: dict, dof: int):
        super().__init__()
        h = conf["hidden_dim"]
        self.fallback_topk = conf["fallback_topk"]
        self.mask_source = conf["mask_source"]
        if self.mask_source not in ("geometric", "classifier"):
            raise ValueError(f"gpdm.mask_source must be 'geometric' or 'classifier', got {self.mask_source!r}")
        self.xyz_embed = mlp([3, h, h])
        self.classifier = mlp([image_dim + point_dim + h, h, h, 1])
        self.score_embed = mlp([1, h, h])
        self.point_net = mlp([2 * h + image_dim + point_dim, h, h], final_activation=True)
        self.global_net = mlp([2 * h, h, h], final_activation=True)
        centre_dim, rotation_dim = PARAM_DIMS[dof]
        self.centre_head = nn.Linear(h, centre_dim)
        self.search = None
        if dof == 3 and conf["yaw_bins"] > 0:
            self.search = PoseSearch(image_dim, point_dim, conf)
        else:
            self.rotation_head = nn.Linear(h, rotation_dim)
            with torch.no_grad():
                self.rotation_head.bias.copy_(torch.tensor(IDENTITY_ROTATION[dof]))

    def forward(self, image_map, point_feats, xyz, heights, K, image_size: tuple[int, int], yaw_prior=None,
                centre_prior=None) -> dict[str, torch.Tensor]:
        """image_map: (B, Ci, h, w) the coarsest image features (its mean is the global feature g);
        point_feats: (B, M, Cp), xyz: (B, M, 3) and heights (B, M) of the coarse points, cloud frame (heights: their
        ``geometry.ground_heights``, which the pose search's score reads); K: (B, 3, 3) intrinsics
        of the (H, W) = image_size input image; yaw_prior: None, or (B, 2) a yaw and a tolerance (rad) to which
        the pose search keeps (``PoseSearch.forward``; a model without it refuses one); centre_prior: None, or
        (B, 2) a camera centre (c_x, c_z), cloud frame, about which the pose search looks in place of the regressed
        one.

        Returns cls_logits (B, M); frustum_centre, frustum_rotation (raw head outputs, see PARAM_DIMS);
        frustum_pose (B, 4, 4) cloud -> camera; mask (B, M) bool: the geometric mask, or with ``mask_source:
        classifier`` (the paper's ablation without the geometric prior) cls_logits > 0. A sample whose mask is
        empty gets its ``fallback_topk`` points of highest cls logit instead, so attention keeps valid keys.
        With the pose search (3 DoF, ``yaw_bins`` > 0) frustum_centre and frustum_rotation come from it, and it adds
        coarse_centre (B, 2), the regressed centre it searches about, and the logits and hypotheses of
        ``PoseSearch.forward``.
        """
        M = xyz.shape[1]
        image = image_map.mean(dim=(2, 3))[:, None].expand(-1, M, -1)
        xyz_embedding = self.xyz_embed(xyz / 10)
        cls_logits = self.classifier(torch.cat([image, point_feats, xyz_embedding], dim=-1))[..., 0]
        score_embedding = self.score_embed(cls_logits[..., None].sigmoid())
        per_point = self.point_net(torch.cat([xyz_embedding, score_embedding, image, point_feats], dim=-1))
        per_point = torch.cat([per_point, per_point.mean(dim=1, keepdim=True).expand(-1, M, -1)], dim=-1)
        pooled = self.global_net(per_point).mean(dim=1)
        centre = self.centre_head(pooled)
        extra = {}
        if self.search is None:
            if yaw_prior is not None or centre_prior is not None:
                raise ValueError("a yaw or centre prior needs GPDM's pose search (model.gpdm.yaw_bins > 0)")
            rotation = self.rotation_head(pooled)
        else:
            about = centre.detach() if centre_prior is None else centre_prior.to(centre)
            extra = self.search(image_map, point_feats, xyz, heights, about, K, image_size, yaw_prior)
            extra["coarse_centre"] = centre
            centre, rotation = extra.pop("centre"), extra.pop("rotation")
        pose = pose_from_params(centre, rotation)

        if self.mask_source == "classifier":
            mask = cls_logits > 0
        else:
            uv, depth = project_points(transform_points(pose.detach(), xyz), K)
            mask = in_image(uv, depth, *image_size)
        top = cls_logits.topk(min(self.fallback_topk, M), dim=1).indices
        fallback = torch.zeros_like(mask).scatter(1, top, True)
        mask = mask | (fallback & ~mask.any(dim=1, keepdim=True))  # not torch.where: ONNX Runtime has no bool Where
        return {
            "cls_logits": cls_logits,
            "frustum_centre": centre,
            "frustum_rotation": rotation,
            "frustum_pose": pose,
            "mask": mask,
            **extra,
        }
