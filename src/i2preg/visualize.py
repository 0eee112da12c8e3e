"""Pictures: LiDAR points projected on camera images, and atomic image writing."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import cv2
import matplotlib
import numpy as np
import torch

from .errors import InputError
from .geometry import project_pose


def to_rgb_uint8(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """(H, W, 3) uint8 RGB from uint8 (H, W, 3) or float in [0, 1], (H, W, 3) or (3, H, W) / tensor."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if image.ndim == 3 and image.shape[0] == 3 and image.shape[-1] != 3:
        image = image.transpose(1, 2, 0)
    if image.dtype != np.uint8:
        image = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image)


def draw_projection(
    image: np.ndarray | torch.Tensor,
    points: np.ndarray | torch.Tensor,
    T: np.ndarray | torch.Tensor,
    K: np.ndarray | torch.Tensor,
    depth_range: tuple[float, float] | None = None,
    radius: int = 1,
    colormap: str = "turbo",
) -> np.ndarray:
    """Draw points (N, 3) of the cloud frame, moved into the camera frame by T (4, 4) and projected
    with K (3, 3), on the image, coloured by depth (near = start of ``colormap``); nearer points are
    drawn over farther ones.

    depth_range: (near, far) metres of the colour scale; default the range of the visible depths.
    Returns (H, W, 3) uint8 RGB.
    """
    canvas = to_rgb_uint8(image).copy()
    height, width = canvas.shape[:2]
    points, T, K = (np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, np.float64)
                    for x in (points, T, K))
    uv, depth, visible = project_pose(points, T, K, height, width)
    uv, depth = uv[visible], depth[visible]
    if len(depth) == 0:
        return canvas
    near, far = depth_range if depth_range is not None else (depth.min(), depth.max())
    colours = matplotlib.colormaps[colormap](np.clip((depth - near) / max(far - near, 1e-9), 0, 1))[:, :3]
    colours = np.rint(colours * 255).astype(np.uint8)
    pixels = np.rint(uv).astype(np.int32)
    for i in np.argsort(-depth, kind="stable"):
        cv2.circle(canvas, (int(pixels[i, 0]), int(pixels[i, 1])), radius, colours[i].tolist(), -1)
    return canvas


def save_image(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 RGB image atomically (temporary file, then rename); the format follows
    the suffix (.png, .jpg...). Parent folders are created."""
    path = Path(path)
    try:
        ok, encoded = cv2.imencode(path.suffix, cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    except cv2.error:
        ok = False
    if not ok:
        raise InputError(f"cannot write an image with suffix {path.suffix!r}", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(encoded.tobytes())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise
