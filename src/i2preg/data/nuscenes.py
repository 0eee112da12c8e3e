"""nuScenes -> benchmark pairs in the KITTI odometry layout (METHOD section 3, nuScenes protocol).

Reads the devkit's JSON tables directly (``ROOT/VERSION/{scene,sample,sample_data,calibrated_sensor,
ego_pose,sensor,log}.json``; the devkit itself pins numpy < 2). Per day-time scene and LIDAR_TOP
keyframe: the keyframe and its neighbouring sweeps, ego-vehicle points removed in each scan's own
frame, moved into the keyframe's LiDAR frame through the ego poses (sensor -> ego -> global -> ego
-> sensor: ego-motion compensated); the same sample's CAM_FRONT image if its ego pose lies within
``max_camera_distance`` of the keyframe's; top ``crop_top`` rows cut and scaled by ``image_scale``
(1600 x 900 -> 320 x 160); the points moved into that camera's frame at the image timestamp and
voxel-downsampled; kept when at least ``min_points_in_view`` of them project into the image.

Written to ``OUT/sequences/<scene name>/``: ``image_2/NNNNNN.png`` (the cut and scaled image),
``velodyne/NNNNNN.bin`` (float32 x, y, z in the CAMERA frame, intensity / 255), ``calib.txt``
(``P2 = K' [I | 0]`` of the prepared image, ``Tr`` = identity: the points are in the camera frame
already, since the LiDAR-to-camera transform differs per frame) and ``tokens.txt`` (per frame: the
LiDAR and camera sample_data tokens). ``OUT/{train,test}.txt`` list the scenes per split, and
``OUT/nuscenes.yaml`` is the config that trains and tests on them (``base: nuscenes``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import yaml

from ..errors import InputError, require_file, require_output_folder
from ..geometry import invert_transform, make_transform, project_pose, transform_points
from .ops import voxel_downsample
from .pairs import resize_intrinsics
from .readers import read_image_file, read_point_cloud

NUSCENES_DEFAULTS: dict[str, Any] = {
    "lidar": "LIDAR_TOP",
    "camera": "CAM_FRONT",
    "sweeps_per_side": 3,  # neighbouring sweeps before and after the keyframe (DeepI2P: 3 ...
    "sweep_stride": 4,  # ... every 4th sweep: offsets -12, -8, -4, +4, +8, +12 at 20 Hz)
    "ego_box": [0.8, 2.7],  # half extents (x, y) in metres of the ego vehicle in the LIDAR_TOP frame
    "voxel": 0.3,  # metres, in the camera frame
    "max_camera_distance": 10.0,  # metres between the keyframe's and the image's ego positions
    "crop_top": 100,  # image rows cut at the top
    "image_scale": 0.2,
    "min_points_in_view": 6000,
    "exclude_night": True,  # scenes whose description mentions "night"
}
"""Preparation settings (``prepare_nuscenes(cfg=...)`` overrides them)."""

VERSIONS = ("v1.0-trainval", "v1.0-test", "v1.0-mini")
TABLES = ("scene", "sample", "sample_data", "calibrated_sensor", "ego_pose", "sensor", "log")

MINI_SPLITS = {
    "train": ["scene-0061", "scene-0553", "scene-0655", "scene-0757", "scene-0796", "scene-1077", "scene-1094",
              "scene-1100"],
    "test": ["scene-0103", "scene-0916"],
}
"""The devkit's official ``mini_train`` / ``mini_val`` (nuscenes/utils/splits.py)."""

NUSCENES_DATA_CONFIG: dict[str, Any] = {
    "layout": "odometry",
    "image_scale": 1.0,
    "crop": [160, 320],
    "voxel": 0.3,
    "cameras": [2],
}
"""The ``data`` section that reads the prepared pairs (the sequence lists come from OUT)."""


@dataclass
class PrepareSummary:
    """What ``prepare_nuscenes`` wrote: scenes per split, pairs kept, frames and scenes left out."""

    splits: dict[str, list[str]] = field(default_factory=dict)
    pairs: int = 0
    night_scenes: list[str] = field(default_factory=list)
    no_camera: int = 0
    few_points: int = 0
    config: Path | None = None


def quaternion_matrix(q) -> np.ndarray:
    """Rotation (3, 3) of a quaternion (w, x, y, z), as stored by nuScenes; normalised first."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def _pose(record: dict) -> np.ndarray:
    """(4, 4) of a calibrated_sensor (sensor -> ego) or ego_pose (ego -> global) record."""
    return make_transform(quaternion_matrix(record["rotation"]), np.asarray(record["translation"], np.float64))


class NuScenesTables:
    """The JSON tables of one version, indexed by token; sample_data only for the two channels used.

    root: the dataset folder (holding ``samples/``, ``sweeps/`` and ``VERSION/``).
    """

    def __init__(self, root: str | os.PathLike, version: str, channels: tuple[str, str]):
        self.root = Path(root)
        folder = self.root / version
        if not folder.is_dir():
            raise InputError(f"no {version} tables folder (expected ROOT/{version}/scene.json ...)", folder)
        tables = {name: self._load(folder / f"{name}.json") for name in TABLES}
        channel_of_sensor = {s["token"]: s["channel"] for s in tables["sensor"]}
        self.calibrated_sensor = {c["token"]: c for c in tables["calibrated_sensor"]}
        channel_of_calibration = {
            token: channel_of_sensor.get(c["sensor_token"]) for token, c in self.calibrated_sensor.items()
        }
        self.ego_pose = {e["token"]: e for e in tables["ego_pose"]}
        self.scenes = tables["scene"]
        self.sample_data = {}
        self.keyframes: dict[tuple[str, str], dict] = {}  # (sample token, channel) -> key sample_data
        for record in tables["sample_data"]:
            channel = channel_of_calibration.get(record["calibrated_sensor_token"])
            if channel in channels:
                self.sample_data[record["token"]] = record
                if record["is_key_frame"]:
                    self.keyframes[record["sample_token"], channel] = record
        self.samples_of_scene: dict[str, list[dict]] = {}
        for sample in sorted(tables["sample"], key=lambda s: s["timestamp"]):
            self.samples_of_scene.setdefault(sample["scene_token"], []).append(sample)

    @staticmethod
    def _load(path: Path) -> list[dict]:
        require_file(path, "a nuScenes table")
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise InputError(f"not valid JSON ({err})", path) from None

    def sensor_to_global(self, record: dict) -> np.ndarray:
        """(4, 4) sensor -> global transform of a sample_data record at its own timestamp."""
        ego = self.ego_pose[record["ego_pose_token"]]
        return _pose(ego) @ _pose(self.calibrated_sensor[record["calibrated_sensor_token"]])

    def ego_distance(self, a: dict, b: dict) -> float:
        """Metres between the ego positions of two sample_data records."""
        positions = [self.ego_pose[record["ego_pose_token"]]["translation"] for record in (a, b)]
        return float(np.linalg.norm(np.subtract(*positions)))

    def neighbours(self, record: dict, per_side: int, stride: int) -> list[dict]:
        """The sweeps ``stride``, 2 ``stride``, ... ``per_side`` ``stride`` steps before and after ``record``
        along its channel's prev/next chain, as far as the chain goes."""
        found = []
        for direction in ("prev", "next"):
            current = record
            for step in range(1, per_side * stride + 1):
                current = self.sample_data.get(current[direction])
                if current is None:
                    break
                if step % stride == 0:
                    found.append(current)
        return found


def scene_splits(version: str, scene_names: list[str]) -> dict[str, list[str]]:
    """Scene names per split: trainval -> all train (850), test -> all test (150), as DeepI2P and its
    successors do; mini -> the devkit's mini_train (train) and mini_val (test)."""
    if version == "v1.0-trainval":
        return {"train": scene_names}
    if version == "v1.0-test":
        return {"test": scene_names}
    return {split: [name for name in scene_names if name in names] for split, names in MINI_SPLITS.items()}


def prepare_nuscenes(
    root: str | os.PathLike,
    version: str,
    out: str | os.PathLike,
    cfg: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> PrepareSummary:
    """Prepare the nuScenes benchmark pairs of ``version`` from ``root`` into ``out`` (module docstring).

    cfg: values over ``NUSCENES_DEFAULTS``. progress: called with one line per scene. Preparing
    trainval and test into the same ``out`` adds up: the split lists and ``nuscenes.yaml`` cover both.
    A scene whose ``tokens.txt`` exists (written last) counts as done and is skipped, so an interrupted
    run resumes; delete ``out`` to prepare again with other settings.
    """
    if version not in VERSIONS:
        raise InputError(f"version must be one of {', '.join(VERSIONS)}, not {version!r}")
    require_output_folder(out)
    unknown = sorted(set(cfg or {}) - set(NUSCENES_DEFAULTS))
    if unknown:
        raise InputError(f"unknown nuScenes setting(s) {', '.join(unknown)}")
    cfg = {**NUSCENES_DEFAULTS, **(cfg or {})}
    tables = NuScenesTables(root, version, (cfg["lidar"], cfg["camera"]))
    out = Path(out)
    summary = PrepareSummary()
    split_of = {name: split for split, names in scene_splits(version, [s["name"] for s in tables.scenes]).items()
                for name in names}
    for scene in tables.scenes:
        if scene["name"] not in split_of:
            continue
        if cfg["exclude_night"] and "night" in scene["description"].lower():
            summary.night_scenes.append(scene["name"])
            continue
        folder = out / "sequences" / scene["name"]
        if (folder / "tokens.txt").is_file():  # prepared by an earlier run
            kept = len((folder / "tokens.txt").read_text().splitlines())
            summary.pairs += kept
        else:
            kept = _prepare_scene(tables, scene, folder, cfg, summary)
        if kept:
            summary.splits.setdefault(split_of[scene["name"]], []).append(scene["name"])
        if progress:
            progress(f"{scene['name']}: {kept} pairs")
    summary.config = _write_split_lists(out, summary.splits)
    return summary


def _prepare_scene(tables: NuScenesTables, scene: dict, folder: Path, cfg: dict, summary: PrepareSummary) -> int:
    """Write the kept pairs of one scene into ``folder``; returns how many."""
    K_written, tokens = None, []
    for sample in tables.samples_of_scene.get(scene["token"], []):
        lidar = tables.keyframes.get((sample["token"], cfg["lidar"]))
        camera = tables.keyframes.get((sample["token"], cfg["camera"]))
        if lidar is None:
            continue
        if camera is None or tables.ego_distance(camera, lidar) > cfg["max_camera_distance"]:
            summary.no_camera += 1
            continue
        points, intensity = accumulate_sweeps(tables, lidar, cfg)
        T_cam_lidar = invert_transform(tables.sensor_to_global(camera)) @ tables.sensor_to_global(lidar)
        image, K = prepare_image(
            read_image_file(tables.root / camera["filename"]),
            np.asarray(tables.calibrated_sensor[camera["calibrated_sensor_token"]]["camera_intrinsic"], np.float64),
            cfg["crop_top"], cfg["image_scale"],
        )
        points_cam = transform_points(T_cam_lidar, points).astype(np.float32)
        kept = voxel_downsample(points_cam.astype(np.float64), cfg["voxel"])
        points_cam, intensity = points_cam[kept], intensity[kept]
        in_view = project_pose(points_cam.astype(np.float64), np.eye(4), K, *image.shape[:2])[2]
        if in_view.sum() < cfg["min_points_in_view"]:
            summary.few_points += 1
            continue
        if K_written is None:
            K_written = K
            _write_calib(folder / "calib.txt", K)
        elif not np.allclose(K, K_written):
            raise InputError(f"{cfg['camera']} intrinsics change within the scene: one calib.txt cannot hold them",
                             tables.root / camera["filename"])
        frame = f"{len(tokens):06d}"
        (folder / "velodyne").mkdir(parents=True, exist_ok=True)
        (folder / "image_2").mkdir(parents=True, exist_ok=True)
        np.c_[points_cam, intensity / 255.0].astype(np.float32).tofile(folder / "velodyne" / f"{frame}.bin")
        image_path = folder / "image_2" / f"{frame}.png"
        if not cv2.imwrite(os.fspath(image_path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise InputError("could not write the image", image_path)
        tokens.append(f"{lidar['token']} {camera['token']}\n")
    if tokens:
        (folder / "tokens.txt").write_text("".join(tokens))
    summary.pairs += len(tokens)
    return len(tokens)


def accumulate_sweeps(tables: NuScenesTables, keyframe: dict, cfg: dict) -> tuple[np.ndarray, np.ndarray]:
    """The keyframe's scan and its neighbouring sweeps in the keyframe's LiDAR frame.

    Each scan loses the points inside the ego box (its own sensor frame: |x| < bx, |y| < by) and is
    moved by T = (keyframe sensor -> global)^-1 (scan sensor -> global), which compensates the ego
    motion between the sweeps. Returns points (N, 3) float64 and intensity (N,) float32 (0-255).
    """
    global_to_key = invert_transform(tables.sensor_to_global(keyframe))
    half_x, half_y = cfg["ego_box"]
    all_points, all_intensity = [], []
    for scan in [keyframe] + tables.neighbours(keyframe, cfg["sweeps_per_side"], cfg["sweep_stride"]):
        points, intensity = read_point_cloud(tables.root / scan["filename"])
        outside = (np.abs(points[:, 0]) >= half_x) | (np.abs(points[:, 1]) >= half_y)
        T = global_to_key @ tables.sensor_to_global(scan)
        all_points.append(transform_points(T, points[outside].astype(np.float64)))
        all_intensity.append(np.zeros(outside.sum(), np.float32) if intensity is None else intensity[outside])
    return np.concatenate(all_points), np.concatenate(all_intensity)


def prepare_image(image: np.ndarray, K: np.ndarray, crop_top: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Cut the top ``crop_top`` rows of an (H, W, 3) image and resize it by ``scale``.

    Returns the image (round(s (H - crop_top)), round(s W), 3) and its intrinsics (3, 3): the
    principal point moves up by ``crop_top``, then ``pairs.resize_intrinsics``.
    """
    height, width = image.shape[0] - crop_top, image.shape[1]
    size = (round(width * scale), round(height * scale))
    resized = cv2.resize(image[crop_top:], size, interpolation=cv2.INTER_AREA)
    K_cut = K.copy()
    K_cut[1, 2] -= crop_top
    return resized, resize_intrinsics(K_cut, scale)


def _write_calib(path: Path, K: np.ndarray) -> None:
    """KITTI odometry calib.txt: P2 = K [I | 0] and Tr = identity (the points are in the camera frame)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = {"P2": np.c_[K, np.zeros(3)], "Tr": np.eye(4)[:3]}
    path.write_text("".join(f"{key}: " + " ".join(f"{v:.12e}" for v in m.ravel()) + "\n" for key, m in rows.items()))


def _write_split_lists(out: Path, splits: dict[str, list[str]]) -> Path:
    """Merge the scenes into ``OUT/{split}.txt`` and (re)write ``OUT/nuscenes.yaml`` from all lists."""
    lists = {}
    for split in ("train", "test"):
        path = out / f"{split}.txt"
        names = set(path.read_text().split()) if path.is_file() else set()
        names |= set(splits.get(split, []))
        if names or path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(f"{name}\n" for name in sorted(names)))
        lists[split] = sorted(names)
    data = {
        **NUSCENES_DATA_CONFIG,
        "root": os.fspath(out.resolve()),
        "train_sequences": lists["train"],
        "val_sequences": lists["test"],  # as in the KITTI config: validation on the test scenes
        "test_sequences": lists["test"],
    }
    config = out / "nuscenes.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        "# Written by `i2preg prepare nuscenes`: the prepared nuScenes pairs in this folder.\n"
        + yaml.safe_dump({"base": "nuscenes", "data": data}, sort_keys=False, default_flow_style=None)
    )
    return config
