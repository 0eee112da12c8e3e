"""Rigid transforms, pinhole projection, a street scan's ground plane, the benchmark perturbation and the pose
parameterisations.

Conventions used everywhere in i2preg:
- A pose ``T`` is a (..., 4, 4) matrix that maps points of the cloud frame into the camera frame:
  ``p_cam = R p + t``. Camera frame: x right, y down, z forward (OpenCV / KITTI).
- Pixels ``uv`` are (u, v) = (column, row) with the centre of the top-left pixel at (0, 0).
- Functions written with ``@`` / ``swapaxes`` accept NumPy arrays and torch tensors alike; the pose
  parameterisations used by the network are torch-only.
"""

from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np
import torch
from scipy.spatial import cKDTree

Array = np.ndarray | torch.Tensor

# ---------------------------------------------------------------------------------------------
# SE(3) on NumPy arrays and torch tensors
# ---------------------------------------------------------------------------------------------


def make_transform(R: Array, t: Array) -> Array:
    """Stack rotation (..., 3, 3) and translation (..., 3) into a (..., 4, 4) transform."""
    if isinstance(R, torch.Tensor):
        T = torch.zeros(*R.shape[:-2], 4, 4, dtype=R.dtype, device=R.device)
    else:
        T = np.zeros((*R.shape[:-2], 4, 4), dtype=np.result_type(R, t))
    T[..., :3, :3] = R
    T[..., :3, 3] = t
    T[..., 3, 3] = 1
    return T


def invert_transform(T: Array) -> Array:
    """Inverse of rigid transforms (..., 4, 4), using R^T rather than a general inverse."""
    R = T[..., :3, :3]
    t = T[..., :3, 3]
    Rt = R.swapaxes(-1, -2)
    return make_transform(Rt, -(Rt @ t[..., None])[..., 0])


def transform_points(T: Array, points: Array) -> Array:
    """Apply T (..., 4, 4) to points (..., N, 3): returns R p + t, shape (..., N, 3)."""
    return points @ T[..., :3, :3].swapaxes(-1, -2) + T[..., None, :3, 3]


def project_points(points_cam: Array, K: Array) -> tuple[Array, Array]:
    """Pinhole projection of camera-frame points (..., N, 3) with intrinsics K (..., 3, 3).

    Returns pixels uv (..., N, 2) and depth z (..., N). Points with z <= 0 get finite but
    meaningless pixels (depth is clamped for the division); mask them with ``in_image``.
    """
    z = points_cam[..., 2]
    if isinstance(points_cam, torch.Tensor):
        safe_z = torch.where(z.abs() < 1e-6, torch.full_like(z, 1e-6), z)
    else:
        safe_z = np.where(np.abs(z) < 1e-6, 1e-6, z)
    xy1 = points_cam / safe_z[..., None]
    uv = xy1 @ K[..., :2, :].swapaxes(-1, -2)
    return uv, z


def in_image(uv: Array, depth: Array, height: int, width: int) -> Array:
    """True where a projected point lies in front of the camera (z > 0) and inside H x W.

    The image covers pixel coordinates [-0.5, W - 0.5) x [-0.5, H - 0.5): every point that falls
    on a pixel of the image counts, as with the rounding used to draw it.
    """
    u, v = uv[..., 0], uv[..., 1]
    return (depth > 0) & (u >= -0.5) & (u < width - 0.5) & (v >= -0.5) & (v < height - 0.5)


def view_weight(uv: torch.Tensor, depth: torch.Tensor, height: int, width: int, fade: float = 1.0) -> torch.Tensor:
    """How far inside the H x W image a projected point lies, in units of ``fade`` pixels, clipped to [0, 1]: 0
    behind the camera or outside the image of ``in_image``, 1 from ``fade`` px inside its border on.

    A weight that fades in at the border, where ``in_image`` switches: a point that projects within a rounding
    error of the border then counts almost nothing either way (the exported model must give PyTorch's poses).
    """
    u, v = uv[..., 0], uv[..., 1]
    margin = torch.minimum(torch.minimum(u + 0.5, width - 0.5 - u), torch.minimum(v + 0.5, height - 0.5 - v))
    return (margin / fade).clamp(0, 1) * (depth > 0)


def project_pose(points: Array, T: Array, K: Array, height: int, width: int) -> tuple[Array, Array, Array]:
    """Project cloud-frame points (..., N, 3) through pose T and K: (uv, depth, in-image mask)."""
    uv, z = project_points(transform_points(T, points), K)
    return uv, z, in_image(uv, z, height, width)


# ---------------------------------------------------------------------------------------------
# Rotations (NumPy)
# ---------------------------------------------------------------------------------------------


def rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=np.float64)


def rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=np.float64)


def rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=np.float64)


def euler_to_matrix(rx: float, ry: float, rz: float) -> np.ndarray:
    """The protocol's rotation R = Rz(rz) Ry(ry) Rx(rx) (angles in radians)."""
    return rot_z(rz) @ rot_y(ry) @ rot_x(rx)


def rotation_angle(R: Array) -> Array:
    """Geodesic angle (radians) of rotations (..., 3, 3)."""
    trace = R[..., 0, 0] + R[..., 1, 1] + R[..., 2, 2]
    if isinstance(R, torch.Tensor):
        return torch.arccos(torch.clamp((trace - 1) / 2, -1.0, 1.0))
    return np.arccos(np.clip((trace - 1) / 2, -1.0, 1.0))


def consensus_pose(poses: torch.Tensor, valid: torch.Tensor | None = None, max_distance: float = 1.0,
                   max_angle_deg: float = 5.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One pose from several estimates of it: poses (B, D, 4, 4) cloud -> camera, D estimates of each of B poses
    -> the poses (B, 4, 4) and how many estimates each averages (B,) int64. valid: (B, D) bool, the estimates to
    use (None: all). The estimate with the most others in agreement (camera centres within ``max_distance`` m,
    rotations within ``max_angle_deg``; ties to the one nearest the rest) and those in agreement with it are
    averaged: their camera centres by the mean, their rotations by the chordal mean (the rotation nearest their
    sum). Estimates that disagree (a yaw flip among them) are left out rather than averaged in; where no two agree,
    the pose is the first estimate, and so is a pose without a valid estimate."""
    T = poses.double()
    valid = torch.ones(T.shape[:2], dtype=torch.bool, device=T.device) if valid is None else valid.to(T.device)
    R, t = T[..., :3, :3], T[..., :3, 3]
    centre = -(R.transpose(-1, -2) @ t.unsqueeze(-1)).squeeze(-1)  # (B, D, 3) cloud frame
    distance = torch.cdist(centre, centre)  # (B, D, D)
    trace = torch.einsum("bkij,blij->bkl", R, R)  # trace of R_k^T R_l
    angle = torch.rad2deg(torch.arccos(torch.clamp((trace - 1) / 2, -1.0, 1.0)))
    agree = (distance <= max_distance) & (angle <= max_angle_deg) & valid.unsqueeze(1) & valid.unsqueeze(2)
    spread = (distance * agree).sum(-1)
    best = torch.argmax(agree.sum(-1) - spread / (1 + spread.sum(-1, keepdim=True)), dim=-1)
    # (B, D): the best estimate's row of agreement, itself included
    weight = agree[torch.arange(len(T), device=T.device), best].double()
    weight[~valid.any(1), 0] = 1.0
    mean_centre = (weight.unsqueeze(-1) * centre).sum(1) / weight.sum(1, keepdim=True)
    U, _, Vh = torch.linalg.svd((weight[..., None, None] * R).sum(1))
    sign = torch.ones_like(mean_centre)
    sign[:, 2] = torch.sign(torch.linalg.det(U @ Vh))
    mean_rotation = U @ (sign.unsqueeze(-1) * Vh)
    out = make_transform(mean_rotation, -(mean_rotation @ mean_centre.unsqueeze(-1)).squeeze(-1))
    return out.to(poses.dtype), weight.sum(1).long()


# ---------------------------------------------------------------------------------------------
# A street scan's ground
# ---------------------------------------------------------------------------------------------

GROUND_TOLERANCE_M = 0.03
"""``ground_plane``: a ground point lies within this of the plane (metres)."""


GROUND_MAX_LEAN_DEG = 25.0
"""A ground's normal lies within this of the cloud's (or the given) down direction: ``ground_plane``'s planes, and the
verticals that stand in for them (``lines.wall_vertical``)."""


def ground_plane(points: np.ndarray, down: np.ndarray | None = None, tolerance: float = GROUND_TOLERANCE_M,
                 tries: int = 200, sample: int = 10_000) -> np.ndarray | None:
    """A street scan's ground, (4,) = (n, d) with n . p = d on it, n the unit normal pointing ``down`` (3,) (a unit
    vector of the cloud's frame; None: its y axis): of the planes within 25 deg of level (normal within 25 deg of
    ``down``) through three of at most ``sample`` points of the cloud (N, 3) (a fixed-seed RANSAC of ``tries``
    draws), the one with the most points within ``tolerance``, refitted by least squares to the points within that of
    it, twice. None where no such plane holds a tenth of the points."""
    rng = np.random.default_rng(0)
    points = points[:: max(1, len(points) // sample)]
    level = np.array([0.0, 1.0, 0.0]) if down is None else np.asarray(down, dtype=np.float64)
    if len(points) < 30:
        return None
    triples = points[rng.integers(0, len(points), (tries, 3))]
    normals = np.cross(triples[:, 1] - triples[:, 0], triples[:, 2] - triples[:, 0])
    length = np.linalg.norm(normals, axis=1)
    normals, anchors = normals[length > 1e-9] / length[length > 1e-9, None], triples[length > 1e-9, 0]
    normals *= np.sign(normals @ level + 1e-12)[:, None]
    levelish = normals @ level > math.cos(math.radians(GROUND_MAX_LEAN_DEG))
    normals, anchors = normals[levelish], anchors[levelish]
    if not len(normals):
        return None
    heights = np.abs(np.einsum("pi,hi->hp", points, normals) - np.einsum("hi,hi->h", anchors, normals)[:, None])
    best = np.argmax((heights < tolerance).sum(1))
    normal, anchor = normals[best], anchors[best]
    for _ in range(2):
        ground = points[np.abs((points - anchor) @ normal) < tolerance]
        if len(ground) < 0.1 * len(points):
            return None
        anchor = ground.mean(0)
        normal = np.linalg.eigh(np.cov((ground - anchor).T))[1][:, 0]
        normal *= np.sign(normal @ level)
    return np.append(normal, normal @ anchor)


SWEEP_GROUND_TOLERANCE_M = 0.08
"""``scan_origin``: the tolerance of its ground fit; a real road holds too few points within GROUND_TOLERANCE_M."""
SWEEP_GROUND_BAND_M = 0.25
"""``scan_origin``: points within this of the ground are its ground points."""
SWEEP_CELL_M = 0.2
"""``scan_origin``: the side of its top-view grid's cells."""
SWEEP_MIN_GAP_M = 1.5
"""``scan_origin``: the least radius of an empty disc that may lie under the sensor."""
SWEEP_RING_M = 1.5
"""``scan_origin``: the width of the ring about a disc whose ground points it counts."""


def scan_origin(points: np.ndarray) -> np.ndarray | None:
    """(2,) the ground position (x, z), cloud frame (y down), of the spinning LiDAR that took ``points`` (N, 3) as one
    sweep, or None where no gap of a sweep is found. Its lowest beam meets the ground metres away, so its ground
    points (within ``SWEEP_GROUND_BAND_M`` of ``ground_plane``) leave an empty disc about it that the densest rings of
    the sweep surround on every side (a top-view grid of ``SWEEP_CELL_M`` cells; an object's shadow is as empty but
    sparsely bounded). Of the empty discs of at least ``SWEEP_MIN_GAP_M`` radius that are the widest about their
    centres, the one with the most ground points within ``SWEEP_RING_M`` of its edge, times the square of the share of
    16 azimuth sectors that hold more than 5 of them. Found within 1 m of the camera on the 64- and 32-beam
    synthetic rigs and the real KITTI and nuScenes sweeps (BENCHMARKS.md); meant for a network input cloud (a
    voxel-sampled sweep, ``data.num_points`` points)."""
    plane = ground_plane(points, tolerance=SWEEP_GROUND_TOLERANCE_M)
    if plane is not None:
        points = points[np.abs(points @ plane[:3] - plane[3]) < SWEEP_GROUND_BAND_M]
    if len(points) < 50:
        return None
    xz = points[:, [0, 2]]
    low = xz.min(0) - SWEEP_CELL_M
    cells = np.floor((xz - low) / SWEEP_CELL_M).astype(np.int64)
    empty = np.ones(cells.max(0) + 2, dtype=np.uint8)
    empty[cells[:, 0], cells[:, 1]] = 0
    gap = cv2.distanceTransform(empty, cv2.DIST_L2, 5) * SWEEP_CELL_M  # (X, Z) metres to the nearest ground point
    widest = (gap >= SWEEP_MIN_GAP_M) & (gap == cv2.dilate(gap, np.ones((5, 5), np.uint8)))
    cells = np.argwhere(widest)
    if not len(cells):
        return None
    centres = (cells + 0.5) * SWEEP_CELL_M + low
    radii = gap[cells[:, 0], cells[:, 1]]
    nearby = cKDTree(xz).query_ball_point(centres, radii + SWEEP_RING_M)  # each disc's points, its ring's among them
    best, best_score = None, 0.0
    for centre, radius, index in zip(centres, radii, nearby):
        offset = xz[index] - centre
        distance = np.hypot(offset[:, 0], offset[:, 1])
        ring = (distance >= radius) & (distance < radius + SWEEP_RING_M)
        count = int(ring.sum())
        if count < 50:
            continue
        sectors = np.floor((np.arctan2(offset[ring, 1], offset[ring, 0]) + math.pi) * 8 / math.pi).astype(int) % 16
        score = count * (np.bincount(sectors, minlength=16) > 5).mean() ** 2
        if score > best_score:
            best, best_score = centre, score
    return best


def ground_heights(xyz: torch.Tensor, ground: torch.Tensor, ground_y: float) -> torch.Tensor:
    """Heights (B, M) of the points xyz (B, M, 3) over their clouds' ground planes ground (B, 4) (``ground_plane``'s
    (n, d)), along the planes' normals (down positive, as the frame's y), placed where the cloud frame's y would put
    them if the ground were level at y = ``ground_y``: a level cloud's heights are its y, a leaning one's are not
    leant."""
    return (xyz * ground[:, None, :3].to(xyz)).sum(-1) - ground[:, None, 3].to(xyz) + ground_y


# ---------------------------------------------------------------------------------------------
# The benchmark perturbation
# ---------------------------------------------------------------------------------------------

STANDARD_AMPLITUDES = (10.0, 0.0, 10.0, 0.0, 2 * math.pi, 0.0)
"""(tx, ty, tz, rx, ry, rz): metres and radians of the KITTI protocol (METHOD section 3)."""


def sample_perturbation(rng: np.random.Generator, amplitudes: Sequence[float] = STANDARD_AMPLITUDES) -> np.ndarray:
    """Draw the protocol perturbation P = [R | t] (4, 4), float64.

    Each of tx, ty, tz, rx, ry, rz is uniform in [-a, a] for its amplitude a; R = Rz Ry Rx.
    The perturbed cloud is P applied to camera-frame points; the ground-truth pose is P^-1.
    """
    tx, ty, tz, rx, ry, rz = (rng.uniform(-a, a) if a > 0 else 0.0 for a in amplitudes)
    return make_transform(euler_to_matrix(rx, ry, rz), np.array([tx, ty, tz], dtype=np.float64))


# ---------------------------------------------------------------------------------------------
# Pose parameterisations used by the network (torch)
# ---------------------------------------------------------------------------------------------


def pose_to_frustum_params(T: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """3-DoF parameters of poses (B, 4, 4): camera centre c = (c_x, c_z) in the cloud frame and
    d = (R[2, 0], R[0, 0]) = (-sin yaw, cos yaw). Exact for yaw-only poses with zero height offset."""
    R, t = T[..., :3, :3], T[..., :3, 3]
    centre = -(R.swapaxes(-1, -2) @ t[..., None])[..., 0]
    c = centre[..., [0, 2]]
    d = torch.stack([R[..., 2, 0], R[..., 0, 0]], dim=-1)
    return c, d


def frustum_params_to_pose(c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Inverse of ``pose_to_frustum_params``: c (..., 2), d (..., 2) -> T (..., 4, 4).

    d is normalised to unit length first, so any non-zero network output gives a rotation:
    R = [[d1, 0, -d0], [0, 1, 0], [d0, 0, d1]], t = -R (c_x, 0, c_z).
    """
    d = torch.nn.functional.normalize(d, dim=-1)
    d0, d1 = d[..., 0], d[..., 1]
    zero, one = torch.zeros_like(d0), torch.ones_like(d0)
    R = torch.stack(
        [torch.stack([d1, zero, -d0], -1), torch.stack([zero, one, zero], -1), torch.stack([d0, zero, d1], -1)],
        dim=-2,
    )
    centre = torch.stack([c[..., 0], zero, c[..., 1]], dim=-1)
    t = -(R @ centre[..., None])[..., 0]
    return make_transform(R, t)


def project_frustum_params(xyz: torch.Tensor, c: torch.Tensor, d: torch.Tensor, K: torch.Tensor):
    """Cloud-frame points xyz (..., M, 3) through each of the P 3-DoF poses c (..., P, 2), d (..., P, 2)
    (``frustum_params_to_pose``) into the image of K (..., 3, 3): pixels uv (..., P, M, 2) and depths (..., P, M).

    ``project_points(transform_points(frustum_params_to_pose(c, d), xyz[..., None, :, :]), K)`` up to float rounding,
    written out for a rotation about the camera's y axis (a point's camera-frame y is its cloud-frame y): the pose
    searches project every point through every hypothesis, where the general form, its two batched 3 x 3 matmuls
    over 3-vectors, took 5-7 times as long (7.0 against 1.0-1.5 ms for a fine-search grid: 8 x 135 poses, 256 points
    each, 2 threads).
    """
    d = torch.nn.functional.normalize(d, dim=-1)
    d0, d1 = d[..., 0, None], d[..., 1, None]  # (..., P, 1)
    x, z = xyz[..., None, :, 0] - c[..., 0, None], xyz[..., None, :, 2] - c[..., 1, None]  # (..., P, M)
    depth = d0 * x + d1 * z
    inverse = 1 / torch.where(depth.abs() < 1e-6, torch.full_like(depth, 1e-6), depth)  # as project_points
    a, b = (d1 * x - d0 * z) * inverse, xyz[..., None, :, 1] * inverse
    k = K[..., None, None, :2, :]  # (..., 1, 1, 2, 3)
    uv = torch.stack([k[..., i, 0] * a + k[..., i, 1] * b + k[..., i, 2] for i in range(2)], dim=-1)
    return uv, depth


def rotation_6d_to_matrix(x: torch.Tensor) -> torch.Tensor:
    """Continuous 6D rotation representation (..., 6) -> rotation (..., 3, 3).

    The 6 numbers are the first two columns before Gram-Schmidt (Zhou et al., CVPR 2019).
    """
    a1, a2 = x[..., :3], x[..., 3:]
    b1 = torch.nn.functional.normalize(a1, dim=-1)
    b2 = torch.nn.functional.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def matrix_to_rotation_6d(R: torch.Tensor) -> torch.Tensor:
    """Rotation (..., 3, 3) -> its 6D representation (..., 6): the first two columns."""
    return torch.cat([R[..., :, 0], R[..., :, 1]], dim=-1)


def yaw_vector_to_matrix(d: torch.Tensor) -> torch.Tensor:
    """Unit 2-vector d = (-sin yaw, cos yaw) (..., 2) -> rotation about the camera y axis (..., 3, 3)."""
    return frustum_params_to_pose(torch.zeros_like(d), d)[..., :3, :3]


def rotation_to_axis_angle(R: torch.Tensor) -> torch.Tensor:
    """Rotation vectors (..., 3) of rotations (..., 3, 3); the angle comes from atan2, so the
    gradient stays finite near angle 0 (where arccos's does not)."""
    v = torch.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1)
    sin = 0.5 * torch.sqrt((v * v).sum(-1) + 1e-12)
    cos = 0.5 * (R[..., 0, 0] + R[..., 1, 1] + R[..., 2, 2] - 1)
    angle = torch.atan2(sin, cos)
    return v * (angle / (2 * sin))[..., None]
