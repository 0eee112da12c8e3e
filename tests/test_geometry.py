"""SE(3), projection, the protocol perturbation and the pose parameterisations."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from i2preg import geometry as g
from i2preg.data.kitti import KittiOdometry
from i2preg.data.ops import voxel_downsample


def test_inverse_and_transform_numpy_and_torch_agree():
    rng = np.random.default_rng(1)
    T = g.make_transform(Rotation.random(4, random_state=2).as_matrix(), rng.normal(size=(4, 3)))
    np.testing.assert_allclose(g.invert_transform(T) @ T, np.broadcast_to(np.eye(4), (4, 4, 4)), atol=1e-12)
    points = rng.normal(size=(4, 10, 3))
    expected = np.einsum("bij,bnj->bni", T[:, :3, :3], points) + T[:, None, :3, 3]
    np.testing.assert_allclose(g.transform_points(T, points), expected, atol=1e-12)
    torch_out = g.transform_points(torch.from_numpy(T), torch.from_numpy(points)).numpy()
    np.testing.assert_allclose(torch_out, expected, atol=1e-12)


def test_projection_and_in_image_mask():
    K = np.array([[100.0, 0, 50], [0, 100, 20], [0, 0, 1]])
    points = np.array([[0, 0, 10], [1, 0, 2], [0, 0, -5], [10, 0, 1], [0, -0.205, 1]])
    uv, z = g.project_points(points, K)
    np.testing.assert_allclose(uv[:2], [[50, 20], [100, 20]])
    np.testing.assert_allclose(z, points[:, 2])
    mask = g.in_image(uv, z, height=40, width=100)
    # centre: in; u = 100 is past the last pixel column (99); behind the camera: out; far right: out;
    # v = -0.5 is the top edge of the first row: in.
    assert mask.tolist() == [True, False, False, False, True]


def test_view_weight_fades_in_over_the_pixel_inside_the_border():
    """0 behind the camera and outside the image, rising linearly to 1 one pixel inside its border: a point that
    moves 1e-4 px across the border changes its weight by 1e-4 (``in_image`` switches from False to True)."""
    uv = torch.tensor([[50.0, 20.0], [-0.5, 20.0], [-0.25, 20.0], [0.5, 20.0], [99.25, 20.0], [50.0, -1.0],
                       [50.0, 39.0], [50.0, 20.0], [-0.5 - 1e-4, 20.0], [-0.5 + 1e-4, 20.0]], dtype=torch.float64)
    depth = torch.tensor([10.0, 1, 1, 1, 1, 1, 1, -5, 1, 1], dtype=torch.float64)
    weight = g.view_weight(uv, depth, height=40, width=100)
    torch.testing.assert_close(weight, torch.tensor([1, 0, 0.25, 1, 0.25, 0, 0.5, 0, 0, 1e-4], dtype=torch.float64))
    assert g.in_image(uv[8:], depth[8:], 40, 100).tolist() == [False, True]
    assert ((weight > 0) <= g.in_image(uv, depth, 40, 100)).all()


def test_euler_order_is_rz_ry_rx():
    rx, ry, rz = 0.1, -0.7, 0.3
    expected = Rotation.from_euler("ZYX", [rz, ry, rx]).as_matrix()
    np.testing.assert_allclose(g.euler_to_matrix(rx, ry, rz), expected, atol=1e-12)


def test_standard_perturbation_is_planar_and_within_amplitudes():
    rng = np.random.default_rng(7351)
    for _ in range(200):
        P = g.sample_perturbation(rng)
        assert P[1, 3] == 0 and abs(P[0, 3]) <= 10 and abs(P[2, 3]) <= 10
        np.testing.assert_allclose(P[1, :3], [0, 1, 0], atol=1e-12)  # rotation about the camera y axis only
    six_dof = g.sample_perturbation(np.random.default_rng(0), (1, 1, 1, 0.2, 0.2, 0.2))
    assert abs(six_dof[1, 3]) > 0 and abs(six_dof[1, 0]) > 0


def test_same_seed_same_perturbation():
    a = g.sample_perturbation(np.random.default_rng(5))
    b = g.sample_perturbation(np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)


def test_frustum_parameters_round_trip_and_meaning():
    rng = np.random.default_rng(3)
    P = torch.from_numpy(np.stack([g.sample_perturbation(rng) for _ in range(16)]))
    T = g.invert_transform(P)
    c, d = g.pose_to_frustum_params(T)
    np.testing.assert_allclose(g.frustum_params_to_pose(c, d).numpy(), T.numpy(), atol=1e-12)
    # c is the camera centre in the cloud frame: it maps to the camera origin.
    centre = torch.stack([c[:, 0], torch.zeros(16, dtype=c.dtype), c[:, 1]], -1)
    np.testing.assert_allclose(g.transform_points(T, centre[:, None])[:, 0].numpy(), 0, atol=1e-9)
    yaw = 0.4
    R = torch.from_numpy(g.rot_y(yaw))
    d_yaw = torch.tensor([-math.sin(yaw), math.cos(yaw)], dtype=torch.float64)
    np.testing.assert_allclose(g.yaw_vector_to_matrix(d_yaw).numpy(), R.numpy(), atol=1e-12)


def test_projection_through_frustum_parameters_equals_the_general_projection():
    """project_frustum_params gives project_points(transform_points(frustum_params_to_pose(c, d), xyz), K) for a
    batch of pose grids, unnormalised yaw vectors, a skewed K and points behind the camera included. In float64: a
    point near the camera plane projects tens of thousands of pixels out, where float32's two roundings differ by
    more than a pixel (and by a different amount on CPUs with other vector units)."""
    generator = torch.Generator().manual_seed(0)
    B, P, M = 3, 7, 50
    xyz = torch.randn(B, M, 3, generator=generator, dtype=torch.float64) * torch.tensor([10.0, 1.0, 10.0])
    c = torch.randn(B, P, 2, generator=generator, dtype=torch.float64)
    d = torch.randn(B, P, 2, generator=generator, dtype=torch.float64) * 3
    K = torch.tensor([[300.0, 2.0, 256.0], [0.0, 310.0, 80.0], [0.0, 0.0, 1.0]], dtype=torch.float64).repeat(B, 1, 1)
    K[1, 0, 0] = 200.0
    uv, depth = g.project_frustum_params(xyz, c, d, K)
    expected_uv, expected_depth = g.project_points(g.transform_points(g.frustum_params_to_pose(c, d), xyz[:, None]),
                                                   K[:, None])
    assert uv.shape == (B, P, M, 2) and depth.shape == (B, P, M)
    assert (depth < 0).any() and (depth > 0).any()
    torch.testing.assert_close(depth, expected_depth, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(uv, expected_uv, atol=1e-9, rtol=1e-12)


def test_six_d_round_trip_and_orthonormal_output():
    R = torch.from_numpy(Rotation.random(32, random_state=4).as_matrix())
    np.testing.assert_allclose(g.rotation_6d_to_matrix(g.matrix_to_rotation_6d(R)).numpy(), R.numpy(), atol=1e-12)
    out = g.rotation_6d_to_matrix(torch.randn(32, 6, dtype=torch.float64))
    np.testing.assert_allclose((out.transpose(-1, -2) @ out).numpy(), np.broadcast_to(np.eye(3), (32, 3, 3)), atol=1e-12)
    np.testing.assert_allclose(torch.linalg.det(out).numpy(), 1, atol=1e-12)


def test_axis_angle_matches_scipy_and_has_finite_gradient_at_identity():
    R = Rotation.random(32, random_state=5)
    rv = g.rotation_to_axis_angle(torch.from_numpy(R.as_matrix()))
    np.testing.assert_allclose(rv.numpy(), R.as_rotvec(), atol=1e-9)
    x = torch.zeros(6, dtype=torch.float64)
    x[0] = x[4] = 1.0
    x.requires_grad_(True)
    angle = g.rotation_to_axis_angle(g.rotation_6d_to_matrix(x)).norm()
    angle.backward()
    assert torch.isfinite(x.grad).all()
    assert angle.item() == pytest.approx(0.0, abs=1e-5)


def _yaw_pose(yaw_deg: float, centre) -> torch.Tensor:
    """Cloud -> camera pose of a camera at ``centre`` (cloud frame) turned by ``yaw_deg`` about y."""
    R = torch.from_numpy(g.rot_y(math.radians(yaw_deg)))
    return g.make_transform(R, -R @ torch.as_tensor(centre, dtype=torch.float64))


def test_consensus_pose_averages_the_agreeing_estimates_and_leaves_out_the_others():
    agreeing = [(10.0, [1.0, 0, 2.0]), (12.0, [1.2, 0, 2.2]), (11.0, [1.1, 0, 1.9])]
    flipped, far = (190.0, [1.0, 0, 2.0]), (11.0, [4.0, 0, 2.0])  # a yaw flip; a centre 3 m off
    poses = torch.stack([_yaw_pose(*e) for e in (agreeing[0], flipped, agreeing[1], far, agreeing[2])])[None]
    consensus, agreeing = g.consensus_pose(poses)
    consensus = consensus[0]
    assert agreeing.tolist() == [3]
    torch.testing.assert_close(consensus, _yaw_pose(11.0, [1.1, 0, 6.1 / 3]), atol=1e-9, rtol=0)
    R = consensus[:3, :3]
    torch.testing.assert_close(R @ R.T, torch.eye(3, dtype=R.dtype))
    assert torch.linalg.det(R) > 0 and consensus.dtype == poses.dtype
    # one estimate alone, or none agreeing: the first (every estimate agrees only with itself)
    torch.testing.assert_close(g.consensus_pose(poses[:, :1])[0][0], poses[0, 0])
    torch.testing.assert_close(g.consensus_pose(poses[:, [1, 3]])[0][0], poses[0, 1])
    # invalid estimates are left out, and a pose without any valid one is its first
    valid = torch.tensor([[False, True, False, False, False], [False] * 5])
    both, agreeing = g.consensus_pose(poses.expand(2, -1, -1, -1), valid)
    assert agreeing.tolist() == [1, 1]
    torch.testing.assert_close(both[0], poses[0, 1])
    torch.testing.assert_close(both[1], poses[0, 0])


def street_scan(turn: np.ndarray, origin: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, 3) a scan of flat ground 1.65 m below the camera (y down) with two walls and clutter above it, turned by
    turn (3, 3) about the point origin (3,)."""
    rng = np.random.default_rng(seed)
    ground = np.c_[rng.uniform(-20, 20, 3000), np.full(3000, 1.65), rng.uniform(-5, 40, 3000)]
    walls = np.c_[rng.choice([-8.0, 8.0], 800), rng.uniform(-6, 1.65, 800), rng.uniform(-5, 40, 800)]
    clutter = rng.uniform([-7, -1, 0], [7, 1.6, 30], (400, 3))
    points = np.concatenate([ground, walls, clutter])
    return (points - origin) @ turn.T + origin


def test_ground_plane_finds_a_leaning_ground_and_ground_heights_undo_the_lean():
    level = g.ground_plane(street_scan(np.eye(3), np.zeros(3)))
    np.testing.assert_allclose(level, [0.0, 1.0, 0.0, 1.65], atol=1e-4)  # the walls' feet pull it a little
    turn = g.rot_z(math.radians(-1.5)) @ g.rot_x(math.radians(2.0))
    origin = np.array([4.0, 0.0, -7.0])  # a turn about another point than the frame's origin moves the plane too
    level_scan, turned_scan = street_scan(np.eye(3), np.zeros(3)), street_scan(turn, origin)
    plane = g.ground_plane(turned_scan)
    np.testing.assert_allclose(plane[:3], turn[:, 1], atol=1e-5)  # the turned y axis
    np.testing.assert_allclose(turned_scan[:3000] @ plane[:3], plane[3], atol=1e-3)  # the ground points lie on it
    heights = g.ground_heights(torch.from_numpy(turned_scan)[None], torch.from_numpy(plane)[None], 1.65)
    np.testing.assert_allclose(heights[0].numpy(), level_scan[:, 1], atol=1e-3)  # the heights the level scan has as y
    assert np.abs(turned_scan[:, 1] - level_scan[:, 1]).max() > 1  # which the turned scan's y are not
    level_plane = torch.tensor([[0.0, 1.0, 0.0, 1.65]], dtype=torch.float64)
    at_ground_y = g.ground_heights(torch.from_numpy(level_scan)[None], level_plane, 1.65)
    np.testing.assert_allclose(at_ground_y[0].numpy(), level_scan[:, 1], atol=1e-12)


def test_ground_plane_is_none_without_a_ground():
    rng = np.random.default_rng(1)
    assert g.ground_plane(rng.uniform(-20, 20, (5000, 3))) is None  # no plane holds a tenth of the points
    assert g.ground_plane(np.zeros((10, 3))) is None


def test_scan_origin_finds_a_sweeps_lidar_from_the_gap_of_its_ground(synthetic_root):
    """A LiDAR sweep of the synthetic world, moved into its camera's frame and then by the protocol's turns and
    shifts: ``scan_origin`` finds the LiDAR's ground position under the empty disc its lowest beam leaves; a cloud
    without such a gap (points spread through a box) gives None."""
    frames = KittiOdometry(synthetic_root, ["00"])
    sweep = g.transform_points(frames.calibration(0)[2].T_cam_velo, frames.points(0)[:, :3].astype(np.float64))
    rng = np.random.default_rng(0)
    for yaw_deg, shift in ((0.0, (0.0, 0.0, 0.0)), (130.0, (6.0, 0.0, -4.0)), (-75.0, (-9.0, 0.0, 8.5))):
        P = g.make_transform(g.rot_y(math.radians(yaw_deg)), np.array(shift))
        cloud = g.transform_points(P, sweep)
        cloud = cloud[voxel_downsample(cloud, 0.1)]
        cloud = cloud[rng.permutation(len(cloud))[:40_960]]
        lidar = g.transform_points(P @ frames.calibration(0)[2].T_cam_velo, np.zeros((1, 3)))[0]
        assert np.linalg.norm(g.scan_origin(cloud) - lidar[[0, 2]]) < 0.3
    assert g.scan_origin(rng.uniform(-20, 20, (20_000, 3))) is None
