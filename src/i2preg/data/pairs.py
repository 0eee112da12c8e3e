"""Benchmark pairs (METHOD section 3): one camera image + one perturbed LiDAR cloud + the ground truth.

Per frame and colour camera: resize the image by ``image_scale`` and crop ``crop`` = (height, width)
(random in training, centred in testing); move the points into the camera frame, keep one per
``voxel``, sample exactly ``num_points``; move them by a random perturbation P; the ground truth is
``T_gt = P^-1``. Test pairs are seeded by (``seed``, pair index), so every run sees the same test set.

Pixel convention (as in ``geometry``): the centre of the top-left pixel is (0, 0). ``cv2.resize`` by
s maps an input pixel u to s (u + 0.5) - 0.5, so the resized intrinsics are
``K' = [[s, 0, (s - 1) / 2], [0, s, (s - 1) / 2], [0, 0, 1]] @ K``. CorrI2P uses ``diag(s, s, 1) @ K``,
whose principal point is (1 - s) / 2 = 0.25 px off the image content at s = 0.5; the two conventions
differ by that constant shift only.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from ..config import deep_update
from ..errors import InputError
from ..geometry import (
    STANDARD_AMPLITUDES,
    invert_transform,
    sample_perturbation,
    transform_points,
)
from .augment import PHOTOMETRIC_DEFAULTS, photometric_augment
from .kitti import KittiObject, KittiOdometry
from .ops import distinct_indices, sample_indices, voxel_downsample

PAIR_DEFAULTS: dict[str, Any] = {
    "layout": "odometry",  # "odometry" (ROOT/sequences/NN) or "object" (ROOT = .../training, no split)
    "image_scale": 0.5,
    "crop": [160, 512],  # height, width
    "voxel": 0.1,  # metres
    "num_points": 40960,
    "dense_points": 40960,  # evaluation pairs also carry up to this many voxel-kept points (0: none), for eval.refine
    "amplitudes": list(STANDARD_AMPLITUDES),  # tx, ty, tz (metres), rx, ry, rz (radians)
    "seed": 7351,
    "cameras": [2, 3],
    "root": None,  # dataset root; "train_root", "val_root", "test_root" override it per split
    "train_sequences": ["00", "01", "02", "03", "04", "05", "06", "07", "08"],
    "val_sequences": ["09", "10"],
    "test_sequences": ["09", "10"],
    "photometric": PHOTOMETRIC_DEFAULTS,  # training-time camera-response augmentation (augment.py), off by default
}
"""The ``data`` config section: the KITTI protocol. A 6-DoF variant only changes ``amplitudes``."""

PHOTOMETRIC_STREAM = 1
"""Appended to a training pair's seed for its photometric draws, so they leave the pair's other draws as
they were without augmentation."""


@dataclass
class Pair:
    """One benchmark pair, in NumPy and float64 (``to_sample`` gives the float32 torch sample).

    image: (h, w, 3) uint8 RGB, resized and cropped. K: (3, 3) intrinsics of that image.
    points: (N, 3) perturbed cloud (cloud frame). intensity: (N,) reflectance.
    T_gt: (4, 4) maps ``points`` into the camera frame. resampled: points were repeated to reach N.
    source_index: (N,) index of each point in the input cloud. crop_offset: (dx, dy) in resized pixels.
    dense_points: (D, 3) up to ``data.dense_points`` of the voxel-kept points (cloud frame), drawn without
    repetition, for ``eval.refine`` (``refine``, ``lines``); None in training or with ``dense_points: 0``.
    more_draws: further draws of the point sample from the same voxel-kept points, each (points (N, 3), intensity
    (N,), resampled), for ``eval.point_draws`` (``inference``); empty by default.
    """

    image: np.ndarray
    K: np.ndarray
    points: np.ndarray
    intensity: np.ndarray
    T_gt: np.ndarray
    resampled: bool
    source_index: np.ndarray
    crop_offset: tuple[int, int]
    dense_points: np.ndarray | None = None
    more_draws: tuple[tuple[np.ndarray, np.ndarray, bool], ...] = ()

    def to_sample(self, meta: dict) -> dict[str, Any]:
        """The shared sample dict: image (3, h, w) in [0, 1], K, points, intensity, T_gt, resampled, meta, and
        dense_points when the pair has them."""
        sample = {
            "image": torch.from_numpy(self.image).permute(2, 0, 1).float().div_(255),
            "K": torch.from_numpy(self.K).float(),
            "points": torch.from_numpy(self.points).float(),
            "intensity": torch.from_numpy(self.intensity).float(),
            "T_gt": torch.from_numpy(self.T_gt).float(),
            "resampled": self.resampled,
            "meta": meta,
        }
        if self.dense_points is not None:
            sample["dense_points"] = torch.from_numpy(self.dense_points).float()
        return sample

    def to_samples(self, meta: dict) -> list[dict[str, Any]]:
        """One sample (``to_sample``) for each draw of the points, the first the pair's own; they share the image."""
        first = self.to_sample(meta)
        return [first, *(redrawn(first, *draw) for draw in self.more_draws)]


def redrawn(sample: dict[str, Any], points: np.ndarray, intensity: np.ndarray, resampled: bool) -> dict[str, Any]:
    """``sample`` with another draw of its points: points (N, 3) and intensity (N,); the rest shared."""
    return {**sample, "points": torch.from_numpy(points).float(), "intensity": torch.from_numpy(intensity).float(),
            "resampled": resampled}


def pair_config(cfg: dict | None = None) -> dict[str, Any]:
    """The ``data`` section of a full config merged over ``PAIR_DEFAULTS``."""
    return deep_update(PAIR_DEFAULTS, (cfg or {}).get("data", {}))


def resize_intrinsics(K: np.ndarray, scale: float) -> np.ndarray:
    """Intrinsics (3, 3) of an image resized by ``scale`` with cv2.resize (pixel centres at integers)."""
    S = np.array([[scale, 0, (scale - 1) / 2], [0, scale, (scale - 1) / 2], [0, 0, 1]])
    return S @ K


def resize_and_crop(
    image: np.ndarray, K: np.ndarray, scale: float, crop: tuple[int, int], rng: np.random.Generator | None
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Resize (H, W, 3) by ``scale``, crop (height, width): centred when ``rng`` is None, else random.

    Returns the image (height, width, 3), its intrinsics (3, 3) and the crop offset (dx, dy).
    """
    resized = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    height, width = crop
    H, W = resized.shape[:2]
    if H < height or W < width:
        raise InputError(f"image of {W}x{H} px after resizing by {scale} is smaller than the {width}x{height} crop")
    if rng is None:
        dx, dy = (W - width) // 2, (H - height) // 2
    else:
        dx, dy = int(rng.integers(0, W - width + 1)), int(rng.integers(0, H - height + 1))
    K_crop = resize_intrinsics(K, scale)
    K_crop[0, 2] -= dx
    K_crop[1, 2] -= dy
    return np.ascontiguousarray(resized[dy : dy + height, dx : dx + width]), K_crop, (dx, dy)


def build_pair(
    image: np.ndarray,
    points: np.ndarray,
    intensity: np.ndarray | None,
    K: np.ndarray,
    T_cam_velo: np.ndarray,
    cfg: dict[str, Any] | None,
    rng: np.random.Generator,
    train: bool = False,
    perturbation: np.ndarray | None = None,
    more_draws: int = 0,
    draw_rng: np.random.Generator | None = None,
) -> Pair:
    """Turn one frame into a benchmark pair.

    image: (H, W, 3) uint8 RGB. points: (M, 3) sensor frame. intensity: (M,) or None (zeros).
    K: (3, 3) and T_cam_velo: (4, 4) sensor -> camera frame, as in ``kitti.CameraCalibration``.
    cfg: ``data`` section values over ``PAIR_DEFAULTS`` (None: the defaults). rng: draws the point
    sample, and in training the crop and the voxel representatives. perturbation: (4, 4) P applied to
    camera-frame points; drawn from ``rng`` when None. more_draws: how many more point samples to draw from the
    same voxel-kept points, by ``draw_rng`` (``Pair.more_draws``).
    """
    cfg = {**PAIR_DEFAULTS, **(cfg or {})}
    if len(points) == 0:
        raise InputError("empty point cloud")
    image, K_crop, crop_offset = resize_and_crop(
        image, K, cfg["image_scale"], tuple(cfg["crop"]), rng if train else None
    )
    points_cam = transform_points(np.asarray(T_cam_velo, np.float64), np.asarray(points[:, :3], np.float64))
    kept = voxel_downsample(points_cam, cfg["voxel"], rng if train else None)
    pick, resampled = sample_indices(len(kept), cfg["num_points"], rng)
    source_index = kept[pick]
    if perturbation is None:
        perturbation = sample_perturbation(rng, cfg["amplitudes"])
    intensity = np.zeros(len(points)) if intensity is None else np.asarray(intensity)
    dense = None
    if not train and cfg["dense_points"] > 0:  # drawn last: the pair's other draws stay as they were
        dense = transform_points(perturbation, points_cam[kept[distinct_indices(len(kept), cfg["dense_points"], rng)]])
    draws = []
    for _ in range(more_draws):
        pick, draw_resampled = sample_indices(len(kept), cfg["num_points"], draw_rng)
        index = kept[pick]
        draws.append((transform_points(perturbation, points_cam[index]), intensity[index].astype(np.float64),
                      draw_resampled))
    return Pair(
        image=image,
        K=K_crop,
        points=transform_points(perturbation, points_cam[source_index]),
        intensity=intensity[source_index].astype(np.float64),
        T_gt=invert_transform(perturbation),
        resampled=resampled,
        source_index=source_index,
        crop_offset=crop_offset,
        dense_points=dense,
        more_draws=tuple(draws),
    )


def pair_generators(seed: int, index: int) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """Independent (points, perturbation, further point draws) generators of test pair ``index``: the perturbation
    depends on (seed, index) only, not on the cloud size or ``num_points``, and the pair's own draws do not
    depend on how many more are drawn."""
    points_seq, pose_seq, draws_seq = np.random.SeedSequence([seed, index]).spawn(3)
    return np.random.default_rng(points_seq), np.random.default_rng(pose_seq), np.random.default_rng(draws_seq)


class KittiPairs(torch.utils.data.Dataset):
    """Benchmark pairs of KITTI frames: pair ``index`` is frame ``index // len(cameras)`` seen by camera
    ``cameras[index % len(cameras)]``.

    frames: a ``KittiOdometry`` or ``KittiObject``. cfg: ``data`` section values over ``PAIR_DEFAULTS``.
    train: random crop, voxel representatives, sample and perturbation; otherwise all of it is seeded
    by (seed, index). A training key is either an index, drawn from torch's generator (so DataLoader
    workers differ and ``torch.manual_seed`` reproduces a run), or an ``(epoch, index)`` tuple, drawn
    from (seed, epoch, index) alone, which makes a resumed run exactly repeat an uninterrupted one.
    With ``photometric.enabled``, training images also go through ``augment.photometric_augment``, drawn
    from the same seed (and ``PHOTOMETRIC_STREAM``). point_draws: evaluation pairs only; above 1, an item is a
    list of that many samples of the pair, the first its own, the others the same pair with other draws of its
    point sample (seeded by (seed, index) too), for ``eval.point_draws``.
    """

    def __init__(self, frames: KittiOdometry | KittiObject, cfg: dict[str, Any], train: bool = False,
                 point_draws: int = 1):
        if point_draws < 1 or (train and point_draws != 1):
            raise InputError(f"point_draws must be 1 in training and at least 1 otherwise, got {point_draws}")
        self.frames = frames
        self.cfg = copy.deepcopy({**PAIR_DEFAULTS, **cfg})
        self.cameras = list(self.cfg["cameras"])
        self.train = train
        self.point_draws = int(point_draws)

    def __len__(self) -> int:
        return len(self.frames) * len(self.cameras)

    def pair(self, key: int | tuple[int, int]) -> tuple[Pair, dict[str, Any]]:
        """The pair ``key`` (an index or (epoch, index)) in NumPy float64, and its meta: sequence,
        frame, camera, index."""
        epoch, index = key if isinstance(key, tuple) else (None, key)
        if not 0 <= index < len(self):
            raise IndexError(f"pair {index} out of range [0, {len(self)})")
        frame_index, camera_index = divmod(index, len(self.cameras))
        camera = self.cameras[camera_index]
        calibration = self.frames.calibration(frame_index)[camera]
        scan = self.frames.points(frame_index)
        draw_rng = None
        if self.train:
            seed = int(torch.randint(2**62, ())) if epoch is None else (self.cfg["seed"], epoch, index)
            rng = np.random.default_rng(seed)
            perturbation = None
        else:
            rng, pose_rng, draw_rng = pair_generators(self.cfg["seed"], index)
            perturbation = sample_perturbation(pose_rng, self.cfg["amplitudes"])
        pair = build_pair(
            self.frames.image(frame_index, camera), scan[:, :3], scan[:, 3],
            calibration.K, calibration.T_cam_velo, self.cfg, rng, self.train, perturbation,
            self.point_draws - 1, draw_rng,
        )
        if self.train and self.cfg["photometric"]["enabled"]:
            photometric_rng = np.random.default_rng([*np.ravel(seed), PHOTOMETRIC_STREAM])
            pair.image = photometric_augment(pair.image, pair.K, self.cfg["photometric"], photometric_rng)
        sequence, frame = self.frames.frames[frame_index]
        return pair, {"sequence": sequence, "frame": frame, "camera": camera, "index": index}

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any] | list[dict[str, Any]]:
        pair, meta = self.pair(key)
        return pair.to_samples(meta) if self.point_draws > 1 else pair.to_sample(meta)


def build_dataset(cfg: dict | None, split: str, root: str | os.PathLike | None = None,
                  point_draws: int = 1) -> KittiPairs:
    """The ``split`` ("train", "val" or "test") pairs of the KITTI-layout data under ``root`` (default:
    the config's ``{split}_root``, else ``root``); cfg is a full config whose ``data`` section overrides
    ``PAIR_DEFAULTS``. The object layout has no split: all its frames. point_draws: as ``KittiPairs``."""
    if split not in ("train", "val", "test"):
        raise InputError(f"split must be 'train', 'val' or 'test', not {split!r}")
    data_cfg = pair_config(cfg)
    root = root or data_cfg.get(f"{split}_root") or data_cfg["root"]
    if root is None:
        raise InputError(f"no dataset root: set data.root (or data.{split}_root) or pass --data")
    if data_cfg["layout"] == "odometry":
        frames = KittiOdometry(root, data_cfg[f"{split}_sequences"], data_cfg["cameras"])
    elif data_cfg["layout"] == "object":
        frames = KittiObject(root, data_cfg["cameras"])
    else:
        raise InputError(f"data.layout must be 'odometry' or 'object', not {data_cfg['layout']!r}")
    return KittiPairs(frames, data_cfg, train=split == "train", point_draws=point_draws)
