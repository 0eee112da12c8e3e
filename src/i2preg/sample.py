"""A sample pair that ships with the package, to try the API on without a dataset:

    image, points, K, pose = i2preg.load_sample()
    result = i2preg.Registrator.from_pretrained().register(image, points, K)   # result.pose ~ pose

One frame of the project's synthetic street world (training world, seed 1), written by docs/make_sample.py
into ``SAMPLE_DIR`` as ordinary files (``image.png``, ``points.bin`` in the KITTI layout, ``K.txt``,
``pose.txt``), so that ``i2preg register`` reads them too. The cloud is in its own frame (the camera frame
moved by a benchmark-protocol perturbation), and ``pose`` maps it into the camera frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from .data.readers import read_calibration_file, read_image_file, read_point_cloud
from .errors import InputError

SAMPLE_DIR = Path(__file__).resolve().parent / "sample_data"
"""The sample's files: image.png, points.bin, K.txt, pose.txt."""


class SamplePair(NamedTuple):
    """image: (H, W, 3) uint8 RGB. points: (N, 4) float32 x, y, z (cloud frame, metres) and reflectance.
    K: (3, 3) float64 intrinsics of ``image``. pose: (4, 4) float64 true pose, cloud frame -> camera frame
    (a pixel u ~ K (R p + t))."""

    image: np.ndarray
    points: np.ndarray
    K: np.ndarray
    pose: np.ndarray


def load_sample() -> SamplePair:
    """The bundled sample pair, read from ``SAMPLE_DIR``."""
    image = read_image_file(SAMPLE_DIR / "image.png")
    xyz, reflectance = read_point_cloud(SAMPLE_DIR / "points.bin")
    K = read_calibration_file(SAMPLE_DIR / "K.txt").K
    pose_path = SAMPLE_DIR / "pose.txt"
    try:
        pose = np.loadtxt(pose_path, dtype=np.float64)
    except (OSError, ValueError) as err:
        raise InputError(f"not a 4x4 matrix of numbers ({err})", pose_path) from None
    if pose.shape != (4, 4):
        raise InputError(f"expected a 4x4 pose, got shape {pose.shape}", pose_path)
    return SamplePair(image, np.c_[xyz, reflectance], K, pose)
