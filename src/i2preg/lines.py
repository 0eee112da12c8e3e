"""Line alignment: a pose's yaw set by the directions of the scene's horizontal lines (beyond the paper).

Run after the solver with ``eval.refine: lines``. Streets are built of walls, and a wall's horizontal lines (eaves,
window rows, kerbs, fences) run along it. In the image such a line points at its vanishing point on the horizon; in
the cloud the wall's direction is its horizontal tangent. The camera's yaw turns the cloud's wall directions into the image's line directions, so one
yaw lines them up: this searches the yaws within ``window_deg`` of the start's for the one whose wall directions'
vanishing points the most image edges point at. It uses no learning and no colour, only straight edges and flat
walls, which look the same in the synthetic world and in real streets. Within the window a street grid's two
families of walls (90 deg apart) cannot both fit; a yaw flip (180 deg) looks the same to it and stays.

The protocol's 3-DoF poses (a yaw and a planar translation) take the camera's y axis for the cloud's vertical and
the image row through the principal point for the horizon. A real camera leans: a car pitches as it brakes, a road
cambers. Where the cloud's ground (``ground_normal``) leans more than ``level_deg`` in the start camera's frame, the
search runs in the level frame of that ground: the walls' directions taken in it, their vanishing points on its
horizon (on synthetic pairs seen by a camera pitched 2 deg, the search in the camera's own frame came back within 1
deg of yaw on 2 % of the pairs, levelled on 100 %: BENCHMARKS.md). The start's lean is the image's only where its
yaw is right, so the search runs once more from the yaw it finds. The camera is moved sideways with the turn, as if
it turned about a point ``pivot_m`` ahead, by at most ``max_shift_m``: on the registered design pairs a network pose
that looks to the right of the true camera by a yaw e (rad) has its centre 16-18 m times e to the left of the true
one (``metrics.yaw_offsets``, ``metrics.centre_offsets``), the fine search trading a look too far one way for a
camera too far the other that sees the distant points where the true one does.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
import torch
from scipy.spatial import cKDTree

from .errors import InputError
from .geometry import GROUND_MAX_LEAN_DEG, GROUND_TOLERANCE_M, ground_plane
from .refine import yaw_shift

LINE_DEFAULTS: dict[str, Any] = {
    "window_deg": 40.0,  # yaws searched: the start's +- this (under 45: one family of a street grid's walls)
    "step_deg": 0.25,  # the search's step; the peak is then placed between steps by a parabola
    "guard_deg": 3.0,  # local maxima within this of the best belong to its peak
    "direction_step_deg": 0.5,  # the image evidence's directions, read between them linearly (step_deg divides it)
    "blur_px": 1.0,  # Gaussian sigma before the Sobel gradient
    "edge_share": 0.15,  # the image's pixels of the largest gradient magnitude taken as edges
    "vertical_deg": 15.0,  # edges within this of vertical are left out (vertical lines have no horizon point)
    "sigma_deg": 2.0,  # angular tolerance of an edge pointing at a vanishing point
    "neighbours": 12,  # points in each cloud point's neighbourhood for its normal
    "normal_stride": 2,  # a normal at every this-th point of the cloud (its neighbours from all of it)
    "wall_normal_y": 0.3,  # a wall point's unit normal has |y| below this (a vertical surface)
    "planarity": 0.3,  # and its neighbourhood's smallest spread below this times the middle one (flat)
    "view_margin_deg": 45.0,  # wall points within window_deg plus this of the start's optical axis
    "min_wall_points": 200,  # fewer wall normals (one at every normal_stride-th point): the start pose is kept
    "min_peak_ratio": 1.1,  # the best yaw's score over the next local maximum's (above the median): kept below
    "ground_tolerance_m": GROUND_TOLERANCE_M,  # ground_normal: a ground point lies within this of the plane
    "level_deg": 0.5,  # a ground tilted more than this in the start camera's frame levels the search (ground_normal)
    "pivot_m": 17.0,  # the camera turns about a point this far ahead
    "max_shift_m": 0.6,  # by at most this sideways (the fine search's wide grid's lateral reach)
}
"""The ``eval.lines`` settings of ``eval.refine: lines``, chosen on the design pairs (the 100 validation pairs of the
training world, ``dev-seed3``, ``dev-seed4`` and ``varied-dev4``), never on the test set or the real frames
(docs/METHOD.md)."""


def direction_grid(step_deg: float) -> np.ndarray:
    """(P,) radians: the horizontal directions in the camera's x-z plane, modulo 180 deg, [-90, 90) deg in steps."""
    return np.radians(np.arange(-90.0, 90.0, step_deg))


def image_line_evidence(image: torch.Tensor, K: np.ndarray, phis: np.ndarray, conf: dict,
                        level: np.ndarray | None = None) -> np.ndarray:
    """How many of the image's edges point at each horizontal direction's vanishing point: image (3, h, w) RGB in
    [0, 1], K (3, 3), phis (P,) the directions' angles from the optical axis towards the camera's x axis (radians).
    Returns (P,) the sum over edge pixels of a Gaussian (``sigma_deg``) of the angle between the edge and the line
    from the pixel to the vanishing point (its sine, as near the peak). level: (3, 3) the rotation from the camera's
    frame to a level one (``level_rotation``), whose x-z plane the directions then lie in; None: the camera's own."""
    grey = image.mean(0).detach().cpu().numpy().astype(np.float32)
    if conf["blur_px"] > 0:
        grey = cv2.GaussianBlur(grey, (0, 0), conf["blur_px"])
    gu, gv = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    magnitude = np.hypot(gu, gv)
    threshold = max(float(np.quantile(magnitude, 1 - conf["edge_share"])), 1e-3)
    v, u = np.nonzero(magnitude > threshold)
    edge_u, edge_v = -gv[v, u] / magnitude[v, u], gu[v, u] / magnitude[v, u]  # along the edge
    slanted = np.abs(edge_u) > math.sin(math.radians(conf["vertical_deg"]))
    u, v = u[slanted].astype(np.float32), v[slanted].astype(np.float32)
    edge_u, edge_v = edge_u[slanted], edge_v[slanted]
    if level is None:
        f, cx, cy = float(K[0, 0]), float(K[0, 2]), float(K[1, 2])
        sin, cos = np.sin(phis).astype(np.float32)[:, None], np.cos(phis).astype(np.float32)[:, None]
        # towards the vanishing point K (sin, 0, cos) from pixel (u, v), homogeneous: finite also for cos = 0
        to_u = f * sin + (cx - u)[None] * cos  # (P, E) float32
        to_v = (cy - v)[None] * cos
    else:  # the vanishing points K level^T (sin, 0, cos), homogeneous (a, b, c): towards them (a - u c, b - v c)
        directions = level.T @ np.stack([np.sin(phis), np.zeros_like(phis), np.cos(phis)])  # (3, P)
        a, b, c = (K @ directions).astype(np.float32)[:, :, None]  # (P, 1) each
        to_u, to_v = a - u[None] * c, b - v[None] * c  # (P, E) float32
    sine = (edge_u[None] * to_v - edge_v[None] * to_u) / (np.hypot(to_u, to_v) + 1e-9)  # of the angle between
    return np.exp(-0.5 * (sine / math.sin(math.radians(conf["sigma_deg"]))) ** 2).sum(1)


def ground_normal(points: np.ndarray, conf: dict, down: np.ndarray | None = None) -> np.ndarray:
    """(3,) the unit normal, pointing ``down`` (3,) (a unit vector of the cloud's frame; None: its y axis), of a street
    scan's ground (``geometry.ground_plane`` of the cloud (N, 3), within ``ground_tolerance_m``); where no plane
    holds a tenth of the points (a road that climbs or bends over the scan), the walls' vertical
    (``wall_vertical``)."""
    plane = ground_plane(points, down, conf["ground_tolerance_m"])
    if plane is None:
        return wall_vertical(points, conf, np.array([0.0, 1.0, 0.0]) if down is None else np.asarray(down, np.float64))
    return plane[:3]


def wall_vertical(points: np.ndarray, conf: dict, down: np.ndarray) -> np.ndarray:
    """(3,) the unit vector, pointing ``down`` (3,), most nearly perpendicular to the normals of a cloud's (N, 3) walls
    (the smallest eigenvector of the sum of their outer products): walls stand upright, so their normals are level
    whichever way the road runs. Its walls: the flat points of ``flat_normals`` with |n . down| < ``wall_normal_y``;
    ``down`` itself where fewer than ``min_wall_points`` are found or the vertical lies more than
    ``GROUND_MAX_LEAN_DEG`` from it, as ``geometry.ground_plane``'s planes may not."""
    normal, flat = flat_normals(points, conf)
    wall = flat & (np.abs(normal @ down) < conf["wall_normal_y"])
    if wall.sum() < conf["min_wall_points"]:
        return down
    vertical = np.linalg.eigh(normal[wall].T @ normal[wall])[1][:, 0]
    vertical *= np.sign(vertical @ down)
    return vertical if vertical @ down > math.cos(math.radians(GROUND_MAX_LEAN_DEG)) else down


def level_rotation(normal: np.ndarray) -> np.ndarray:
    """(3, 3) the smallest rotation that takes the unit vector ``normal`` (3,) to the y axis (0, 1, 0)."""
    axis = np.cross(normal, [0.0, 1.0, 0.0])
    sine, cosine = np.linalg.norm(axis), float(normal[1])
    if sine < 1e-12:
        return np.eye(3)
    k = axis / sine
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + sine * cross + (1 - cosine) * cross @ cross


def flat_normals(points: np.ndarray, conf: dict) -> tuple[np.ndarray, np.ndarray]:
    """At every ``normal_stride``-th point of a cloud (N, 3): the unit normal (M, 3) of its ``neighbours`` nearest
    points (the direction of their least spread) and whether they spread flat about it (M,) (the least spread under
    ``planarity`` times the middle one)."""
    k = min(conf["neighbours"], len(points))
    if k < 3:
        return np.zeros((0, 3)), np.zeros(0, dtype=bool)
    neighbourhoods = points[cKDTree(points).query(points[::conf["normal_stride"]], k)[1]]  # (N / stride, k, 3)
    centred = neighbourhoods - neighbourhoods.mean(1, keepdims=True)
    spread, axes = np.linalg.eigh(np.einsum("nki,nkj->nij", centred, centred))
    return axes[:, :, 0], spread[:, 0] < conf["planarity"] * spread[:, 1]


def wall_directions(points: np.ndarray, conf: dict) -> np.ndarray:
    """(M,) radians: the horizontal tangent direction, in the x-z plane from the z axis towards x, at each wall
    point of a cloud (N, 3) whose y axis is vertical (a level camera's frame): the flat points of ``flat_normals``
    whose normal has |y| < ``wall_normal_y``."""
    normal, flat = flat_normals(points, conf)
    wall = flat & (np.abs(normal[:, 1]) < conf["wall_normal_y"])
    return np.arctan2(normal[wall, 0], normal[wall, 2]) + math.pi / 2


def yaw_scores(evidence: np.ndarray, walls: np.ndarray, conf: dict) -> np.ndarray:
    """(Y,) for the yaws -window_deg..window_deg in step_deg steps: the image evidence (P,) over
    ``direction_grid(direction_step_deg)``, read linearly between its directions (modulo 180 deg), summed at the
    wall directions (M,) of the start camera's frame once the camera is turned by the yaw (``yaw_shift``: a turn by
    yaw carries a direction at angle a in the x-z plane to a + yaw). Computed on bins of step_deg: each wall split
    linearly between its two bins, the evidence read at the bins, one gather a yaw; exact (up to rounding) where
    step_deg divides direction_step_deg, window_deg and 180 (``checked_steps``)."""
    step = conf["step_deg"]
    bins, half = round(180 / step), round(conf["window_deg"] / step)
    at_bins = np.interp(np.arange(bins) * step, np.arange(len(evidence)) * conf["direction_step_deg"], evidence,
                        period=180)  # bin b is direction -90 + b * step deg, as direction_grid's
    position = (np.degrees(walls) + 90) / step % bins
    below = np.floor(position).astype(np.int64)
    weight = position - below
    walls_at_bins = np.bincount(below % bins, 1 - weight, bins) + np.bincount((below + 1) % bins, weight, bins)
    return at_bins[(np.arange(bins)[None] + np.arange(-half, half + 1)[:, None]) % bins] @ walls_at_bins


def checked_steps(conf: dict) -> dict:
    """``conf`` (the ``eval.lines`` settings) if step_deg divides direction_step_deg, window_deg and 180, else an
    InputError."""
    def whole(span: float, step: float) -> bool:
        return step > 0 and abs(span / step - round(span / step)) <= 1e-9

    step = conf["step_deg"]
    for name in ("direction_step_deg", "window_deg"):
        if not whole(conf[name], step):
            raise InputError(f"eval.lines.{name} ({conf[name]}) must be a whole number of step_deg ({step})")
    if not (whole(180, step) and whole(180, conf["direction_step_deg"])):
        raise InputError(f"eval.lines.step_deg ({step}) and direction_step_deg ({conf['direction_step_deg']}) must"
                         " divide 180")
    return conf


def peak(scores: np.ndarray, guard_steps: int) -> tuple[int, float, float]:
    """The best of ``scores`` (Y,): its index, its offset from that index in steps (a parabola through it and its
    neighbours) and its ratio over the best interior local maximum more than ``guard_steps`` away, both above the
    median (infinity where there is none). The caller keeps the start for a peak at the window's edge."""
    best = int(scores.argmax())
    offset = 0.0
    if 0 < best < len(scores) - 1:
        left, middle, right = scores[best - 1:best + 2]
        curvature = left - 2 * middle + right
        offset = float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5)) if curvature < 0 else 0.0
    median = float(np.median(scores))
    local = np.zeros(len(scores), dtype=bool)
    local[1:-1] = (scores[1:-1] >= scores[:-2]) & (scores[1:-1] >= scores[2:])
    local[np.abs(np.arange(len(scores)) - best) <= guard_steps] = False
    second = float(scores[local].max()) if local.any() else median
    ratio = (scores[best] - median) / (second - median) if second > median else math.inf
    return best, offset, ratio


def line_evidence(images: torch.Tensor, Ks: torch.Tensor, conf: dict | None = None) -> torch.Tensor:
    """``image_line_evidence`` over a batch, for runs of one input that align several poses: images (B, 3, h, w) RGB
    in [0, 1], Ks (B, 3, 3) -> (B, P) float64 over ``direction_grid(direction_step_deg)``, on the images' device."""
    conf = checked_steps({**LINE_DEFAULTS, **(conf or {})})
    phis = direction_grid(conf["direction_step_deg"])
    evidence = [image_line_evidence(i, k.detach().double().cpu().numpy(), phis, conf) for i, k in zip(images, Ks)]
    return torch.from_numpy(np.stack(evidence).astype(np.float64)).to(images.device)


def best_yaw(image: torch.Tensor, K: torch.Tensor, cloud: np.ndarray, start: np.ndarray, normal: np.ndarray,
             conf: dict, evidence: torch.Tensor | None) -> tuple[float | None, bool]:
    """The yaw (rad) within ``window_deg`` of the start (4, 4, cloud -> camera, float64) that lines the cloud's (N, 3)
    walls up with the image's edges, or None where the start is to be kept (``align_yaw``'s guards); and whether the
    search ran in a level frame, the ground (``normal`` (3,), cloud frame) tilted more than ``level_deg`` in the start
    camera's. evidence: the image's ``line_evidence`` (P,) for a level camera, or None to compute it."""
    camera = cloud @ start[:3, :3].T + start[:3, 3]  # the start camera's frame
    level = level_rotation(start[:3, :3] @ normal)
    tilted = math.degrees(math.acos(min(1.0, float(level[1, 1])))) > conf["level_deg"]
    if tilted:
        camera = camera @ level.T  # a level frame: the ground's normal its y axis
    bearing = np.degrees(np.arctan2(camera[:, 0], camera[:, 2]))
    walls = wall_directions(camera[np.abs(bearing) < conf["window_deg"] + conf["view_margin_deg"]], conf)
    if len(walls) < conf["min_wall_points"]:
        return None, tilted
    if tilted:
        phis = direction_grid(conf["direction_step_deg"])
        evidence = torch.from_numpy(image_line_evidence(image, K.detach().double().cpu().numpy(), phis, conf, level))
    elif evidence is None:
        evidence = line_evidence(image[None], K[None], conf)[0]
    scores = yaw_scores(evidence.cpu().numpy(), walls, conf)
    best, offset, ratio = peak(scores, round(conf["guard_deg"] / conf["step_deg"]))
    if best in (0, len(scores) - 1) or ratio < conf["min_peak_ratio"]:
        return None, tilted
    return math.radians(-conf["window_deg"] + (best + offset) * conf["step_deg"]), tilted


def align_yaw(image: torch.Tensor, K: torch.Tensor, points: torch.Tensor, pose: torch.Tensor,
              conf: dict | None = None, evidence: torch.Tensor | None = None,
              normal: torch.Tensor | None = None) -> torch.Tensor:
    """One pair. image (3, h, w) RGB in [0, 1] with intrinsics K (3, 3); points (N, 3) the dense cloud in the cloud's
    frame; pose (4, 4) cloud -> camera, the start (module docstring). Returns the pose (4, 4), cloud -> camera, in the
    start's dtype, turned by ``yaw_shift`` to the yaw within ``window_deg`` that lines the cloud's walls up with the
    image's edges (``best_yaw``), and shifted along the camera's x axis by -``pivot_m`` times the yaw's sine (at most
    ``max_shift_m`` either way: the camera turned about a point ``pivot_m`` ahead); the start itself when fewer than
    ``min_wall_points`` wall normals lie in the window's view, the best yaw lies at the window's edge, or it is not
    ``min_peak_ratio`` times clearer than the next. Where the cloud's ground (``ground_normal``) leans more than
    ``level_deg`` in the start camera's frame, the search runs in a level frame, and once more from the yaw it finds
    (the turn about the camera's y axis moves the lean). evidence: (P,) the image's ``image_line_evidence``
    (``line_evidence``) for a level camera, or None to compute it where needed; normal: (3,) the cloud's
    ``ground_normal`` (``ground_normals``), or None to compute it; where it lies more than 25 deg from the start
    camera's y axis (a cloud frame that is not level, as a LiDAR's own with z up), the ground is found about that
    axis instead."""
    conf = checked_steps({**LINE_DEFAULTS, **(conf or {})})
    start = pose.detach().double().cpu().numpy()
    cloud = points.detach().double().cpu().numpy()
    down = start[1, :3]  # the start camera's y axis in the cloud's frame
    normal = None if normal is None else normal.detach().double().cpu().numpy()
    if normal is None or normal @ down < math.cos(math.radians(GROUND_MAX_LEAN_DEG)):  # a cloud frame not level
        normal = ground_normal(cloud, conf, down)
    yaw, tilted = best_yaw(image, K, cloud, start, normal, conf, evidence)
    if yaw is None:
        return pose
    if tilted:
        again, _ = best_yaw(image, K, cloud, yaw_shift(yaw, 0.0).numpy() @ start, normal, conf, evidence)
        yaw += again or 0.0
    shift = float(np.clip(-conf["pivot_m"] * math.sin(yaw), -conf["max_shift_m"], conf["max_shift_m"]))
    return (yaw_shift(yaw, shift) @ torch.from_numpy(start)).to(pose)


def ground_normals(clouds: list[torch.Tensor], conf: dict | None = None) -> torch.Tensor:
    """``ground_normal`` over a batch, for runs of one input that align several poses: B dense clouds (N_b, 3) ->
    (B, 3) float64, on the first cloud's device."""
    conf = {**LINE_DEFAULTS, **(conf or {})}
    normals = [ground_normal(c.detach().double().cpu().numpy(), conf) for c in clouds]
    return torch.from_numpy(np.stack(normals)).to(clouds[0].device)


def align_poses(images: torch.Tensor, Ks: torch.Tensor, clouds: list[torch.Tensor], poses: torch.Tensor,
                conf: dict | None = None, evidence: torch.Tensor | None = None,
                normals: torch.Tensor | None = None) -> torch.Tensor:
    """``align_yaw`` over a batch: images (B, 3, h, w), Ks (B, 3, 3), clouds B dense clouds (N_b, 3), poses
    (B, 4, 4) -> (B, 4, 4); evidence (B, P): the images' ``line_evidence`` and normals (B, 3) the clouds'
    ``ground_normals`` (None: each computed where needed)."""
    evidence = [None] * len(images) if evidence is None else evidence
    normals = [None] * len(images) if normals is None else normals
    return torch.stack([align_yaw(i, k, c, p, conf, e, n)
                        for i, k, c, p, e, n in zip(images, Ks, clouds, poses, evidence, normals)])
