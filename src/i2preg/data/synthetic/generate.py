"""Write synthetic street sequences in the KITTI Odometry layout:

    OUT/sequences/SS/image_2/NNNNNN.png   left colour camera, 8-bit RGB
    OUT/sequences/SS/image_3/NNNNNN.png   right colour camera
    OUT/sequences/SS/velodyne/NNNNNN.bin  float32 (x, y, z, reflectance), LiDAR frame
    OUT/sequences/SS/calib.txt            P0..P3 and Tr (LiDAR -> cam0)
    OUT/sequences/SS/times.txt            one timestamp per frame (s)
    OUT/poses/SS.txt                      3x4 pose of cam0 in the frame of cam0 at frame 0, per frame

Every file is written to a temporary name and renamed, so an interrupted run leaves no partial file.
A sequence is a pure function of (seed, sequence id, number of frames, sensor, appearance). The ``varied``
appearance adds street clutter, clouds, sun shadows and facade weathering to the world (world.py), and
passes every image through a random camera response (``CAMERA_RESPONSE``); ``default`` is the world the
bundled model and the test set were made with, byte for byte.
"""

from __future__ import annotations

import math
import sys
from concurrent.futures import ProcessPoolExecutor
from functools import cached_property
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from i2preg.data.augment import photometric_augment
from i2preg.errors import InputError, require_output_folder
from i2preg.files import write_bytes
from i2preg.geometry import invert_transform, make_transform

from .route import Route
from .sensors import RIGS, Camera, Lidar, RayCaster, SensorRig
from .world import APPEARANCES, StreetGrid, World, build_world

_CHUNK = 16  # frames per worker task

CAMERA_RESPONSE = {
    "exposure": [-0.5, 1.0], "white_balance": 0.1, "vignetting": [0.0, 0.5], "blur": [0.0, 0.9],
    "shot_noise": [0.0, 0.012], "read_noise": [0.0, 0.004], "gamma": [1.0, 1.6], "saturation": [0.9, 1.6],
    "jpeg_probability": 0.3, "jpeg_quality": [60, 95],
}
"""Ranges of the varied world's camera response per image (``augment.photometric_augment``), milder than
the training augmentation's."""


class SyntheticSequence:
    """One synthetic drive: route, frame poses and times are planned at construction (cheap); the
    world mesh and the sensors are built on first use.

    ``T_world_cam0`` (N, 4, 4): cam0 poses in the world frame; ``times`` (N,) seconds. ``appearance``:
    one of ``world.APPEARANCES``.
    """

    def __init__(self, seed: int, sequence: int, frames: int, sensor: str = "kitti", appearance: str = "default"):
        self.seed, self.sequence, self.frames, self.appearance = seed, sequence, frames, appearance
        self.rig: SensorRig = RIGS[sensor]
        self.key = int(np.random.SeedSequence([seed, sequence]).generate_state(1)[0])
        rng = np.random.default_rng([self.key, 0])
        mean_spacing, speed, start = rng.uniform(2.5, 4.0), rng.uniform(8.0, 13.0), rng.uniform(5.0, 25.0)
        spacing = mean_spacing * rng.uniform(0.9, 1.1, frames)  # metres between frames
        arc = start + np.concatenate([[0.0], np.cumsum(spacing[1:])])
        self.grid = StreetGrid.sample(self.key, extent=arc[-1] + 400.0)
        self.route = Route.plan(self.grid, arc[-1], np.random.default_rng([self.key, 1]))
        xy, yaw = self.route.sample(arc)
        self.times = (arc - arc[0]) / speed
        self.T_world_cam0 = np.stack([_camera_pose(p, a, self.rig.cam_height) for p, a in zip(xy, yaw)])

    @property
    def poses(self) -> np.ndarray:
        """KITTI poses (N, 4, 4): cam0 of frame i in the cam0 frame of frame 0."""
        return invert_transform(self.T_world_cam0[0]) @ self.T_world_cam0

    @cached_property
    def world(self) -> World:
        return build_world(self.key, self.grid, self.route.points, appearance=self.appearance)

    @cached_property
    def caster(self) -> RayCaster:
        return RayCaster(self.world)

    @cached_property
    def camera(self) -> Camera:
        return Camera(self.rig.K, self.rig.width, self.rig.height)

    @cached_property
    def lidar(self) -> Lidar:
        return Lidar(self.rig)

    def T_world_cam(self, frame: int, camera: int) -> np.ndarray:
        """Pose (4, 4) of camera 0..3 at ``frame`` in the world frame."""
        return self.T_world_cam0[frame] @ self.rig.T_cam0_cam(camera)

    def render(self, frame: int, camera: int) -> tuple[np.ndarray, np.ndarray]:
        """RGB (H, W, 3) uint8 and z-depth (H, W) float32 of camera 2 or 3 at ``frame`` (the varied
        appearance: through a camera response drawn from (key, frame, camera))."""
        rgb, depth = self.camera.render(self.world, self.caster, self.T_world_cam(frame, camera))
        if self.appearance == "varied":
            rng = np.random.default_rng([self.key, 4, frame, camera])
            rgb = photometric_augment(rgb, self.rig.K, CAMERA_RESPONSE, rng)
        return rgb, depth

    def scan(self, frame: int) -> np.ndarray:
        """LiDAR points (N, 4) float32 (x, y, z, reflectance) at ``frame``, same instant as the images."""
        T_world_lidar = self.T_world_cam0[frame] @ self.rig.Tr
        return self.lidar.scan(self.world, self.caster, T_world_lidar, np.random.default_rng([self.key, 3, frame]))

    def write_frame(self, folder: Path, frame: int) -> np.ndarray:
        """Write both images and the scan of ``frame`` under a sequence folder; returns the scan."""
        name = f"{frame:06d}"
        for camera in (2, 3):
            rgb, _ = self.render(frame, camera)
            write_bytes(folder / f"image_{camera}" / f"{name}.png", _png(rgb))
        points = self.scan(frame)
        write_bytes(folder / "velodyne" / f"{name}.bin", points.astype("<f4").tobytes())
        return points

    def calib_text(self) -> str:
        rows = [(f"P{i}", self.rig.P[i]) for i in range(4)] + [("Tr", self.rig.Tr[:3])]
        return "".join(f"{name}: " + " ".join(f"{v:.12e}" for v in m.ravel()) + "\n" for name, m in rows)

    def poses_text(self) -> str:
        return "".join(" ".join(f"{v:.12e}" for v in T[:3].ravel()) + "\n" for T in self.poses)

    def times_text(self) -> str:
        return "".join(f"{t:.6e}\n" for t in self.times)


def _camera_pose(xy: np.ndarray, yaw: float, height: float) -> np.ndarray:
    """cam0 (x right, y down, z forward) at (x, y, height) looking along ``yaw``, level."""
    forward = np.array([math.cos(yaw), math.sin(yaw), 0.0])
    right = np.array([math.sin(yaw), -math.cos(yaw), 0.0])
    R = np.stack([right, [0.0, 0.0, -1.0], forward], axis=1)
    return make_transform(R, np.array([xy[0], xy[1], height]))


def generate_dataset(out_dir, sequences: int | list[int], frames: int, seed: int, sensor: str = "kitti",
                     workers: int = 1, progress: bool = True, appearance: str = "default") -> Path:
    """Write ``sequences`` (a count S for ids 0..S-1, or a list of ids 0..99) of ``frames`` frames each
    under ``out_dir`` in the KITTI Odometry layout; returns the output folder. ``appearance``: one of
    ``world.APPEARANCES`` (``varied``: clutter, clouds, shadows, weathering and camera responses).

    Sequence k with a given seed is the same whatever other sequences are written with it;
    ``workers`` > 1 renders chunks of frames in that many processes (same bytes as one process).
    """
    out = require_output_folder(out_dir)
    ids = list(range(sequences)) if isinstance(sequences, int) else [int(s) for s in sequences]
    if not ids or any(not 0 <= s <= 99 for s in ids) or len(set(ids)) != len(ids):
        raise InputError(f"sequences must be distinct ids in 0..99, got {sequences!r}")
    if frames < 1 or seed < 0 or workers < 1:
        raise InputError(f"need frames >= 1, seed >= 0 and workers >= 1, got {frames}, {seed}, {workers}")
    if sensor not in RIGS:
        raise InputError(f"unknown sensor {sensor!r}; choose one of {', '.join(RIGS)}")
    if appearance not in APPEARANCES:
        raise InputError(f"unknown appearance {appearance!r}; choose one of {', '.join(APPEARANCES)}")

    for s in ids:
        plan = SyntheticSequence(seed, s, frames, sensor, appearance)
        folder = out / "sequences" / f"{s:02d}"
        for sub in ("image_2", "image_3", "velodyne"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        (out / "poses").mkdir(parents=True, exist_ok=True)
        write_bytes(folder / "calib.txt", plan.calib_text().encode())
        write_bytes(folder / "times.txt", plan.times_text().encode())
        write_bytes(out / "poses" / f"{s:02d}.txt", plan.poses_text().encode())

    tasks = [(str(out), seed, s, frames, sensor, appearance, start, min(start + _CHUNK, frames))
             for s in ids for start in range(0, frames, _CHUNK)]
    bar = tqdm(total=len(ids) * frames, unit="frame", disable=not progress, file=sys.stderr)
    if workers == 1:
        for task in tasks:
            bar.update(_write_frames(*task))
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            for done in pool.map(_write_frames, *zip(*tasks)):
                bar.update(done)
    bar.close()
    return out


_cache: dict[tuple, SyntheticSequence] = {}


def _write_frames(out: str, seed: int, sequence: int, frames: int, sensor: str, appearance: str, start: int,
                  stop: int) -> int:
    """Render and write frames start..stop-1 of one sequence; the last sequence built is kept."""
    key = (seed, sequence, frames, sensor, appearance)
    if key not in _cache:
        _cache.clear()
        _cache[key] = SyntheticSequence(seed, sequence, frames, sensor, appearance)
    folder = Path(out) / "sequences" / f"{sequence:02d}"
    for frame in range(start, stop):
        _cache[key].write_frame(folder, frame)
    return stop - start


def _png(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return data.tobytes()


