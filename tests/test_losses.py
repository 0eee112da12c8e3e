"""ICL losses: each term is zero at the ground truth, has the documented value elsewhere, and stays finite."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from i2preg.geometry import make_transform, project_points, rotation_6d_to_matrix, sample_perturbation, transform_points
from i2preg.losses import (
    DEFAULT_WEIGHTS,
    camera_loss,
    compute_losses,
    correspondence_loss,
    diversity_loss,
    frustum_loss,
    frustum_pose_right,
    heatmap_loss,
    in_frustum_targets,
    residual_target,
)
from i2preg.model.gpdm import params_from_pose
from i2preg.model.image_encoder import token_centres

K = torch.tensor([[[32.0, 0, 31.5], [0, 32, 15.5], [0, 0, 1]]])
IMAGE_SIZE = (32, 64)


def yaw_poses(n: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.tensor(np.stack([sample_perturbation(rng) for _ in range(n)]), dtype=torch.float32)


def test_in_frustum_targets():
    points_cam = torch.tensor([[[0.0, 0, 5], [0, 0, -5], [100, 0, 5], [0, 10, 5]]])
    T_gt = yaw_poses(1)
    points = transform_points(torch.linalg.inv(T_gt), points_cam)
    assert in_frustum_targets(points, T_gt, K, IMAGE_SIZE).tolist() == [[True, False, False, False]]


@pytest.mark.parametrize("dof", [3, 6])
def test_frustum_loss(dof):
    T_gt = yaw_poses(4) if dof == 3 else make_transform(rotation_6d_to_matrix(torch.randn(4, 6)), torch.randn(4, 3))
    centre, rotation = params_from_pose(T_gt, dof)
    assert frustum_loss(centre, 3 * rotation, T_gt, 0.1) < 1e-10  # the rotation output is normalised
    centre_only = frustum_loss(centre + 1, rotation, T_gt, 0.1)
    torch.testing.assert_close(centre_only, torch.tensor(0.1))


def test_diversity_loss():
    spread = torch.tensor([[[0.0, 0], [20, 0], [0, 20]]])
    assert diversity_loss(spread, 16) == 0
    coincident = torch.zeros(1, 3, 2, requires_grad=True)
    loss = diversity_loss(coincident, 16)
    torch.testing.assert_close(loss, torch.tensor(16.0), atol=1e-3, rtol=0)
    loss.backward()
    assert torch.isfinite(coincident.grad).all()


def test_camera_loss_zero_at_ground_truth_with_finite_gradient():
    T_gt, frustum = yaw_poses(3, seed=1), yaw_poses(3, seed=2)
    dR, dt = residual_target(frustum, T_gt)
    dR.requires_grad_(True)
    loss = camera_loss(dR, dt, frustum, T_gt)
    assert loss < 1e-4
    loss.backward()
    assert torch.isfinite(dR.grad).all()
    yaw_error = torch.tensor([[math.cos(0.1), 0, math.sin(0.1)], [0, 1, 0], [-math.sin(0.1), 0, math.cos(0.1)]])
    off = camera_loss(dR.detach() @ yaw_error, dt + torch.tensor([0.0, 0.0, 2.0]), frustum, T_gt)
    torch.testing.assert_close(off, torch.tensor(2.1), atol=1e-4, rtol=0)


def fake_outputs(T_gt: torch.Tensor) -> dict:
    """Outputs of a perfect model: frustum pose = GT, identity residual, 2D keypoints = projected 3D keypoints."""
    B = len(T_gt)
    kp_cam = torch.stack(
        torch.meshgrid(torch.linspace(-2, 2, 4), torch.linspace(-1, 1, 2), indexing="ij"), dim=-1
    ).reshape(-1, 2)
    kp_cam = torch.cat([kp_cam * 0.5, torch.full((8, 1), 4.0)], dim=-1).expand(B, -1, -1)
    inverse = torch.linalg.inv(T_gt)
    centre, rotation = params_from_pose(T_gt, dof=3)
    return {
        "coarse_xyz": transform_points(inverse, torch.randn(B, 16, 3) * 10),
        "cls_logits": torch.zeros(B, 16),
        "frustum_centre": centre,
        "frustum_rotation": rotation,
        "frustum_pose": T_gt,
        "prior_pose": T_gt,
        "kp_2d": project_points(kp_cam, K)[0],
        "kp_3d": transform_points(inverse, kp_cam),
        "heatmap_2d_uv": token_centres(8, 16, 4),  # the stride-4 tokens of the 32 x 64 image
        "residual_rotation": torch.eye(3).expand(B, 3, 3),
        "residual_translation": torch.zeros(B, 3),
    }


def test_compute_losses_terms_and_weights():
    T_gt = yaw_poses(2)
    batch = {"T_gt": T_gt, "K": K.expand(2, 3, 3), "image": torch.zeros(2, 3, *IMAGE_SIZE)}
    outputs = fake_outputs(T_gt)
    stage_1 = compute_losses(outputs, batch, stage=1)
    assert set(stage_1) == {"cls", "fru", "total"}
    torch.testing.assert_close(stage_1["cls"], torch.tensor(math.log(2)))
    assert stage_1["fru"] < 1e-8

    stage_2 = compute_losses(outputs, batch, weights={"cls": 2.0}, stage=2)
    assert set(stage_2) == {"cls", "fru", "corr", "div_2d", "div_3d", "cam", "total"}
    assert stage_2["corr"] < 1e-3 and stage_2["cam"] < 1e-4
    assert stage_2["div_2d"] > 0  # the 8 keypoints are 5 to 20 px apart
    expected = sum({**DEFAULT_WEIGHTS, "cls": 2.0}[name] * value for name, value in stage_2.items() if name != "total")
    torch.testing.assert_close(stage_2["total"], expected)
    with pytest.raises(ValueError):
        compute_losses(outputs, batch, stage=3)


def test_corr_skips_keypoints_behind_the_camera():
    T_gt = yaw_poses(1)
    batch = {"T_gt": T_gt, "K": K, "image": torch.zeros(1, 3, *IMAGE_SIZE)}
    outputs = fake_outputs(T_gt)
    behind = transform_points(torch.linalg.inv(T_gt), torch.tensor([[[0.0, 0, -1e-3]]]))
    outputs["kp_3d"] = torch.cat([outputs["kp_3d"], behind], dim=1)
    outputs["kp_2d"] = torch.cat([outputs["kp_2d"], torch.zeros(1, 1, 2)], dim=1)
    assert compute_losses(outputs, batch, stage=2)["corr"] < 1e-3


def test_heatmap_loss_is_least_for_the_gaussian_about_the_projected_3d_keypoint():
    """Stride-4 tokens of the 32 x 64 image (8 x 16 = 128): the cross-entropy is the target's entropy for the
    target itself, more for a uniform heatmap, most for one peaked a quarter image away; off by default."""
    T_gt = yaw_poses(2)
    batch = {"T_gt": T_gt, "K": K.expand(2, 3, 3), "image": torch.zeros(2, 3, *IMAGE_SIZE)}
    outputs = fake_outputs(T_gt)
    uv = token_centres(8, 16, 4)
    target = torch.softmax(-(outputs["kp_2d"][:, :, None] - uv).square().sum(-1) / (2 * 4.0**2), dim=-1)
    valid = torch.ones(2, 8, dtype=torch.bool)

    def loss(heatmap):
        return heatmap_loss(heatmap, uv, outputs["kp_2d"], valid, sigma_px=4.0)

    entropy = -(target * target.log()).sum(-1).mean()
    far = torch.softmax(-(outputs["kp_2d"][:, :, None] + torch.tensor([16.0, 0]) - uv).square().sum(-1) / 32, -1)
    torch.testing.assert_close(loss(target), entropy)
    assert loss(target) < loss(torch.full_like(target, 1 / 128)) < loss(far)
    assert heatmap_loss(far, uv, outputs["kp_2d"], torch.zeros_like(valid), 4.0) == 0  # nothing valid
    per_query_uv = uv.expand(2, 8, -1, -1)  # the same tokens given per query, as windows are
    torch.testing.assert_close(heatmap_loss(target, per_query_uv, outputs["kp_2d"], valid, 4.0), entropy)

    outputs["heatmap_2d"] = target
    assert "heat_2d" not in compute_losses(outputs, batch, stage=2)
    with_heat = compute_losses(outputs, batch, weights={"heat_2d": 0.5, "heat_sigma_px": 4.0}, stage=2)
    torch.testing.assert_close(with_heat["heat_2d"], entropy)
    without = compute_losses(outputs, batch, stage=2)
    torch.testing.assert_close(with_heat["total"], without["total"] + 0.5 * entropy)


def test_bounded_corr_drops_far_keypoints_and_bounds_the_gradient():
    """A 3D keypoint projecting 3,000 px off the image adds nothing with a margin; within it, Huber caps each
    query's gradient at 1 (per pixel of error, over the counted queries); without bounds it dominates the mean."""
    T_gt = yaw_poses(1)
    outputs = fake_outputs(T_gt)
    far = transform_points(torch.linalg.inv(T_gt), torch.tensor([[[3000 / 32 * 4.0, 0, 4]]]))  # u = 3031.5 px
    kp_3d = torch.cat([outputs["kp_3d"], far], dim=1).requires_grad_(True)
    kp_2d = torch.cat([outputs["kp_2d"] + torch.tensor([20.0, 0]), torch.tensor([[[31.5, 15.5]]])], dim=1)
    kp_2d.requires_grad_(True)
    every = torch.ones(1, dtype=torch.bool)

    def loss(margin, cap, huber):
        return correspondence_loss(kp_2d, kp_3d, T_gt, K, IMAGE_SIZE, every, margin, cap, huber)

    unbounded = loss(math.inf, math.inf, 0.0)
    torch.testing.assert_close(unbounded, torch.tensor((8 * 20 + 3000) / 9), atol=1e-2, rtol=0)
    torch.testing.assert_close(loss(math.inf, 1000.0, 0.0), torch.tensor(20.0))  # the reference code's cap
    bounded = loss(64.0, math.inf, 8.0)
    torch.testing.assert_close(bounded, torch.tensor(20.0 - 4.0))  # Huber(20; 8) = 20 - 8 / 2, the far one dropped
    gradient_3d, gradient_2d = torch.autograd.grad(bounded, (kp_3d, kp_2d))
    assert gradient_3d[0, -1].abs().max() == 0 and gradient_2d[0, -1].abs().max() == 0
    torch.testing.assert_close(gradient_2d[0, :8].norm(dim=-1), torch.full((8,), 1 / 8))


def test_corr_and_heat_2d_skip_pairs_whose_frustum_pose_is_wrong():
    T_gt = yaw_poses(2)
    batch = {"T_gt": T_gt, "K": K.expand(2, 3, 3), "image": torch.zeros(2, 3, *IMAGE_SIZE)}
    outputs = fake_outputs(T_gt)
    outputs["kp_2d"] = outputs["kp_2d"] + torch.tensor([[[4.0, 0]], [[12.0, 0]]])  # pair 1 is 12 px off
    outputs["heatmap_2d"] = torch.full((2, 8, 128), 1 / 128)
    shift = torch.eye(4).expand(2, 4, 4).clone()
    shift[1, 0, 3] = 3.0  # pair 1's frustum pose is 3 m off: wrong by the protocol's 2 m
    outputs["frustum_pose"] = shift @ T_gt
    assert frustum_pose_right(outputs["frustum_pose"], T_gt).tolist() == [True, False]
    weights = {"heat_2d": 1.0, "corr_huber_px": 0.0}
    both = compute_losses(outputs, batch, {**weights, "corr_skip_wrong_frustum": False}, stage=2)
    torch.testing.assert_close(both["corr"], torch.tensor(8.0))
    skipped = compute_losses(outputs, batch, weights, stage=2)  # skipping is the default
    torch.testing.assert_close(skipped["corr"], torch.tensor(4.0))
    first = {k: v if k == "heatmap_2d_uv" else v[:1] for k, v in outputs.items()}  # the token centres are shared
    first_only = compute_losses(first, {k: v[:1] for k, v in batch.items()}, weights, stage=2)
    torch.testing.assert_close(skipped["heat_2d"], first_only["heat_2d"])


def test_window_stages_add_their_terms_and_count_only_queries_whose_target_is_in_their_window():
    """Coarse to fine: corr, div_2d and heat_2d sum over the stages; a window stage (per-query token centres)
    counts a query only if its target, the GT projection of its 3D keypoint, lies within its window."""
    T_gt = yaw_poses(1)
    batch = {"T_gt": T_gt, "K": K, "image": torch.zeros(1, 3, *IMAGE_SIZE)}
    outputs = fake_outputs(T_gt)
    target = outputs["kp_2d"]
    offsets = torch.stack(torch.meshgrid(torch.arange(-3.0, 4), torch.arange(-3.0, 4), indexing="xy"), -1).reshape(-1, 2)
    window_uv = target.round()[:, :, None] + 2 * offsets  # (1, 8, 49, 2): 7 x 7 tokens at stride 2 about each
    window_uv[:, :4] += 20  # the first four queries' windows miss their targets
    window = {"kp_2d": target + torch.tensor([0.0, 6]), "heatmap_2d": torch.full((1, 8, 49), 1 / 49),
              "heatmap_2d_uv": window_uv}
    single = {**outputs, "heatmap_2d": torch.full((1, 8, 128), 1 / 128)}
    weights = {"heat_2d": 1.0, "corr_huber_px": 0.0, "corr_margin_px": math.inf}
    coarse_to_fine = {**single, **window, "coarse_stages": [single]}
    losses = compute_losses(coarse_to_fine, batch, weights, stage=2)
    one_stage = compute_losses(single, batch, weights, stage=2)
    torch.testing.assert_close(losses["corr"], one_stage["corr"] + 6.0)  # the global stage's 0 + the window's 6 px
    assert diversity_loss(window["kp_2d"], 16.0) > 0
    torch.testing.assert_close(losses["div_2d"], one_stage["div_2d"] + diversity_loss(window["kp_2d"], 16.0))
    in_window = heatmap_loss(window["heatmap_2d"][:, 4:], window_uv[:, 4:], target[:, 4:], torch.ones(1, 4, dtype=torch.bool), 8.0)
    torch.testing.assert_close(losses["heat_2d"], one_stage["heat_2d"] + in_window)
    window["kp_2d"][:, :4] += 100  # queries outside their windows add nothing
    moved = compute_losses({**single, **window, "coarse_stages": [single]}, batch, weights, stage=2)
    torch.testing.assert_close(moved["corr"], losses["corr"])
