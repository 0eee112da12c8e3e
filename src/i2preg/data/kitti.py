"""KITTI readers: the Odometry layout (the benchmark) and the object-detection layout (real samples).

Odometry: ``ROOT/sequences/NN/{image_2,image_3}/*.png``, ``velodyne/*.bin``, ``calib.txt`` (``P0``-``P3``
and ``Tr`` = velodyne -> rectified camera 0, 12 values each) and optional poses, one row of 12 values
per frame, in ``ROOT/poses/NN.txt`` or ``ROOT/sequences/NN/poses.txt``.
Object: ``ROOT/{image_2,image_3}/*.png``, ``velodyne/*.bin``, ``calib/*.txt`` (``P0``-``P3``, ``R0_rect``
with 9 values, ``Tr_velo_to_cam``).

Both give per frame an RGB image per camera, the points (N, 4) = x, y, z, reflectance in the velodyne
frame, and a ``Calibration`` whose per-camera ``K`` and ``T_cam_velo`` satisfy
``K @ (T_cam_velo @ p)[:3] == P_c @ R0_rect @ Tr @ p``: the camera baseline (fourth column of P_c) and
the rectification are folded into ``T_cam_velo``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import cv2
import numpy as np

from ..errors import InputError, require_file, require_folder

CALIB_SIZES = {
    "P0": 12, "P1": 12, "P2": 12, "P3": 12,
    "Tr": 12, "R0_rect": 9, "Tr_velo_to_cam": 12, "Tr_imu_to_velo": 12,
}
"""Number of values of every calibration key we know; other keys are ignored."""


@dataclass(frozen=True)
class CameraCalibration:
    """One rectified camera: intrinsics ``K`` (3, 3) and ``T_cam_velo`` (4, 4), velodyne -> camera frame."""

    K: np.ndarray
    T_cam_velo: np.ndarray


@dataclass(frozen=True)
class Calibration:
    """The cameras of one frame or sequence, by KITTI camera index (0-3), and the file they came from."""

    cameras: dict[int, CameraCalibration]
    path: str

    def __getitem__(self, camera: int) -> CameraCalibration:
        if camera not in self.cameras:
            raise InputError(f"no calibration for camera {camera} (P{camera} missing)", self.path)
        return self.cameras[camera]


class FrameId(NamedTuple):
    sequence: str
    frame: int


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def read_calib_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``key: values`` lines -> {key: float64 values}; known keys are checked for their value count."""
    path = require_file(path)
    values = {}
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, rest = line.partition(":")
        key = key.strip()
        if not sep:
            raise InputError(f"line {number} is not 'key: values'", path)
        try:
            numbers = np.array([float(x) for x in rest.split()], dtype=np.float64)
        except ValueError:
            raise InputError(f"line {number} ({key}) holds a value that is not a number", path) from None
        if key in CALIB_SIZES and numbers.size != CALIB_SIZES[key]:
            raise InputError(f"{key} has {numbers.size} values, expected {CALIB_SIZES[key]}", path)
        values[key] = numbers
    return values


def camera_calibration(P: np.ndarray, T_rect_velo: np.ndarray) -> CameraCalibration:
    """Split a rectified projection P (3, 4) = K [I | b] into K and T_cam_velo = [I | b] T_rect_velo.

    P: (3, 4) projection of rectified camera-0 coordinates; T_rect_velo: (4, 4) velodyne -> rectified cam 0.
    """
    K = P[:, :3].copy()
    baseline = np.eye(4)
    baseline[:3, 3] = np.linalg.solve(K, P[:, 3])
    return CameraCalibration(K=K, T_cam_velo=baseline @ T_rect_velo)


def _to_4x4(matrix: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    rows, cols = matrix.shape
    T[:rows, :cols] = matrix
    return T


def read_calibration(path: str | os.PathLike, cameras: Sequence[int] = (2, 3)) -> Calibration:
    """Read an odometry ``calib.txt`` (``Tr``) or an object ``calib/*.txt`` (``R0_rect``, ``Tr_velo_to_cam``).

    Every camera in ``cameras`` must have its ``P``; other ``P`` present are read as well.
    """
    values = read_calib_file(path)
    if "Tr" in values:
        T_rect_velo = _to_4x4(values["Tr"].reshape(3, 4))
    elif "Tr_velo_to_cam" in values:
        R0 = _to_4x4(values["R0_rect"].reshape(3, 3)) if "R0_rect" in values else np.eye(4)
        T_rect_velo = R0 @ _to_4x4(values["Tr_velo_to_cam"].reshape(3, 4))
    else:
        raise InputError("no Tr (or Tr_velo_to_cam) line: the velodyne-to-camera transform is missing", path)
    for camera in cameras:
        if f"P{camera}" not in values:
            raise InputError(f"no P{camera} line: camera {camera} is not calibrated", path)
    return Calibration(
        cameras={c: camera_calibration(values[f"P{c}"].reshape(3, 4), T_rect_velo)
                 for c in range(4) if f"P{c}" in values},
        path=os.fspath(path),
    )


def read_points(path: str | os.PathLike) -> np.ndarray:
    """A velodyne ``.bin`` scan -> (N, 4) float32: x, y, z (metres, velodyne frame), reflectance."""
    path = require_file(path)
    size = path.stat().st_size
    if size % 16:
        raise InputError(f"truncated scan: {size} bytes is not a multiple of 16 (4 float32 per point)", path)
    points = np.fromfile(path, dtype=np.float32).reshape(-1, 4)
    if len(points) == 0:
        raise InputError("empty scan (no points)", path)
    if not np.isfinite(points).all():
        raise InputError(f"NaN or inf in {int((~np.isfinite(points)).any(1).sum())} of {len(points)} points", path)
    return points


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file -> (H, W, 3) uint8 RGB."""
    path = require_file(path)
    bgr = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError("not a readable image", path)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_poses(path: str | os.PathLike, num_frames: int) -> np.ndarray:
    """A poses file (one row of 12 values per frame) -> (num_frames, 4, 4) float64."""
    path = require_file(path)
    rows = [line.split() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    if len(rows) != num_frames:
        raise InputError(f"{len(rows)} pose rows for {num_frames} frames", path)
    for number, row in enumerate(rows, start=1):
        if len(row) != 12:
            raise InputError(f"row {number} has {len(row)} values, expected 12", path)
    try:
        values = np.array(rows, dtype=np.float64).reshape(-1, 3, 4)
    except ValueError:
        raise InputError("holds a value that is not a number", path) from None
    poses = np.tile(np.eye(4), (num_frames, 1, 1))
    poses[:, :3, :] = values
    return poses


def _frame_stems(folder: Path, suffix: str) -> list[str]:
    """Sorted stems of the ``suffix`` files in ``folder``; the folder must hold at least one."""
    require_folder(folder)
    stems = sorted(p.stem for p in folder.glob(f"*{suffix}"))
    if not stems:
        raise InputError(f"no {suffix} frames", folder)
    return stems


def _check_same_frames(folder: Path, suffix: str, expected: list[str]) -> None:
    """The ``suffix`` files of ``folder`` must be exactly the frames ``expected`` (the velodyne scans)."""
    stems = _frame_stems(folder, suffix)
    if stems != expected:
        missing = sorted(set(expected) - set(stems))
        extra = sorted(set(stems) - set(expected))
        problems = [f"{what} {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}"
                    for what, names in (("missing", missing), ("without a velodyne scan:", extra)) if names]
        raise InputError(f"frames do not match velodyne/: {'; '.join(problems)}", folder)


def _frame_number(stem: str, folder: Path) -> int:
    if not stem.isdigit():
        raise InputError(f"frame file {stem!r} is not named by its frame number", folder)
    return int(stem)


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------


class KittiOdometry:
    """Frames of KITTI Odometry sequences, loaded on demand.

    Args:
        root: folder holding ``sequences/`` (and optionally ``poses/``).
        sequences: sequence names, e.g. ``["09", "10"]`` (ints are zero-padded to two digits).
        cameras: colour cameras whose images must exist for every frame.
    """

    def __init__(self, root: str | os.PathLike, sequences: Sequence[str | int], cameras: Sequence[int] = (2, 3)):
        self.root = Path(root)
        self.cameras = tuple(cameras)
        self.frames: list[FrameId] = []
        self.calibrations: dict[str, Calibration] = {}
        self.poses: dict[str, np.ndarray] = {}
        self._stems: list[str] = []
        self._rows: list[int] = []
        sequences = [f"{int(s):02d}" if isinstance(s, int) else str(s) for s in sequences]
        missing = [s for s in sequences if not (self.root / "sequences" / s).is_dir()]
        if missing:
            held = ",".join(sorted(p.name for p in require_folder(self.root / "sequences").iterdir() if p.is_dir()))
            raise InputError(f"no sequence {','.join(missing)} of the {','.join(sequences)} asked for (it holds "
                             f"{held or 'none'}: eval and compare take --sequences, train --set data.SPLIT_sequences)",
                             self.root)
        for sequence in sequences:
            folder = self.root / "sequences" / sequence
            stems = _frame_stems(folder / "velodyne", ".bin")
            for camera in self.cameras:
                _check_same_frames(folder / f"image_{camera}", ".png", stems)
            self.calibrations[sequence] = read_calibration(folder / "calib.txt", self.cameras)
            for poses_path in (self.root / "poses" / f"{sequence}.txt", folder / "poses.txt"):
                if poses_path.is_file():
                    self.poses[sequence] = read_poses(poses_path, len(stems))
                    break
            self.frames += [FrameId(sequence, _frame_number(stem, folder / "velodyne")) for stem in stems]
            self._stems += stems
            self._rows += range(len(stems))

    def __len__(self) -> int:
        return len(self.frames)

    def _path(self, i: int, folder: str, suffix: str) -> Path:
        return self.root / "sequences" / self.frames[i].sequence / folder / f"{self._stems[i]}{suffix}"

    def image(self, i: int, camera: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB of camera ``camera`` at frame ``i``."""
        return read_image(self._path(i, f"image_{camera}", ".png"))

    def points(self, i: int) -> np.ndarray:
        """(N, 4) float32 velodyne points of frame ``i``: x, y, z, reflectance."""
        return read_points(self._path(i, "velodyne", ".bin"))

    def calibration(self, i: int) -> Calibration:
        return self.calibrations[self.frames[i].sequence]

    def pose(self, i: int) -> np.ndarray | None:
        """(4, 4) pose of camera 0 in the sequence's world frame, or None without a poses file."""
        poses = self.poses.get(self.frames[i].sequence)
        return None if poses is None else poses[self._rows[i]]


class KittiObject:
    """Frames of the KITTI object-detection layout (``ROOT/{image_2,velodyne,calib}``), loaded on demand.

    Args:
        root: folder holding ``image_2/``, ``velodyne/`` and ``calib/`` (e.g. ``.../training``).
        cameras: colour cameras whose images must exist for every frame.
    """

    def __init__(self, root: str | os.PathLike, cameras: Sequence[int] = (2,)):
        self.root = Path(root)
        self.cameras = tuple(cameras)
        self._stems = _frame_stems(self.root / "velodyne", ".bin")
        for camera in self.cameras:
            _check_same_frames(self.root / f"image_{camera}", ".png", self._stems)
        _check_same_frames(self.root / "calib", ".txt", self._stems)
        self.frames = [FrameId(self.root.name, _frame_number(stem, self.root / "velodyne")) for stem in self._stems]

    def __len__(self) -> int:
        return len(self.frames)

    def image(self, i: int, camera: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB of camera ``camera`` at frame ``i``."""
        return read_image(self.root / f"image_{camera}" / f"{self._stems[i]}.png")

    def points(self, i: int) -> np.ndarray:
        """(N, 4) float32 velodyne points of frame ``i``: x, y, z, reflectance."""
        return read_points(self.root / "velodyne" / f"{self._stems[i]}.bin")

    def calibration(self, i: int) -> Calibration:
        return read_calibration(self.root / "calib" / f"{self._stems[i]}.txt", self.cameras)
