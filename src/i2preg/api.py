"""The public API: a trained model in three lines.

    reg = i2preg.Registrator.from_pretrained()       # the bundled weights, or a path
    result = reg.register(image, points, K)          # NumPy or torch, any image size
    result.pose                                      # (4, 4) camera-from-points

Frames. ``points`` are in their own frame (the cloud frame); ``pose`` maps them into the frame of the
camera that took ``image``: ``u ~ K (R p + t)`` with the caller's ``K``. The network sees the image
resized by s and centre-cropped to its input size; both change only the intrinsics
(``K_model = C S K`` with S, C pixel-grid maps), never the camera frame, so the pose it predicts for its
input is the pose of the original image too. A 3-DoF model (the benchmark protocol, and the bundled
model) predicts yaw about the camera's y axis and a planar translation: it expects a cloud frame whose
y axis points down like the camera's and whose origin is at camera height, within about 10 m of it: the
Registrator's ``cloud_axes`` turns a cloud in other axes (a LiDAR's own, z up) into them, and a cloud that does not
look so gets a warning (``_check_level_frame``).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .assembly import full_config, load_model
from .data.collate import Collate, first_draws
from .data.ops import distinct_indices, sample_indices, voxel_downsample
from .data.pairs import pair_config, redrawn, resize_and_crop
from .data.readers import (
    MAX_COORDINATE_M,
    is_rotation,
    read_calibration_file,
    read_image_file,
    read_point_cloud,
    read_pose_file,
    undistort_image,
)
from .errors import InputError, require_output_folder
from .export import OnnxNetwork, export_onnx
from .files import write_text
from .geometry import invert_transform, project_pose, rotation_angle, sample_perturbation, scan_origin, transform_points
from .inference import checked_draws, checked_refinement, infer, search_scores, to_device
from .lines import ground_normals, line_evidence
from .metrics import registration_errors, success
from .model.icl import ICL
from .weights import resolve_weights

SAMPLE_SEED = 0
"""Seed of the fixed-size point sample: the same call always sees the same points."""

TRAFFIC_SIDES = ("right", "left", "auto")
"""The side of the street a scene's traffic keeps to (``Registrator``'s ``traffic``), or "auto" where it is not known.
i2preg's synthetic world, and so every model trained on it, keeps to the right, as KITTI's Germany and nuScenes'
Boston do."""

PRIOR_YAW_DEG = 30.0
"""How far (degrees) the yaw search may look from a prior pose's yaw, by default (``Registrator.register``'s
``prior_yaw_deg``): room for a rough heading, as odometry or a compass gives one (BENCHMARKS.md, "Real frames",
measures 10, 30 and 60)."""

LOW_CONFIDENCE = 0.4
"""A ``RegistrationResult.confidence`` below this says the pose is likely wrong: 90 % of the bundled model's registered
validation pairs score 0.45 or more, and 28 of its 31 failed registrations of the real sample frames score less
(BENCHMARKS.md, "Real frames"). A confidence above it is no guarantee."""

REFINED_TURN_DEG = 5.0
"""A refinement (``Registrator(refine=...)``) that turns the network's pose by more than this (the Acc threshold of
RRE) leaves the confidence, which judges the network's keypoints against the final pose, without a say: ICLM read
them about the pose before the turn."""

MIRROR = np.diag([-1.0, 1.0, 1.0, 1.0])
"""x -> -x: the reflection of a camera frame, and of a 3-DoF cloud frame (y down), that mirrors a scene."""

AXIS_DIRECTIONS = {"r": (0, 1.0), "l": (0, -1.0), "d": (1, 1.0), "u": (1, -1.0), "f": (2, 1.0), "b": (2, -1.0)}
"""A cloud axis's direction letter (right, left, down, up, forward, back) -> the camera-like axis (x right, y down,
z forward) it points along, and its sign (``cloud_axes_rotation``)."""


def cloud_axes_rotation(axes: str) -> np.ndarray:
    """The rotation (4, 4) that takes a cloud whose x, y and z axes point along ``axes`` (three letters of r, l, d, u,
    f, b: right, left, down, up, forward, back) into the camera-like axes a 3-DoF model expects (x right, y down, z
    forward): "rdf" is the identity, "flu" a LiDAR's frame with x forward, y left, z up (KITTI, ROS), "rfu" nuScenes'
    LiDAR's. Axes that are not a right-handed frame are an error."""
    letters = axes.lower()
    if len(letters) != 3 or any(letter not in AXIS_DIRECTIONS for letter in letters):
        raise InputError(f"cloud axes must be three letters of r, l, d, u, f, b (e.g. rdf, flu), not {axes!r}")
    rotation = np.eye(4)
    rotation[:3, :3] = 0.0
    for column, letter in enumerate(letters):
        row, sign = AXIS_DIRECTIONS[letter]
        rotation[row, column] = sign
    if not np.isclose(np.linalg.det(rotation), 1.0):
        raise InputError(f"cloud axes {axes!r} are not a right-handed frame (each of right/left, down/up, "
                         "forward/back once, as in rdf or flu)")
    return rotation

Tensorish = np.ndarray | torch.Tensor


@dataclass
class RegistrationResult:
    """The registration of one image to one cloud; float64 NumPy arrays.

    pose: (4, 4) cloud frame -> camera frame of the ORIGINAL image (project with the caller's K).
    frustum_pose: (4, 4) GPDM's coarse pose, same frames. With point draws both poses are the consensus of the
        draws', and the keypoints and the overlap mask the first draw's.
    keypoints_2d: (Nq, 2) the implicit correspondences' pixels, ORIGINAL image pixels (u, v).
    keypoints_3d: (Nq, 3) their 3D partners, cloud frame.
    overlap_mask: (N,) bool over the input points: in front of the camera and inside the original
        image when projected with ``frustum_pose`` and the caller's K (GPDM's geometric mask); False for
        the points left out for NaN or inf.
    confidence: in [0, 1], how well the correspondences agree with ``pose``
        (``inference.reprojection_confidence``, on the network input's pixels; with point draws, the mean over
        the draws' correspondences).
    info: ``resampled`` (fewer points than the model takes after voxelising: some were repeated),
        ``scale`` (image resize factor), ``crop_offset`` (dx, dy) in resized pixels, ``K_model`` (3, 3)
        intrinsics of the network input, ``seconds`` (wall time of the call; the whole batch for
        ``register_batch``), ``point_draws`` and ``draws_agreeing`` (how many of the draws of the point sample agree
        with ``pose``: ``Registrator(point_draws=...)``), ``refined_turn_deg`` (with ``Registrator(refine=...)``: the
        rotation angle between the solver's pose and ``pose``), ``traffic`` (the side of the street the network
        was shown, "left" for the mirror images: ``Registrator(traffic=...)``), and ``runs`` where the Registrator
        runs the network more than once (``traffic="auto"``, ``yaw_sectors``): ``poses`` (R, 4, 4) every run's final
        pose, caller's frames, in the order run (the free run as given, its yaw sectors, then the mirror images' the
        same), ``support`` (R,) how many runs reach each one's yaw (``run_support``), ``search_scores`` (R,) and
        ``chosen``, the index of ``pose``'s run: the alternatives, for a caller with a cue of its own (odometry,
        a compass, a map) to choose among.
    """

    pose: np.ndarray
    frustum_pose: np.ndarray
    keypoints_2d: np.ndarray
    keypoints_3d: np.ndarray
    overlap_mask: np.ndarray
    confidence: float
    info: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        rows = "\n".join(" ".join(f"{x: .6f}" for x in row) for row in self.pose)
        text = f"pose (camera from points):\n{rows}\nconfidence: {self.confidence:.3f}"
        turn = self.info.get("refined_turn_deg", 0.0)
        if turn > REFINED_TURN_DEG:
            text += (f" (of the network's keypoints, read about its pose before the refinement turned it by"
                     f" {turn:.1f} deg: it does not judge this pose)")
        elif self.confidence < LOW_CONFIDENCE:
            text += f" (below {LOW_CONFIDENCE}: the pose is likely wrong)"
        draws, agreeing = self.info.get("point_draws", 1), self.info.get("draws_agreeing", 1)
        if draws > 1:
            text += f"\npoint draws: {agreeing} of {draws} agree with the pose"
            if agreeing < draws - 1:
                text += " (more than one disagrees: the pose may be wrong)"
        if "protocol" in self.info:
            p = self.info["protocol"]
            text += (f"\nprotocol check (seed {p['seed']}): RTE {p['rte']:.3f} m, RRE {p['rre']:.2f} deg"
                     f" (geodesic {p['rre_geodesic']:.2f}), {'success' if p['success'] else 'failure'}")
        return text


@dataclass
class _Prepared:
    """One input after preprocessing: the network samples (one a draw of the points, ``Registrator.point_draws``)
    and what is needed to map results back."""

    samples: list[dict[str, Any]]
    mirrored: bool  # the network sees the mirror images of the inputs (``Registrator.to_network``)
    points: np.ndarray  # (N, 3) input points in the network's cloud frame
    finite: np.ndarray  # (N,) bool: the points without NaN or inf, those used
    K: np.ndarray  # (3, 3) caller's intrinsics (of the mirror image when mirrored)
    K_model: np.ndarray  # (3, 3) intrinsics of the network input
    size: tuple[int, int]  # (H, W) of the caller's image
    scale: float
    crop_offset: tuple[int, int]


def _numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, (str, os.PathLike)):
        raise InputError(f"{name} must be an array, not a path: i2preg.api.register_files reads files (and "
                         "i2preg.data.readers each kind)", x)
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        array = np.asarray(x)
    except (TypeError, ValueError) as err:
        raise InputError(f"{name} is not an array ({err})") from None
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise InputError(f"{name} must be numeric, got dtype {array.dtype}")
    return array


def _check_image(image: Tensorish) -> np.ndarray:
    """(H, W, 3) uint8, or float32 in [0, 1]; a torch image is (3, H, W)."""
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise InputError(f"a torch image must be (3, H, W), got {tuple(image.shape)}")
        image = image.permute(1, 2, 0)
    image = _numpy(image, "image")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"image must be (H, W, 3) RGB, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image
    if not np.issubdtype(image.dtype, np.floating):
        raise InputError(f"image must be uint8 or float in [0, 1], got {image.dtype}")
    bad = int((~np.isfinite(image)).any(-1).sum())
    if bad:
        raise InputError(f"image has NaN or inf in {bad} pixels")
    if image.min() < 0 or image.max() > 1:
        raise InputError(f"a float image must be in [0, 1], got values in [{image.min():g}, {image.max():g}]")
    return image.astype(np.float32)


def _check_points(points: Tensorish, intensity: Tensorish | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, 3) xyz, (N,) intensity (the argument, else the 4th column of ``points``, else zeros) and (N,) bool:
    the rows to use. Rows with NaN or inf (an organised cloud's missing returns) are left out with a warning
    that gives their count; a cloud with no other row, or with coordinates beyond ``MAX_COORDINATE_M``, is an
    error."""
    points = _numpy(points, "points").astype(np.float64)
    if points.ndim != 2 or points.shape[1] not in (3, 4):
        raise InputError(f"points must be (N, 3) or (N, 4), got shape {points.shape}")
    if len(points) == 0:
        raise InputError("points: empty cloud (0 points)")
    if intensity is None:
        intensity = points[:, 3] if points.shape[1] == 4 else np.zeros(len(points))
    intensity = _numpy(intensity, "intensity").astype(np.float64)
    if intensity.shape != (len(points),):
        raise InputError(f"intensity must be ({len(points)},), got shape {intensity.shape}")
    finite = np.isfinite(points).all(1) & np.isfinite(intensity)
    if not finite.any():
        raise InputError(f"points: all {len(points)} rows hold NaN or inf")
    reach = np.abs(points[finite, :3]).max()
    if reach > MAX_COORDINATE_M:
        raise InputError(f"points: coordinates reach {reach:.3g} m, beyond {MAX_COORDINATE_M:,.0f} m: pass the cloud in "
                         "metres about the camera (subtract an origin near it)")
    if not finite.all():
        warnings.warn(f"points: left out {int((~finite).sum())} of {len(points)} rows holding NaN or inf", stacklevel=4)
    return points[:, :3], intensity, finite


FLAT_AXIS_RATIO = 0.5
"""``_check_level_frame`` warns where the cloud's spread along y (between its quartiles) exceeds this fraction of its
spread along x or z. Street scans in the frame a 3-DoF model expects spread along y at most 0.10 times as much as along
the flatter of x and z (every fifth pair of the synthetic test and design sets), 0.06-0.28 times (the real KITTI and
nuScenes frames moved into their camera's frame); the same real scans in their LiDAR's frame, z up, 3.6-20 times."""


LEVEL_CHECK_POINTS = 20_000
"""How many points ``_check_level_frame`` reads at most (every k-th): quartiles and median need no more."""


def _check_level_frame(xyz: np.ndarray) -> None:
    """Warn (one line) where the cloud xyz (N, 3) does not look like a street scan in the frame a 3-DoF model
    expects, y pointing down like the camera's and the origin at camera height: spread along y beyond
    ``FLAT_AXIS_RATIO`` of x's or z's (a frame with another up axis, as a LiDAR's own with z up), or most points above
    the origin (y up, or the origin under the ground). A street scan's ground holds most of its points. Read on every
    k-th point, at most about ``LEVEL_CHECK_POINTS``."""
    xyz = xyz[:: max(1, len(xyz) // LEVEL_CHECK_POINTS)]
    lower, upper = np.percentile(xyz, [25, 75], axis=0)
    x, y, z = upper - lower
    if y > FLAT_AXIS_RATIO * min(x, z):
        warnings.warn(f"points: the cloud spreads {x:.1f}, {y:.1f} and {z:.1f} m along x, y and z (between quartiles): "
                      "a 3-DoF model expects y pointing down like the camera's, the ground flat in x and z; say where "
                      "the cloud's axes point (cloud_axes, i2preg register --cloud-axes: flu for a LiDAR's x forward, "
                      "y left, z up)", stacklevel=4)
    elif (height := np.median(xyz[:, 1])) < 0:
        warnings.warn(f"points: most of the cloud lies above its origin (median y {height:.2f} m): a 3-DoF model "
                      "expects y pointing down like the camera's and the origin at the camera's height", stacklevel=4)


def _check_K(K: Tensorish) -> np.ndarray:
    K = _numpy(K, "K").astype(np.float64)
    if K.shape != (3, 3):
        raise InputError(f"K must be (3, 3), got shape {K.shape}")
    if not np.isfinite(K).all():
        raise InputError("K has NaN or inf")
    if not np.allclose(K[2], [0, 0, 1]) or K[0, 0] <= 0 or K[1, 1] <= 0 or np.linalg.det(K) <= 0:
        raise InputError(f"K is not a camera matrix (need fx, fy > 0, det > 0, last row 0 0 1): {K.tolist()}")
    return K


def _mirrored_K(K: np.ndarray, width: int) -> np.ndarray:
    """The intrinsics (3, 3) of the mirror image (u -> width - 1 - u) of a width-wide image with K, for the
    mirrored camera frame (x -> -x)."""
    mirrored = K.copy()
    mirrored[0, 1], mirrored[0, 2] = -K[0, 1], width - 1 - K[0, 2]
    return mirrored


VOTE_YAW_DEG = 5.0
"""Runs of the network whose final yaws lie within this of each other agree (``chosen_run``); the RRE threshold of
Acc."""


def pose_yaws(poses: np.ndarray) -> np.ndarray:
    """The yaws (deg) of level poses (..., 4, 4), cloud -> camera, as the pose search counts them
    (``pose_search.vector_yaws`` of d = (R[2, 0], R[0, 0])) -> (...,)."""
    return np.degrees(np.arctan2(-poses[..., 2, 0], poses[..., 0, 0]))


def yaw_gaps(yaws_deg: np.ndarray, other_deg: np.ndarray | float) -> np.ndarray:
    """|yaws - other| (deg) around the circle, in [0, 180], broadcast."""
    return np.abs((yaws_deg - other_deg + 180.0) % 360.0 - 180.0)


def run_yaw(prepared: _Prepared, pose: np.ndarray) -> float:
    """The yaw (deg) of a run's final pose (4, 4) in the network's frame, as seen in the unmirrored one (a mirror
    image's yaw negated): the yaw ``chosen_run`` compares between runs."""
    yaw = float(pose_yaws(pose))
    return -yaw if prepared.mirrored else yaw


def sector_priors(sectors: int) -> list[torch.Tensor]:
    """The pose search's priors (yaw, tolerance) in radians, (2,) float32 each, that hold it to each of ``sectors``
    equal sectors of the yaw circle in turn (``Registrator``'s ``yaw_sectors``): the sector's middle yaw 2 pi k / S
    and half its width, a hair more so that the sectors meet."""
    return [torch.tensor([2 * np.pi * k / sectors, np.pi / sectors + 1e-6], dtype=torch.float32) for k in range(sectors)]


def run_support(yaws_deg: np.ndarray) -> np.ndarray:
    """(R,) int64: for each of an input's R runs (yaws (R,) deg, ``run_yaw``), how many of them reach its yaw within
    ``VOTE_YAW_DEG``, itself included."""
    return (yaw_gaps(yaws_deg[:, None], yaws_deg[None, :]) < VOTE_YAW_DEG).sum(1)


def chosen_run(yaws_deg: np.ndarray, scores: np.ndarray, prior: tuple[float, float] | None = None) -> int:
    """Of an input's R runs of the network (yaws (R,) deg, ``run_yaw``; scores (R,) ``inference.search_scores``), the
    index of the one whose yaw the most runs reach within ``VOTE_YAW_DEG`` (``run_support``), of those the one scored
    highest, and of those the first. Runs held to the wrong yaw sectors end scattered at their sectors' edges, while
    those that can reach the pose the network finds best converge on it; with two runs that disagree, the score
    decides. prior: (yaw, tolerance) in degrees, a prior pose's: only the runs whose yaws lie within the tolerance of
    it take part (the vote counted among them), and where none does, the run nearest it is kept."""
    candidates = np.arange(len(yaws_deg))
    if prior is not None:
        gap = yaw_gaps(yaws_deg, prior[0])
        candidates = np.flatnonzero(gap <= prior[1])
        if not len(candidates):
            return int(np.argmin(gap))
    support = run_support(yaws_deg[candidates])
    best = candidates[support == support.max()]
    return int(best[np.argmax(scores[best])])


class Registrator:
    """A trained ICL model with the protocol's preprocessing: images of any size, clouds of any size.

    model: an ``ICL``; config: the full config it was trained with (its ``data`` section gives the image
    scale, the voxel size and the network input: ``crop`` and ``num_points``). backend: what runs the network:
    "torch" (the model itself), "onnx" (the model exported now, in memory, and run by ONNX Runtime on CPU; the
    export takes minutes) or the path of an .onnx file ``i2preg export`` wrote from the same weights. refine:
    "edges" refines each pose by edge alignment on the input cloud (``refine.py``), "lines" sets its yaw by the
    directions of the cloud's walls and the image's horizontal lines (``lines.py``), both beyond the paper; "none" does
    neither; None: the config's ``eval.refine`` (with ``yaw_sectors``, "lines"). traffic: the side of the street the
    scenes' traffic keeps to (``TRAFFIC_SIDES``); the model learned a right-hand world and its yaw search reads the
    street's asymmetry, so "left" registers the mirror images of the inputs (image flipped left to right, the cloud's x
    negated) and mirrors the results back: the same pose, keypoints and mask frames as "right". "auto" registers each
    input both ways and keeps the result whose fine search scored its best hypothesis higher (``search_scores``; twice
    the network's time; needs the PyTorch backend and a model with the fine search). cloud_axes: where the cloud's x, y
    and z point (``cloud_axes_rotation``; "flu" for a LiDAR's frame with z up): the cloud is turned into the
    camera-like axes a 3-DoF model expects before registration, and the results come back in the cloud's frame.
    point_draws: run the network on that many draws of the cloud's point sample and take the consensus of their
    poses (``inference``, beyond the paper: more accurate on scenes like the training world's, less so on the real
    frames, BENCHMARKS.md; a batch of that many rows an input, the image encoded once with the PyTorch backend); None:
    the config's ``eval.point_draws``. yaw_sectors: S > 0 runs the network S times more, with GPDM's yaw search held
    to each of S equal sectors of the yaw circle in turn (within 180 / S deg of the sector's middle), and keeps the
    run that the most runs agree with (``chosen_run``; beyond the paper, docs/METHOD.md): for scenes unlike the
    training world (it registers more real frames and keeps nearly all of the training world's, BENCHMARKS.md), with
    ``refine="lines"``, which brings the runs onto the same yaws and is its refinement when ``refine`` is None. The
    runs share one pass of the encoders (``ICL.encode``), the images' line evidence (``lines.line_evidence``) and the
    clouds' ground (``lines.ground_normals``); the rest of the network and the refinement run S + 1 times.
    With a prior pose (``register``) the runs are not held to it: it chooses between them. Needs the PyTorch backend
    and a model with the fine search. single_sweep: the cloud is one sweep of a spinning LiDAR beside the camera
    (the benchmark protocol's clouds; a rig whose extrinsic is unknown): GPDM's pose search looks about the sweep's
    origin (``geometry.scan_origin`` of the network's point sample; an ``InputError`` where it finds none) in place of
    the centre GPDM regresses (beyond the paper, docs/METHOD.md; with ``yaw_sectors`` it registers more real frames,
    BENCHMARKS.md); needs the PyTorch backend and a model with the pose search.
    """

    def __init__(self, model: ICL, config: dict | None = None, device: str | torch.device = "cpu",
                 backend: str | os.PathLike = "torch", refine: str | None = None, traffic: str = "right",
                 cloud_axes: str = "rdf", point_draws: int | None = None, yaw_sectors: int = 0,
                 single_sweep: bool = False):
        if traffic not in TRAFFIC_SIDES:
            raise InputError(f"traffic must be one of {', '.join(TRAFFIC_SIDES)}, not {traffic!r}")
        self.mirror_runs = {"right": (False,), "left": (True,), "auto": (False, True)}[traffic]
        self.cloud_axes = cloud_axes_rotation(cloud_axes)
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.config = config
        data = pair_config(config)
        self.image_scale, self.voxel = float(data["image_scale"]), float(data["voxel"])
        self.image_size = tuple(data["crop"])  # (h, w)
        self.num_points = int(data["num_points"])
        self.dense_points = int(data["dense_points"])
        self.eval_config = full_config(config or {})["eval"]  # its refine, edges and lines: ``inference.solve``
        if refine is None and yaw_sectors:  # the sectors' vote counts on the lines to bring its runs together
            refine = "lines"
        if refine is not None:
            self.eval_config["refine"] = checked_refinement(refine)
        if point_draws is not None:
            self.eval_config["point_draws"] = point_draws
        self.point_draws = checked_draws(self.eval_config["point_draws"])
        self.collate = Collate(model.conf, knn_workers=-1)  # collates between network batches, on every core
        self.network = self.model
        if backend != "torch":
            if self.device.type != "cpu":
                raise InputError(f"the ONNX backend runs on the CPU, not on {self.device}")
            source = export_onnx(self.model, None, self.image_size, self.num_points) if backend == "onnx" else backend
            self.network = OnnxNetwork(source, self.model)
        if isinstance(yaw_sectors, bool) or not isinstance(yaw_sectors, int) or yaw_sectors < 0:
            raise InputError(f"yaw_sectors must be a whole number of at least 0, not {yaw_sectors!r}")
        self.yaw_sectors = yaw_sectors
        if (traffic == "auto" or yaw_sectors) and (self.network is not self.model or self.model.fine is None):
            raise InputError("traffic auto and yaw sectors compare the fine search's scores: they need the PyTorch"
                             " backend and a model with the fine search (model.fine.num_points > 0)")
        self.single_sweep = bool(single_sweep)
        if self.single_sweep and (self.network is not self.model or self.model.gpdm.search is None):
            raise InputError("single_sweep holds GPDM's pose search about the sweep's origin: it needs the PyTorch"
                             " backend and a model with the pose search (model.gpdm.yaw_bins > 0)")

    def to_network(self, mirrored: bool) -> tuple[np.ndarray, np.ndarray]:
        """The frames the network sees, (4, 4) each: camera' = camera_to_network camera, cloud' = cloud_to_network
        cloud, so that a pose T (cloud -> camera) is camera_to_network^-1 T' cloud_to_network (both matrices their own
        inverse's transpose: signs and a permutation); mirrored: of the mirror images."""
        camera_to_network = MIRROR if mirrored else np.eye(4)
        return camera_to_network, camera_to_network @ self.cloud_axes

    def to_caller(self, p: _Prepared, pose: np.ndarray) -> np.ndarray:
        """A pose (4, 4) in the network's frames for the prepared input ``p`` -> the caller's frames:
        camera_to_network^-1 T' cloud_to_network (``to_network``)."""
        camera_to_network, cloud_to_network = self.to_network(p.mirrored)
        return camera_to_network.T @ pose @ cloud_to_network

    @classmethod
    def from_pretrained(cls, path_or_name: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                        backend: str | os.PathLike = "torch", refine: str | None = None,
                        traffic: str = "right", cloud_axes: str = "rdf", point_draws: int | None = None,
                        yaw_sectors: int = 0, single_sweep: bool = False) -> Registrator:
        """Weights written by ``i2preg train`` (safetensors, config in the header): a file, or the name of a bundled
        model (None: ``synthetic-small``); backend, refine, traffic, cloud_axes, point_draws, yaw_sectors and
        single_sweep: as for the constructor."""
        path = resolve_weights(path_or_name)
        model, config = load_model(path)
        if not isinstance(model, ICL):
            raise InputError(f"{config['method']} weights: the Registrator runs ICL; compare them with i2preg compare",
                             path)
        return cls(model, config, device, backend, refine, traffic, cloud_axes, point_draws, yaw_sectors,
                   single_sweep)

    def register(self, image: Tensorish, points: Tensorish, K: Tensorish, intensity: Tensorish | None = None,
                 prior_pose: Tensorish | None = None, prior_yaw_deg: float = PRIOR_YAW_DEG) -> RegistrationResult:
        """Register one image to one cloud.

        image: (H, W, 3) uint8 RGB or float in [0, 1] (NumPy), or a (3, H, W) tensor; any size that
        covers the network input. points: (N, 3) or (N, 4) (x, y, z, intensity) in the cloud frame;
        rows with NaN or inf (missing returns) are left out with a warning. K: (3, 3) intrinsics of ``image``. intensity: (N,), overrides the
        4th column (used only by models configured with ``use_intensity``).
        prior_pose: (4, 4) cloud -> camera, a guess of the pose (from odometry, a compass, the last frame's pose),
        or None. Only its yaw is used: GPDM's pose search then considers only the yaws within ``prior_yaw_deg``
        of it (the searches after it may move the yaw a few degrees further); the rest of the pose is found
        as without it. With ``yaw_sectors`` the searches run as without it, and of the runs those whose yaws lie within
        ``prior_yaw_deg`` of the prior's are chosen between (``chosen_run``). Needs the PyTorch backend and a model
        with the pose search (the bundled one).
        """
        return self.register_batch([image], [points], [K], None if intensity is None else [intensity],
                                   None if prior_pose is None else [prior_pose], prior_yaw_deg)[0]

    def register_batch(self, images: Sequence[Tensorish], clouds: Sequence[Tensorish], Ks: Sequence[Tensorish],
                       intensities: Sequence[Tensorish | None] | None = None,
                       prior_poses: Sequence[Tensorish] | None = None,
                       prior_yaw_deg: float = PRIOR_YAW_DEG) -> list[RegistrationResult]:
        """``register`` for B inputs in one network batch; images may differ in size, clouds in length; prior_poses:
        one for each input, or None."""
        start = time.perf_counter()
        if not len(images) == len(clouds) == len(Ks) or intensities is not None and len(intensities) != len(images):
            raise InputError(f"need as many images, clouds and Ks (got {len(images)}, {len(clouds)}, {len(Ks)})")
        if prior_poses is not None and len(prior_poses) != len(images):
            raise InputError(f"need a prior pose for each of the {len(images)} images (got {len(prior_poses)})")
        if not len(images):
            return []
        intensities = intensities if intensities is not None else [None] * len(images)
        runs: list[list[tuple[_Prepared, dict]]] = [[] for _ in images]  # each input's runs (``_run``)
        sectors, hold_to_prior = self.yaw_sectors, prior_poses is not None and not self.yaw_sectors
        choice_priors = [None] * len(images)  # with yaw sectors a prior pose chooses between the runs (``chosen_run``)
        if prior_poses is not None and sectors:  # (yaw, tolerance) in degrees, in the unmirrored frame (``run_yaw``)
            choice_priors = [tuple(np.degrees(p.numpy())) for p in self._yaw_priors(prior_poses, prior_yaw_deg, False)]
        for mirrored in self.mirror_runs:
            yaw_priors = (self._yaw_priors(prior_poses, prior_yaw_deg, mirrored) if hold_to_prior
                          else [None] * len(images))
            prepared = [self._prepare(*args, mirrored) for args in zip(images, clouds, Ks, intensities, yaw_priors)]
            batch = to_device(self.collate([p.samples if len(p.samples) > 1 else p.samples[0] for p in prepared]),
                              self.device)
            with torch.inference_mode():  # the sectors' runs share the encoders' work (``ICL.encode``)
                encoded = self.model.encode(batch) if sectors else None
            if sectors and self.eval_config["refine"] == "lines":  # and the images' evidence for the lines
                draws = batch.get("draws", 1)
                first, lines_conf = first_draws(batch), self.eval_config.get("lines")
                evidence = line_evidence(first["image"], first["K"], lines_conf)
                batch["line_evidence"] = evidence.repeat_interleave(draws, dim=0)
                ground = ground_normals(first["dense_points"], lines_conf)
                batch["ground_normals"] = ground.repeat_interleave(draws, dim=0)
            for held in [None, *sector_priors(sectors)]:  # None: the free run
                if held is not None:  # the yaw search held to a sector (in the network's frame: its own sectors)
                    batch["yaw_prior"] = held.to(self.device).expand(len(batch["K"]), 2)
                for input_runs, p, out in zip(runs, prepared, self._run(batch, encoded)):
                    input_runs.append((p, out))
        seconds = time.perf_counter() - start
        results = []
        for input_runs, prior in zip(runs, choice_priors):
            yaws = np.array([run_yaw(p, out["pose"]) for p, out in input_runs])
            scores = np.array([out.get("search_score", 0.0) for _, out in input_runs])
            chosen = chosen_run(yaws, scores, prior)
            result = self._result(*input_runs[chosen], seconds)
            if len(input_runs) > 1:  # the alternatives, for a caller with a cue of its own
                result.info["runs"] = {"poses": np.stack([self.to_caller(p, out["pose"]) for p, out in input_runs]),
                                       "support": run_support(yaws), "search_scores": scores, "chosen": chosen}
            results.append(result)
        return results

    def _run(self, batch: dict, encoded: tuple | None = None) -> list[dict[str, np.ndarray]]:
        """The network and the solver on the batch of prepared inputs (``encoded``: ``ICL.encode(batch)``, or None) ->
        each input's outputs, float64: frustum_pose, kp_2d, kp_3d, pose, confidence, draws_agreeing, unrefined_pose,
        and search_score (``inference.search_scores``) when the Registrator compares runs."""
        result = infer(self.network, batch, eval_cfg=self.eval_config, encoded=encoded)
        out = {k: result.out[k] for k in ("frustum_pose", "kp_2d", "kp_3d")}
        out.update(pose=result.pose, confidence=result.confidence, draws_agreeing=result.draws_agreeing,
                   unrefined_pose=result.unrefined_pose)
        if len(self.mirror_runs) > 1 or self.yaw_sectors:
            out["search_score"] = search_scores(result.out)
        out = {k: v.double().cpu().numpy() for k, v in out.items()}
        return [{k: v[b] for k, v in out.items()} for b in range(len(result.pose))]

    def _yaw_priors(self, prior_poses: Sequence[Tensorish], prior_yaw_deg: float, mirrored: bool
                    ) -> list[torch.Tensor]:
        """Each prior pose's (yaw, tolerance) in radians, in the frame the network sees (mirrored with the
        inputs when ``mirrored``), checked."""
        if self.network is not self.model:
            raise InputError("a prior pose needs the PyTorch backend (the exported graph has no input for it)")
        if self.model.gpdm.search is None:
            raise InputError("a prior pose needs a model with GPDM's pose search (model.gpdm.yaw_bins > 0)")
        if not (np.isfinite(prior_yaw_deg) and prior_yaw_deg > 0):
            raise InputError(f"prior_yaw_deg must be a positive number of degrees, got {prior_yaw_deg}")
        priors = []
        for prior in prior_poses:
            T = _numpy(prior, "prior_pose").astype(np.float64)
            if T.shape != (4, 4) or not np.isfinite(T).all():
                raise InputError(f"prior_pose must be a finite (4, 4) pose, got shape {T.shape}")
            if not is_rotation(T[:3, :3]):
                raise InputError("prior_pose's 3x3 part is not a rotation")
            camera_to_network, cloud_to_network = self.to_network(mirrored)
            T = camera_to_network @ T @ cloud_to_network.T
            yaw = np.arctan2(-T[2, 0], T[0, 0])  # ``pose_search.vector_yaws`` of d = (R[2, 0], R[0, 0])
            priors.append(torch.tensor([yaw, np.radians(prior_yaw_deg)], dtype=torch.float32))
        return priors

    def _prepare(self, image: Tensorish, points: Tensorish, K: Tensorish, intensity: Tensorish | None,
                 yaw_prior: torch.Tensor | None = None, mirrored: bool = False) -> _Prepared:
        """Resize by max(config scale, the least that covers the input), centre-crop, voxelise, sample; yaw_prior:
        (2,) for the pose search (``_yaw_priors``), or None; mirrored: the mirror images (``to_network``)."""
        image, K = _check_image(image), _check_K(K)
        xyz, intensity, finite = _check_points(points, intensity)
        cloud_to_network = self.to_network(mirrored)[1]
        if not np.array_equal(cloud_to_network, np.eye(4)):  # signs and a permutation: exact
            xyz = xyz @ cloud_to_network[:3, :3].T
        if self.model.conf["dof"] == 3:
            _check_level_frame(xyz[finite])
        (h, w), (H, W) = self.image_size, image.shape[:2]
        if mirrored:  # u -> W - 1 - u (pixel centres at integers), x -> -x (in cloud_to_network)
            image, K = np.ascontiguousarray(image[:, ::-1]), _mirrored_K(K, W)
        if H < h or W < w:
            raise InputError(f"image of {W}x{H} px is smaller than the model input of {w}x{h} px")
        scale = max(self.image_scale, h / H, w / W)
        crop, K_model, offset = resize_and_crop(image, K, scale, (h, w), rng=None)
        kept = np.flatnonzero(finite)[voxel_downsample(xyz[finite], self.voxel)]
        draw_rng = np.random.default_rng([SAMPLE_SEED, 1])  # the draws after the first
        pick, resampled = sample_indices(len(kept), self.num_points, np.random.default_rng(SAMPLE_SEED))
        index = kept[pick]
        tensor = torch.from_numpy(crop).permute(2, 0, 1).float()
        sample = {
            "image": tensor.div_(255) if crop.dtype == np.uint8 else tensor,
            "K": torch.from_numpy(K_model).float(),
            "points": torch.from_numpy(xyz[index]).float(),
            "intensity": torch.from_numpy(intensity[index]).float(),
            "T_gt": torch.eye(4),
            "resampled": resampled,
            "meta": {},
        }
        if yaw_prior is not None:
            sample["yaw_prior"] = yaw_prior
        if self.single_sweep:
            origin = scan_origin(xyz[index])
            if origin is None:
                raise InputError("single_sweep: the cloud shows no sweep's origin (no empty disc of ground under a"
                                 " LiDAR): is it one sweep of a spinning LiDAR?")
            sample["centre_prior"] = torch.from_numpy(origin).float()
        if self.eval_config["refine"] != "none" and self.dense_points > 0:  # its cloud, as evaluation pairs draw it
            dense = kept[distinct_indices(len(kept), self.dense_points, np.random.default_rng(SAMPLE_SEED))]
            sample["dense_points"] = torch.from_numpy(xyz[dense]).float()
        samples = [sample]
        for _ in range(self.point_draws - 1):
            pick, resampled = sample_indices(len(kept), self.num_points, draw_rng)
            samples.append(redrawn(sample, xyz[kept[pick]], intensity[kept[pick]], resampled))
        return _Prepared(samples, mirrored, xyz, finite, K, K_model, (H, W), scale, offset)

    @staticmethod
    def _overlap_mask(p: _Prepared, frustum_pose: np.ndarray) -> np.ndarray:
        """(N,) the input points the frustum pose projects into the original image (False where left out)."""
        mask = np.zeros(len(p.points), dtype=bool)
        mask[p.finite] = project_pose(p.points[p.finite], frustum_pose, p.K, *p.size)[2]
        return mask

    def _result(self, p: _Prepared, out: dict[str, np.ndarray], seconds: float) -> RegistrationResult:
        # Network pixels -> resized pixels (+ crop offset) -> original pixels (inverse of u' = s (u + 0.5) - 0.5).
        keypoints_2d = (out["kp_2d"] + np.asarray(p.crop_offset) + 0.5) / p.scale - 0.5
        pose, frustum_pose, keypoints_3d = out["pose"], out["frustum_pose"], out["kp_3d"]
        if p.mirrored:  # back from the mirror images: u = W - 1 - u'
            keypoints_2d = keypoints_2d * [-1, 1] + [p.size[1] - 1, 0]
        pose, frustum_pose = self.to_caller(p, pose), self.to_caller(p, frustum_pose)
        keypoints_3d = keypoints_3d @ self.to_network(p.mirrored)[1][:3, :3]  # x = cloud_to_network^-1 x (``to_caller``)
        info = {"resampled": bool(p.samples[0]["resampled"]), "point_draws": len(p.samples),
                "draws_agreeing": int(out["draws_agreeing"]), "scale": p.scale, "crop_offset": p.crop_offset,
                "K_model": p.K_model, "seconds": seconds, "traffic": "left" if p.mirrored else "right"}
        if self.eval_config["refine"] != "none":  # a turn is the same in the network's frames and the caller's
            info["refined_turn_deg"] = float(np.degrees(rotation_angle(out["pose"][:3, :3]
                                                                       @ out["unrefined_pose"][:3, :3].T)))
        return RegistrationResult(
            pose=pose,
            frustum_pose=frustum_pose,
            keypoints_2d=keypoints_2d,
            keypoints_3d=keypoints_3d,
            overlap_mask=self._overlap_mask(p, out["frustum_pose"]),
            confidence=float(out["confidence"]),
            info=info,
        )


# ---------------------------------------------------------------------------------------------
# Files: ``i2preg register``
# ---------------------------------------------------------------------------------------------


REGISTER_FILES = ("pose.txt", "overlay.png", "overlay_frustum.png")
REGISTER_PROTOCOL_FILES = ("overlay_gt.png", "protocol.json")
"""What ``register_files`` writes into its folder, and what it writes there only with a protocol seed."""


def register_files(image_path: str | os.PathLike, points_path: str | os.PathLike, calib_path: str | os.PathLike,
                   out_dir: str | os.PathLike | None = None, camera: int = 2,
                   weights: str | os.PathLike | None = None, extrinsic: str | os.PathLike | None = None,
                   protocol_seed: int | None = None, refine: str | None = None,
                   traffic: str = "right", prior: str | os.PathLike | np.ndarray | None = None,
                   prior_yaw_deg: float = PRIOR_YAW_DEG, cloud_axes: str = "rdf",
                   point_draws: int | None = None, yaw_sectors: int = 0, single_sweep: bool = False
                   ) -> RegistrationResult:
    """Register an image file to a point-cloud file with the model ``weights`` (None: the bundled one), and
    ``refine``, ``traffic``, ``cloud_axes``, ``point_draws``, ``yaw_sectors`` and ``single_sweep`` as ``Registrator``'s;
    prior: a prior pose (4x4, cloud -> camera) or a text file with one (as ``pose.txt``), whose yaw the search keeps
    within ``prior_yaw_deg`` (``Registrator.register``).

    Files are read by ``data.readers``: the cloud (KITTI .bin, nuScenes .pcd.bin, PCD, PLY, NPY, NPZ)
    with its intensity; K and the lens distortion from ``calib_path`` (KITTI calib.txt: camera
    ``camera``; a 9-number K file; YAML/JSON), the image undistorted with it. The calibration's
    extrinsic (from the calib file, or ``extrinsic``: a 4x4 LiDAR -> camera text file) is not used: it
    is what registration estimates.

    protocol_seed: check the model on this frame under the benchmark protocol instead. The cloud is
    moved into the camera frame with the calibration's extrinsic (the ground truth), then by the
    protocol perturbation P drawn with this seed and the model's ``data.amplitudes`` (a prior pose, given in
    the file's cloud frame, moves with it); the pose is estimated for that cloud and scored against P^-1:
    ``result.info["protocol"]`` holds seed, T_gt, rte (m), rre and rre_geodesic (deg), and success (the Acc
    thresholds).

    out_dir: if given, write ``pose.txt`` (4 rows of 4 numbers, full precision), ``overlay.png`` (the
    points projected with the pose on the (undistorted) image, coloured by depth) and
    ``overlay_frustum.png`` (the same with the frustum pose), each atomically; with ``protocol_seed``
    also ``overlay_gt.png`` (the ground-truth pose) and ``protocol.json`` (the errors), which are removed without it,
    so that a folder written again holds no earlier frame's. The folder is checked before the model runs.
    """
    from .visualize import draw_projection, save_image

    if out_dir is not None:
        out_dir = require_output_folder(out_dir)
    calibration = read_calibration_file(calib_path, camera, extrinsic)
    image, K = undistort_image(read_image_file(image_path), calibration.K, calibration.distortion)
    points, intensity = read_point_cloud(points_path)
    prior_pose = prior if prior is None or isinstance(prior, np.ndarray) else read_pose_file(prior, "prior pose")
    if protocol_seed is not None and cloud_axes.lower() != "rdf":
        raise InputError("the protocol check moves the cloud into the camera's frame: leave the cloud axes at rdf, "
                         f"not {cloud_axes!r}")
    registrator = Registrator.from_pretrained(weights, refine=refine, traffic=traffic, cloud_axes=cloud_axes,
                                              point_draws=point_draws, yaw_sectors=yaw_sectors,
                                              single_sweep=single_sweep)
    T_gt = None
    if protocol_seed is not None:
        if np.allclose(calibration.T_cam_velo, np.eye(4)):
            raise InputError("protocol check needs the LiDAR -> camera extrinsic (calib Tr, or --extrinsic)", calib_path)
        amplitudes = pair_config(registrator.config)["amplitudes"]
        P = sample_perturbation(np.random.default_rng(protocol_seed), amplitudes)
        points = transform_points(P @ calibration.T_cam_velo, points)
        T_gt = invert_transform(P)
        if prior_pose is not None:  # from the file's cloud frame into the perturbed one
            prior_pose = prior_pose @ invert_transform(P @ calibration.T_cam_velo)
    with warnings.catch_warnings(record=True) as caught:  # the cloud's warnings name its file, not "points"
        warnings.simplefilter("always")
        result = registrator.register(image, points, K, intensity, prior_pose, prior_yaw_deg)
    for warning in caught:
        message = str(warning.message)
        prefix = "points: "
        warnings.warn(f"{os.fspath(points_path)}: {message[len(prefix):]}" if message.startswith(prefix) else message,
                      warning.category, stacklevel=2)
    if T_gt is not None:
        errors = {k: float(v[0]) for k, v in registration_errors(result.pose[None], T_gt[None]).items()}
        result.info["protocol"] = {"seed": protocol_seed, "T_gt": T_gt, **errors,
                                   "success": bool(success({k: np.array(v) for k, v in errors.items()}))}
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text(out_dir / "pose.txt", "".join(" ".join(f"{x:.17g}" for x in row) + "\n" for row in result.pose))
        if T_gt is not None:
            save_image(out_dir / "overlay_gt.png", draw_projection(image, points, T_gt, K))
            protocol = {**result.info["protocol"], "T_gt": T_gt.tolist()}
            write_text(out_dir / "protocol.json", json.dumps(protocol, indent=2) + "\n")
        else:
            for name in REGISTER_PROTOCOL_FILES:
                (out_dir / name).unlink(missing_ok=True)
        save_image(out_dir / "overlay.png", draw_projection(image, points, result.pose, K))
        save_image(out_dir / "overlay_frustum.png", draw_projection(image, points, result.frustum_pose, K))
    return result
