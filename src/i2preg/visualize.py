"""Pictures: LiDAR points projected on camera images, 2D-3D correspondences, overlap detection in a
bird's-eye view, error curves, and atomic image writing.

The ``draw_*`` functions draw on a copy of a camera image with OpenCV; the ``plot_*`` functions render a
Matplotlib figure (Agg canvas, no pyplot state). All return (H, W, 3) uint8 RGB arrays for ``save_image``.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .errors import InputError
from .files import write_bytes
from .geometry import project_pose, transform_points


def to_rgb_uint8(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """(H, W, 3) uint8 RGB from uint8 (H, W, 3) or float in [0, 1], (H, W, 3) or (3, H, W) / tensor."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if image.ndim == 3 and image.shape[0] == 3 and image.shape[-1] != 3:
        image = image.transpose(1, 2, 0)
    if image.dtype != np.uint8:
        image = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image)


def to_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """float64 NumPy copy of an array or tensor."""
    return np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, np.float64)


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
    points, T, K = (to_numpy(x) for x in (points, T, K))
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


def draw_correspondences(
    image: np.ndarray | torch.Tensor,
    kp_2d: np.ndarray | torch.Tensor,
    kp_3d: np.ndarray | torch.Tensor,
    T: np.ndarray | torch.Tensor,
    K: np.ndarray | torch.Tensor,
    radius: int = 3,
    colormap: str = "hsv",
) -> np.ndarray:
    """Draw the 2D-3D correspondences of the queries: the 2D keypoints kp_2d (Q, 2) (pixels, filled
    discs) joined by a line to the 3D keypoints kp_3d (Q, 3) of the cloud frame projected through T
    (4, 4) and K (3, 3) (rings). One colour per query; queries whose 3D keypoint lies behind the camera
    show their disc only. Returns (H, W, 3) uint8 RGB.
    """
    canvas = to_rgb_uint8(image).copy()
    height, width = canvas.shape[:2]
    kp_2d, kp_3d, T, K = (to_numpy(x) for x in (kp_2d, kp_3d, T, K))
    uv, depth, _ = project_pose(kp_3d, T, K, height, width)
    # Far-off projections only need to leave the image: clip them so that they fit OpenCV's int32 pixels.
    uv = np.clip(uv, -4 * max(height, width), 5 * max(height, width))
    colours = np.rint(matplotlib.colormaps[colormap](np.linspace(0, 1, len(kp_2d), endpoint=False))[:, :3] * 255)
    starts, ends = np.rint(kp_2d).astype(int).tolist(), np.rint(uv).astype(int).tolist()
    for start, end, in_front, colour in zip(starts, ends, depth > 0, colours.tolist()):
        if in_front:
            cv2.line(canvas, start, end, colour, 1, cv2.LINE_AA)
            cv2.circle(canvas, end, radius, colour, 1, cv2.LINE_AA)
        cv2.circle(canvas, start, radius, colour, -1, cv2.LINE_AA)
    return canvas


def add_caption(rgb: np.ndarray, text: str, height: int = 16) -> np.ndarray:
    """The image with a black band of ``height`` pixels on top holding ``text`` in white."""
    band = np.zeros((height, rgb.shape[1], 3), np.uint8)
    scale = height / 32
    text_width = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0]
    scale *= min(1.0, (rgb.shape[1] - 6) / text_width)  # shrink to fit narrow images
    cv2.putText(band, text, (3, int(height * 0.75)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([band, rgb], axis=0)


def figure_to_rgb(fig: Figure) -> np.ndarray:
    """Render a Matplotlib figure on an Agg canvas: (H, W, 3) uint8 RGB."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def plot_cumulative_errors(
    errors: dict[str, np.ndarray], threshold: float, xlabel: str, xmax: float | None = None
) -> np.ndarray:
    """Cumulative error curves: for each named error array (B,), the share of pairs whose error is at
    most x, for x in [0, xmax] (default 5 x threshold); the success threshold is drawn dashed."""
    xmax = 5 * threshold if xmax is None else xmax
    fig = Figure(figsize=(5, 3.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for name, values in errors.items():
        values = np.sort(np.asarray(values, np.float64))
        shares = np.arange(1, len(values) + 1) / len(values)
        ax.step(np.concatenate([[0], values]), np.concatenate([[0], shares]), where="post", label=name)
    ax.axvline(threshold, color="grey", linestyle="--", linewidth=1)
    ax.set(xlim=(0, xmax), ylim=(0, 1.02), xlabel=xlabel, ylabel="share of pairs with error <= x")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return figure_to_rgb(fig)


def plot_accuracy_vs_thresholds(
    errors: dict[str, dict[str, np.ndarray]], rte_thresh: float, rre_thresh: float, steps: int = 200
) -> np.ndarray:
    """Acc as a function of the RTE threshold (RRE threshold fixed at ``rre_thresh``, left) and of the
    RRE threshold (RTE threshold fixed at ``rte_thresh``, right). errors: name -> ``registration_errors``
    dict (``rte`` in metres, ``rre`` in degrees, each (B,)); the protocol thresholds are drawn dashed."""
    fig = Figure(figsize=(9, 3.5), dpi=100, layout="constrained")
    left, right = fig.subplots(1, 2, sharey=True)
    rte_grid = np.linspace(0, 5 * rte_thresh, steps)
    rre_grid = np.linspace(0, 5 * rre_thresh, steps)
    for name, e in errors.items():
        rte, rre = np.asarray(e["rte"])[:, None], np.asarray(e["rre"])[:, None]
        left.plot(rte_grid, ((rte < rte_grid) & (rre < rre_thresh)).mean(0), label=name)
        right.plot(rre_grid, ((rte < rte_thresh) & (rre < rre_grid)).mean(0), label=name)
    left.set(xlabel=f"RTE threshold (m), RRE < {rre_thresh:g} deg", ylabel="Acc", ylim=(0, 1.02))
    right.set(xlabel=f"RRE threshold (deg), RTE < {rte_thresh:g} m")
    for ax, threshold in ((left, rte_thresh), (right, rre_thresh)):
        ax.axvline(threshold, color="grey", linestyle="--", linewidth=1)
        ax.grid(alpha=0.3)
    right.legend(loc="lower right")
    return figure_to_rgb(fig)


def plot_overlap(
    xyz: np.ndarray | torch.Tensor,
    T: np.ndarray | torch.Tensor,
    K: np.ndarray | torch.Tensor,
    image_size: tuple[int, int],
    masks: dict[str, np.ndarray | torch.Tensor],
    extent: float | None = None,
) -> np.ndarray:
    """Overlap detection in a bird's-eye view, one panel per named point mask.

    xyz: (M, 3) points of the cloud frame, shown in the camera frame of pose T (4, 4): x right, z
    forward, the camera at the origin, the horizontal edges of its (H, W) = image_size field of view
    under K (3, 3) drawn as lines. masks: name -> (M,) bool, the points to highlight; the first mask is
    the reference, and the other panels' titles give their precision and recall against it.
    extent: half-width in metres of the view (default: the 98th percentile of the points' distance).
    """
    xyz, T, K = (to_numpy(x) for x in (xyz, T, K))
    masks = {name: to_numpy(m).astype(bool) for name, m in masks.items()}
    cam = transform_points(T, xyz)
    extent = float(np.percentile(np.hypot(cam[:, 0], cam[:, 2]), 98)) if extent is None else extent
    reference = next(iter(masks.values()))
    fig = Figure(figsize=(4 * len(masks), 4.8), dpi=100, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(masks)))
    for panel, (ax, (name, mask)) in enumerate(zip(axes, masks.items())):
        ax.scatter(cam[~mask, 0], cam[~mask, 2], s=2, c="lightgrey", linewidths=0)
        ax.scatter(cam[mask, 0], cam[mask, 2], s=3, c="tab:red", linewidths=0)
        for u in (-0.5, image_size[1] - 0.5):  # the image's left and right edges
            slope = (u - K[0, 2]) / K[0, 0]  # x / z along the edge
            ax.plot([0, slope * 2 * extent], [0, 2 * extent], color="tab:blue", linewidth=1)
        ax.plot(0, 0, marker="^", color="tab:blue")
        title = f"{name}: {mask.sum()} points"
        if panel > 0:
            hits = (mask & reference).sum()
            title += f"\nprecision {hits / max(mask.sum(), 1):.2f}, recall {hits / max(reference.sum(), 1):.2f}"
        ax.set(title=title, xlim=(-extent, extent), ylim=(-extent, extent), xlabel="x (m)", aspect="equal")
    axes[0].set_ylabel("z (m), forward")
    return figure_to_rgb(fig)


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
    write_bytes(path, encoded.tobytes())
