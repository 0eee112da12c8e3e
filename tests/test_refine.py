"""``refine``: the edge alignment finds a known pose on a rendered scene, marks only depth-jump points, and runs
as ``eval.refine`` after any solver."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from i2preg.assembly import full_config
from i2preg.data.pairs import build_dataset
from i2preg.errors import InputError
from i2preg.geometry import make_transform, project_points, rot_y, transform_points
from i2preg.inference import infer
from i2preg.metrics import registration_errors
from i2preg.model import ICL
from i2preg.refine import EDGE_DEFAULTS, depth_edge_points, edge_scores, gradient_maps, refine_pose, yaw_shift
from test_model import TINY_CONF, synthetic_batch

H, W = 160, 512
K = torch.tensor([[300.0, 0.0, 255.5], [0.0, 300.0, 79.5], [0.0, 0.0, 1.0]])


def box_scene() -> tuple[torch.Tensor, torch.Tensor]:
    """A camera at the origin looking at three bright boards (1.5 x 3 m, at 5, 11 and 22 m) before a dark wall 30 m
    away: the image (3, H, W), rendered from the boards' corners, and a dense cloud of both (camera frame = cloud
    frame)."""
    boards = [(-3.0, 5.0), (0.5, 11.0), (6.0, 22.0)]  # (left edge x, depth): depths apart, so yaw and shift differ
    image = torch.full((3, H, W), 0.2)
    rng = np.random.default_rng(0)
    wall = np.stack([rng.uniform(-40, 40, 60000), rng.uniform(-3, 1.6, 60000), np.full(60000, 30.0)], -1)
    clouds = [wall]
    for left, depth in boards:
        board = np.stack([rng.uniform(left, left + 1.5, 6000), rng.uniform(-1.5, 1.5, 6000), np.full(6000, depth)], -1)
        clouds.append(board)
        (u0, v0), (u1, v1) = project_points(torch.tensor([[left, -1.5, depth], [left + 1.5, 1.5, depth]]), K)[0]
        image[:, round(float(v0)):round(float(v1)) + 1, round(float(u0)):round(float(u1)) + 1] = 0.9
    cloud = torch.from_numpy(np.concatenate(clouds)).float()
    seen = [(cloud[:, 2] < 30)]  # the wall behind a board is hidden from the camera and from the LiDAR alike
    for left, depth in boards:
        behind = (cloud[:, 2] == 30) & (cloud[:, 0] / 30 > left / depth) & (cloud[:, 0] / 30 < (left + 1.5) / depth) \
            & (cloud[:, 1].abs() / 30 < 1.5 / depth)
        seen.append(~behind)
    return image, cloud[torch.stack(seen[1:]).all(0) | seen[0]]


def test_edge_points_are_the_boards_outlines_not_their_inside():
    image, cloud = box_scene()
    points, weights, directions = depth_edge_points(cloud.double(), K.double(), (H, W), EDGE_DEFAULTS)
    assert len(points) > 100 and (weights > 0.3).all()
    sides, top_and_bottom = points[:, 1].abs() < 1.0, points[:, 1].abs() > 1.4  # of the boards (1.5 m half height)
    assert directions[sides, 0].median() > 0.9 and directions[top_and_bottom, 1].median() > 0.9  # across the edge
    assert (points[:, 2] < 30).all()  # the foreground side of each jump: boards, never the wall
    uv = project_points(points, K.double())[0]
    middle_of_board = ((uv[:, 0] - 255.5 - 300 * 1.25 / 11).abs() < 10) & (uv[:, 1].abs() < 10)
    assert not middle_of_board.any()


def test_edge_scores_equal_each_hypothesis_projected_on_its_own():
    """The scores' per-yaw factorisation against moving, projecting and sampling the points for each hypothesis."""
    image, cloud = box_scene()
    gradients = gradient_maps(image, EDGE_DEFAULTS["blur_px"])
    points, weights, directions = depth_edge_points(cloud.double(), K.double(), (H, W), EDGE_DEFAULTS)
    points, weights, directions = points.float(), weights.float(), directions.float()
    yaws, laterals = torch.tensor([-0.05, 0.0, 0.02], dtype=torch.float64), torch.tensor([-0.9, 0.0, 0.4])
    scores = edge_scores(gradients, points, weights, directions, K, yaws, laterals)
    for i, yaw in enumerate(yaws):
        for j, lateral in enumerate(laterals):
            uv, depth = project_points(transform_points(yaw_shift(float(yaw), float(lateral)).float(), points), K)
            grid = (uv / torch.tensor([W - 1, H - 1]) * 2 - 1)[None, None]
            values = F.grid_sample(gradients[None], grid, align_corners=True)[0, :, 0]  # (2, E)
            inside = ((grid[0, 0].abs() <= 1).all(-1) & (depth > 0.5)) * weights
            expected = ((directions.T * values).sum(0) * inside).sum() / inside.sum()
            assert scores[i, j] == pytest.approx(float(expected), rel=1e-5)
    assert scores[1, 1] > scores[0, 0] and scores[1, 1] > scores[2, 2]  # the true pose is the best of these


@pytest.mark.parametrize("yaw_deg, lateral_m", [(2.5, 0.0), (1.5, 0.2), (-2.0, -0.3)])
def test_refinement_recovers_a_known_pose(yaw_deg, lateral_m):
    """From a start off by a yaw and a lateral shift inside the first grid, the yaw comes back to the true one (the
    identity) within 0.2 deg and the shift shrinks (weaker: a lateral shift moves the near boards' edges over the
    wall behind them, which marks the boards' points near that edge as edge points too)."""
    image, cloud = box_scene()
    start = make_transform(rot_y(math.radians(yaw_deg)), np.array([lateral_m, 0.0, 0.0]))
    refined = refine_pose(image, K, cloud, torch.from_numpy(start).float())
    assert refined.dtype == torch.float32
    errors = registration_errors(refined[None].double().numpy(), np.eye(4)[None])
    before = registration_errors(start[None], np.eye(4)[None])
    assert errors["rre"][0] < 0.2 < before["rre"][0]
    assert errors["rte"][0] < 0.6 * before["rte"][0] + 0.02


def test_no_edge_in_view_keeps_the_pose():
    image, cloud = box_scene()
    behind = transform_points(torch.from_numpy(make_transform(rot_y(math.pi), np.zeros(3))).float(), cloud)
    pose = torch.eye(4)
    assert torch.equal(refine_pose(image, K, behind, pose), pose)


def test_eval_refine_runs_after_the_solver_and_needs_dense_clouds():
    torch.manual_seed(0)
    model, batch = ICL(TINY_CONF).eval(), synthetic_batch()
    eval_cfg = {**full_config({})["eval"], "refine": "edges"}
    with pytest.raises(InputError, match="dense clouds"):
        infer(model, batch, "frustum", eval_cfg)
    batch["dense_points"] = list(batch["points"])
    refined = infer(model, batch, "frustum", eval_cfg)
    plain = infer(model, batch, "frustum")
    assert refined.pose.shape == plain.pose.shape and refined.solved.all()
    with pytest.raises(InputError, match="eval.refine must be one of none, edges"):
        infer(model, batch, "frustum", {**eval_cfg, "refine": "photometric"})


def test_evaluation_pairs_carry_dense_clouds_training_pairs_do_not(synthetic_root):
    """Evaluation pairs: up to data.dense_points distinct voxel-kept points, moved like the network's points (the
    ground truth maps both into the same camera frame); the pair's other draws are those without them."""
    splits = {"train_sequences": ["00"], "test_sequences": ["00"]}
    cfg = {"data": {"num_points": 2048, "dense_points": 5000, **splits}}
    pair = build_dataset(cfg, "test", synthetic_root)[0]
    without = build_dataset({"data": {"num_points": 2048, "dense_points": 0, **splits}}, "test", synthetic_root)[0]
    assert "dense_points" not in without and torch.equal(pair["points"], without["points"])
    dense = pair["dense_points"]
    assert dense.shape == (5000, 3) and len(torch.unique(dense, dim=0)) == 5000
    camera = transform_points(pair["T_gt"], dense)
    network = transform_points(pair["T_gt"], pair["points"])
    assert camera[:, 2].abs().max() < network[:, 2].abs().max() + 1.0  # one cloud, one frame
    assert "dense_points" not in build_dataset(cfg, "train", synthetic_root)[0]
