"""``lines``: the line alignment turns a pose to the yaw at which a street's walls point where the image's horizontal
lines do, keeps the start when the evidence is missing or lies beyond its window, and runs as ``eval.refine``."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from i2preg import inference
from i2preg.assembly import full_config
from i2preg.errors import InputError
from i2preg.geometry import invert_transform, make_transform, rot_x, rot_y, rot_z
from i2preg.inference import infer
from i2preg.lines import (
    LINE_DEFAULTS,
    align_poses,
    align_yaw,
    checked_steps,
    direction_grid,
    ground_normal,
    ground_normals,
    level_rotation,
    line_evidence,
    wall_directions,
    yaw_scores,
)
from i2preg.metrics import registration_errors
from i2preg.model import ICL
from test_model import TINY_CONF, synthetic_batch

H, W = 160, 512
K = np.array([[300.0, 0.0, 255.5], [0.0, 300.0, 79.5], [0.0, 0.0, 1.0]])
WALLS_X = (-5.0, 6.0)  # the street's two walls run along z at these x (camera frame = cloud frame, y down)


def street_scene() -> tuple[torch.Tensor, torch.Tensor]:
    """A camera at the origin looking down a street: two walls along z (x = WALLS_X, 3 to 80 m ahead, from the
    ground 1.65 m below the camera to 6 m above it) with horizontal courses of brighter bricks and vertical window
    edges, seen in the image (3, H, W) as lines; the cloud (N, 3) samples the walls and the ground."""
    image = np.full((H, W), 0.15, dtype=np.float32)
    for x in WALLS_X:
        for y in (-5.0, -3.5, -2.0, -0.5, 1.0):  # courses along the wall, pointing at the vanishing point
            a, b = np.array([x, y, 3.0]), np.array([x, y, 80.0])
            (u0, v0), (u1, v1) = (K @ a)[:2] / a[2], (K @ b)[:2] / b[2]
            cv2.line(image, (round(u0), round(v0)), (round(u1), round(v1)), 0.9, 2)
        for z in (6.0, 9.0, 14.0, 22.0):  # window edges: vertical lines, which the alignment leaves out
            top, bottom = K @ np.array([x, -5.0, z]), K @ np.array([x, 1.65, z])
            ends = [(round(point[0] / z), round(point[1] / z)) for point in (top, bottom)]
            cv2.line(image, *ends, 0.6, 2)
    rng = np.random.default_rng(0)
    walls = [np.stack([np.full(8000, x) + rng.normal(0, 0.01, 8000), rng.uniform(-6, 1.65, 8000),
                       rng.uniform(3, 80, 8000)], -1) for x in WALLS_X]
    ground = np.stack([rng.uniform(-5, 6, 8000), np.full(8000, 1.65), rng.uniform(1, 80, 8000)], -1)
    cloud = np.concatenate(walls + [ground])
    return torch.from_numpy(np.repeat(image[None], 3, 0)), torch.from_numpy(cloud).float()


def turned(yaw_deg: float) -> torch.Tensor:
    """(4, 4) float32: the true pose (the identity) turned by yaw_deg about the camera's y axis."""
    return torch.from_numpy(make_transform(rot_y(math.radians(yaw_deg)), np.zeros(3))).float()


def test_wall_directions_are_the_walls_not_the_ground():
    _, cloud = street_scene()
    directions = wall_directions(cloud.double().numpy(), LINE_DEFAULTS)
    walls = 16000 / LINE_DEFAULTS["normal_stride"]  # the walls' points; the ground's 8,000 are no wall
    assert 0.8 * walls < len(directions) < 1.02 * walls
    along = np.degrees((directions + math.pi / 2) % math.pi - math.pi / 2)  # modulo 180 deg
    assert np.median(np.abs(along)) < 1.0  # along z


def test_yaw_scores_peak_where_the_turn_carries_the_wall_direction_onto_the_evidence():
    conf = {**LINE_DEFAULTS, "window_deg": 30.0}
    phis = direction_grid(conf["direction_step_deg"])
    evidence = np.exp(-0.5 * ((np.degrees(phis) - 12.0) / 1.0) ** 2)  # the image's lines point 12 deg right
    yaws = np.arange(-30, 30.01, 0.25)
    scores = yaw_scores(evidence, np.zeros(50), conf)  # walls along the start camera's z axis
    assert abs(yaws[scores.argmax()] - 12.0) < 0.3  # rot_y(12 deg) turns z 12 deg to the right


def test_yaw_scores_equal_the_evidence_read_at_each_turned_wall():
    """The binned sum is the evidence read linearly (modulo 180 deg) at every wall direction plus every yaw."""
    rng = np.random.default_rng(1)
    phis, walls = direction_grid(LINE_DEFAULTS["direction_step_deg"]), rng.uniform(-4, 4, 300)
    evidence = rng.random(len(phis))
    scores = yaw_scores(evidence, walls, LINE_DEFAULTS)
    yaws = np.arange(-LINE_DEFAULTS["window_deg"], LINE_DEFAULTS["window_deg"] + 1e-9, LINE_DEFAULTS["step_deg"])
    angles = np.degrees(walls)[None] + yaws[:, None]
    direct = np.interp(angles, np.degrees(phis), evidence, period=180).sum(1)
    assert len(scores) == len(yaws) and np.allclose(scores, direct, rtol=1e-10)
    with pytest.raises(InputError, match="eval.lines.window_deg .* must be a whole number of step_deg"):
        yaw_scores(evidence, walls, checked_steps({**LINE_DEFAULTS, "window_deg": 40.1}))


@pytest.mark.parametrize("yaw_deg", [-25.0, -6.0, -1.0, 1.0, 3.0, 30.0])
def test_alignment_recovers_the_true_yaw(yaw_deg):
    """From a start turned by yaw_deg the yaw comes back to the truth within 0.3 deg (a turn of about -yaw_deg), and
    the camera is shifted along its x axis as if turned about a point pivot_m ahead (-pivot_m times the sine of the
    turn), by at most max_shift_m; not at all without a pivot."""
    image, cloud = street_scene()
    start = turned(yaw_deg)
    aligned = align_yaw(image, torch.from_numpy(K), cloud, start)
    assert aligned.dtype == torch.float32
    assert registration_errors(aligned[None].double().numpy(), np.eye(4)[None])["rre"][0] < 0.3
    turn = (aligned[:3, :3] @ start[:3, :3].T).double()  # rot_y(turn)
    shift = np.clip(-LINE_DEFAULTS["pivot_m"] * float(turn[0, 2]), -LINE_DEFAULTS["max_shift_m"],
                    LINE_DEFAULTS["max_shift_m"])
    assert abs(float(aligned[0, 3]) - shift) < 1e-4 and abs(float(aligned[2, 3])) < 1e-6
    assert np.sign(float(aligned[0, 3])) == np.sign(yaw_deg)  # turned back the other way: shifted the start's way
    unpivoted = align_yaw(image, torch.from_numpy(K), cloud, start, {"pivot_m": 0.0})
    assert np.allclose(invert_transform(unpivoted.double().numpy())[:3, 3], 0.0, atol=1e-5)


def tilted_street(pitch_deg: float, roll_deg: float) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """The street scene seen by the camera turned about its x axis by pitch_deg, then about its optical axis by
    roll_deg: the image warped by K R K^-1, the cloud turned by R (the true pose stays the identity); and R (3, 3)."""
    image, cloud = street_scene()
    turn = rot_z(math.radians(roll_deg)) @ rot_x(math.radians(pitch_deg))
    warped = cv2.warpPerspective(image[0].numpy(), K @ turn @ np.linalg.inv(K), (W, H), borderMode=cv2.BORDER_REFLECT)
    return torch.from_numpy(np.repeat(warped[None], 3, 0)), cloud @ torch.from_numpy(turn).float().T, turn


def test_ground_normal_is_the_tilted_ground_and_level_rotation_takes_it_to_y():
    _, cloud, turn = tilted_street(2.0, -3.0)
    normal = ground_normal(cloud.double().numpy(), LINE_DEFAULTS)  # the walls' points lie on no level plane
    assert math.degrees(math.acos(min(1.0, float(normal @ turn[:, 1])))) < 0.05  # the turned y axis
    assert np.allclose(level_rotation(normal) @ normal, [0.0, 1.0, 0.0], atol=1e-12)
    assert np.allclose(level_rotation(normal) @ level_rotation(normal).T, np.eye(3), atol=1e-12)
    assert np.allclose(ground_normals([cloud, street_scene()[1]]).numpy(), [normal, [0.0, 1.0, 0.0]], atol=1e-3)
    y_to_z = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # a frame whose z axis points down
    assert np.allclose(ground_normal(cloud.double().numpy() @ y_to_z.T, LINE_DEFAULTS, y_to_z[:, 1]), y_to_z @ normal,
                       atol=1e-6)
    assert np.allclose(ground_normal(cloud.double().numpy()[:20], LINE_DEFAULTS, y_to_z[:, 1]), y_to_z[:, 1])


def walls_without_ground(turn: np.ndarray) -> torch.Tensor:
    """The street scene's walls and a wall across the street's end (x from -5 to 6 m at z = 85 m), no ground: a
    road that bends or climbs has no plane to fit; turned by ``turn`` (3, 3), as ``tilted_street`` turns its cloud."""
    _, cloud = street_scene()
    walls = cloud[cloud[:, 1] < 1.6].double().numpy()
    rng = np.random.default_rng(4)
    across = np.stack([rng.uniform(-5, 6, 4000), rng.uniform(-6, 1.6, 4000), 85.0 + rng.normal(0, 0.01, 4000)], -1)
    return torch.from_numpy(np.concatenate([walls, across]) @ turn.T).float()


def test_without_a_ground_plane_the_walls_give_the_vertical():
    """Where no plane holds a tenth of the points the ground's normal is the walls' common vertical: the turned y axis
    within 0.1 deg; with walls of one direction only it is not determined, and ``down`` comes back unchanged only
    where the walls are too few."""
    _, cloud, turn = tilted_street(2.0, -3.0)
    turned_walls = walls_without_ground(turn).double().numpy()
    normal = ground_normal(turned_walls, LINE_DEFAULTS)
    assert math.degrees(math.acos(min(1.0, float(normal @ turn[:, 1])))) < 0.1 and normal[1] > 0
    assert np.array_equal(ground_normal(turned_walls[:300], LINE_DEFAULTS), [0.0, 1.0, 0.0])  # 150 normals: too few


def test_alignment_levels_by_the_walls_where_the_ground_is_no_plane():
    """A camera pitched 2 deg over a street whose cloud holds no ground plane: levelled by the walls' vertical, the
    yaw comes back within 0.3 deg, as with the ground."""
    image, _, turn = tilted_street(2.0, 0.0)
    cloud = walls_without_ground(turn)
    for yaw_deg in (-6.0, 3.0):
        aligned = align_yaw(image, torch.from_numpy(K), cloud, turned(yaw_deg)).double()
        assert abs(math.degrees(math.atan2(-float(aligned[2, 0]), float(aligned[0, 0])))) < 0.3


@pytest.mark.parametrize("pitch_deg, roll_deg", [(2.0, 0.0), (-2.0, 0.0), (1.0, 3.0)])
def test_alignment_of_a_tilted_camera_runs_level(pitch_deg, roll_deg):
    """A camera 2 deg off level (the walls' horizontal lines no longer vanish on the image row through the principal
    point): the alignment levels the search by the cloud's ground and comes back within 0.3 deg of yaw; searched in
    the camera's own frame (``level_deg`` beyond any tilt) it does not."""
    image, cloud, _ = tilted_street(pitch_deg, roll_deg)
    for yaw_deg in (-6.0, 3.0):
        aligned = align_yaw(image, torch.from_numpy(K), cloud, turned(yaw_deg)).double()
        assert abs(math.degrees(math.atan2(-float(aligned[2, 0]), float(aligned[0, 0])))) < 0.3
    unlevelled = align_yaw(image, torch.from_numpy(K), cloud, turned(3.0), {"level_deg": 90.0}).double()
    assert abs(math.degrees(math.atan2(-float(unlevelled[2, 0]), float(unlevelled[0, 0])))) > 0.5


def test_evidence_computed_once_aligns_as_computed_each_time():
    """Poses aligned with the images' evidence and the clouds' ground given (``line_evidence``, ``ground_normals``, as
    the yaw sectors' runs share them) are the poses aligned without them, to the bit, level or levelled."""
    image, cloud = street_scene()
    images, Ks = image[None].expand(3, -1, -1, -1), torch.from_numpy(K)[None].expand(3, 3, 3)
    starts = torch.stack([turned(yaw) for yaw in (-6.0, 3.0, 30.0)])
    evidence = line_evidence(images, Ks)
    assert evidence.shape == (3, len(direction_grid(LINE_DEFAULTS["direction_step_deg"]))) and evidence.min() > 0
    assert torch.equal(align_poses(images, Ks, [cloud] * 3, starts, evidence=evidence),
                       align_poses(images, Ks, [cloud] * 3, starts))
    image, cloud, _ = tilted_street(2.0, 0.0)  # levelled: the cloud's ground given, as the sectors' runs share it
    images = image[None].expand(3, -1, -1, -1)
    normals = ground_normals([cloud] * 3)
    assert torch.equal(align_poses(images, Ks, [cloud] * 3, starts, evidence=line_evidence(images, Ks), normals=normals),
                       align_poses(images, Ks, [cloud] * 3, starts))


def test_no_walls_or_a_best_yaw_at_the_window_edge_keep_the_start():
    image, cloud = street_scene()
    ground = cloud[cloud[:, 1] > 1.6]
    start = turned(10.0)
    assert torch.equal(align_yaw(image, torch.from_numpy(K), ground, start), start)
    beyond = turned(LINE_DEFAULTS["window_deg"] + 4.0)  # the truth outside the window: its flank peaks at the edge
    assert torch.equal(align_yaw(image, torch.from_numpy(K), cloud, beyond), beyond)


def test_eval_refine_lines_runs_after_the_solver_and_needs_dense_clouds(monkeypatch):
    """The solver's poses go to the alignment with the batch's images, intrinsics, dense clouds and eval.lines, and
    its poses are the result."""
    torch.manual_seed(0)
    model, batch = ICL(TINY_CONF).eval(), synthetic_batch()
    eval_cfg = {**full_config({})["eval"], "refine": "lines"}
    with pytest.raises(InputError, match="eval.refine: lines needs the pairs' dense clouds"):
        infer(model, batch, "frustum", eval_cfg)
    batch["dense_points"] = list(batch["points"])
    calls = []

    def turn_all(images, Ks, clouds, poses, conf, evidence, normals):
        calls.append((images, Ks, clouds, poses.clone(), conf, evidence, normals))
        return turned(7.0) @ poses

    monkeypatch.setattr(inference, "align_poses", turn_all)
    aligned = infer(model, batch, "frustum", eval_cfg)
    plain = infer(model, batch, "frustum")
    (images, Ks, clouds, poses, conf, evidence, normals), = calls
    assert images is batch["image"] and Ks is batch["K"] and clouds is batch["dense_points"]
    assert evidence is None and normals is None
    assert conf == LINE_DEFAULTS and torch.equal(poses, plain.pose)
    assert torch.allclose(aligned.pose, turned(7.0) @ plain.pose) and aligned.solved.all()
    batch["line_evidence"] = torch.ones(len(batch["image"]), 360, dtype=torch.float64)  # computed once for runs
    batch["ground_normals"] = torch.tensor([[0.0, 1.0, 0.0]]).repeat(len(batch["image"]), 1)
    infer(model, batch, "frustum", eval_cfg)
    assert calls[-1][5] is batch["line_evidence"] and calls[-1][6] is batch["ground_normals"]
