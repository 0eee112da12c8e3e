"""Pose from 2D-3D correspondences with OpenCV's EPnP inside RANSAC, set up as CorrI2P and VP2P-Match do.

The peers solve on the quarter-scale image with a 1 px inlier threshold; here pixels stay in the input image
and the threshold is ``reprojection_error / scale`` input pixels (1 / 0.25 = 4 px by default), which is the same
test. A solve with fewer than ``min_matches`` pairs, or one that OpenCV reports as failed, gives the identity
pose: a failure that counts in the statistics like any other pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

PNP_DEFAULTS = {
    "iterations": 500,  # RANSAC iterations (peers: 500)
    "reprojection_error": 1.0,  # inlier threshold in pixels of the image scaled by ``scale`` (peers: 1)
    "scale": 0.25,  # the peers' quarter scale: the threshold is 1 / 0.25 = 4 input pixels
    "confidence": 0.99,  # RANSAC confidence (peers: 0.99)
    "min_matches": 4,  # EPnP's minimum; fewer pairs -> identity pose (failure)
}
"""The ``eval.pnp`` config section."""


@dataclass
class PnPResult:
    pose: np.ndarray  # (4, 4) float64, cloud -> camera; the identity when the solve failed
    inliers: int  # RANSAC inliers (0 on failure)
    success: bool


def solve_pnp_ransac(pixels, points, K, conf: dict | None = None) -> PnPResult:
    """EPnP + RANSAC on pairs pixels (N, 2) (input-image (u, v)) <-> points (N, 3) (cloud frame), K (3, 3)."""
    conf = {**PNP_DEFAULTS, **(conf or {})}
    pixels = np.ascontiguousarray(pixels, dtype=np.float64).reshape(-1, 2)
    points = np.ascontiguousarray(points, dtype=np.float64).reshape(-1, 3)
    failure = PnPResult(np.eye(4), 0, False)
    if len(points) < max(4, int(conf["min_matches"])):
        return failure
    try:
        ok, rvec, tvec, inliers = cv2.solvePnPRansac(
            points, pixels, np.asarray(K, dtype=np.float64), None,
            iterationsCount=int(conf["iterations"]),
            reprojectionError=float(conf["reprojection_error"]) / float(conf["scale"]),
            confidence=float(conf["confidence"]),
            flags=cv2.SOLVEPNP_EPNP,
        )
    except cv2.error:
        return failure
    if not ok or inliers is None or not np.isfinite(tvec).all():
        return failure
    pose = np.eye(4)
    pose[:3, :3] = cv2.Rodrigues(rvec)[0]
    pose[:3, 3] = tvec.ravel()
    return PnPResult(pose, len(inliers), True)


def pnp_poses(kp_2d: torch.Tensor, kp_3d: torch.Tensor, K: torch.Tensor, conf: dict | None = None):
    """``solve_pnp_ransac`` per sample of a batch: kp_2d (B, N, 2) pixels, kp_3d (B, N, 3) cloud frame, K (B, 3, 3).

    Returns poses (B, 4, 4) with kp_3d's dtype and device, and success (B,) bool (on the CPU).
    """
    pixels, points, intrinsics = (x.detach().double().cpu().numpy() for x in (kp_2d, kp_3d, K))
    results = [solve_pnp_ransac(*args, conf) for args in zip(pixels, points, intrinsics)]
    poses = torch.as_tensor(np.stack([r.pose for r in results]), dtype=kp_3d.dtype, device=kp_3d.device)
    return poses, torch.tensor([r.success for r in results])
