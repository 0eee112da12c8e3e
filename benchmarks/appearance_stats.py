"""Image and LiDAR statistics of the real sample frames beside the synthetic world's, per appearance.

    python benchmarks/appearance_stats.py [--data ../shared/data] [--seed 100] [--sequences 4] [--frames 3]
                                          [--appearances default varied]

What the synthetic world should cover, measured without registering anything: every image is first
resized to the focal length of a KITTI image at the model's scale (360 px), so that edges and textures
are compared at the size the network sees them. Per group of images (the six KITTI frames, the nuScenes
frame, ``frames`` frames of each of ``sequences`` synthetic sequences per appearance, camera 2 of the
KITTI rig):

- luma mean and standard deviation, HSV saturation mean, R/G/B means (0-255);
- colour histogram intersection with the KITTI frames' (32 bins a channel, pooled over the group,
  mean over the channels; 1 = the same histogram);
- edge density (share of Canny edge pixels, thresholds 50/150) and mean Sobel gradient magnitude;
- LiDAR points in the camera's view: count, depth percentiles 10/50/90 (m) and the share beyond 40 m;
- the street's sides: how far to the camera's right and left the nearest structures stand (the 10th percentile
  of |x| of the points 5-25 m ahead, within 25 m either side and more than 0.65 m above the ground, that is
  less than 1 m below the camera; 25 m where a side has fewer than 20 such points), and the share of images whose
  right side is the nearer: a world driven on the other side of the street would be a mirrored one.

Every number is a mean over the group's images. The real frames are measured, never trained or tuned on.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from i2preg.data.readers import read_calibration_file, read_image_file, read_point_cloud
from i2preg.data.synthetic import SyntheticSequence
from i2preg.data.synthetic.world import APPEARANCES
from i2preg.geometry import project_pose, transform_points

FOCAL_PX = 360.0
"""Images are resized to this focal length before measuring (KITTI's 721 px at the model's scale 0.5)."""
BINS = 32


def image_stats(image: np.ndarray, K: np.ndarray) -> dict[str, float]:
    """Statistics of an (H, W, 3) uint8 RGB image with intrinsics K (3, 3), resized to FOCAL_PX."""
    scale = FOCAL_PX / K[0, 0]
    image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    luma = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    gradient = np.hypot(cv2.Sobel(luma, cv2.CV_32F, 1, 0), cv2.Sobel(luma, cv2.CV_32F, 0, 1))
    means = image.reshape(-1, 3).mean(0)
    return {"luma mean": float(luma.mean()), "luma std": float(luma.std()),
            "saturation": float(cv2.cvtColor(image, cv2.COLOR_RGB2HSV)[..., 1].mean()),
            "R": float(means[0]), "G": float(means[1]), "B": float(means[2]),
            "edge density": float((cv2.Canny(luma, 50, 150) > 0).mean()), "gradient": float(gradient.mean())}


def histogram(image: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Counts (3, BINS) per channel of the image resized as in ``image_stats``."""
    scale = FOCAL_PX / K[0, 0]
    image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return np.stack([np.bincount(image[..., c].ravel() // (256 // BINS), minlength=BINS) for c in range(3)])


def depth_stats(points_cam: np.ndarray, K: np.ndarray, height: int, width: int) -> dict[str, float]:
    """In-view count and depth percentiles of camera-frame points (N, 3) in an image of height x width."""
    inside = project_pose(points_cam, np.eye(4), K, height, width)[2]
    depth = points_cam[inside, 2]
    p10, p50, p90 = np.percentile(depth, [10, 50, 90])
    return {"points in view": float(inside.sum()), "depth p10": float(p10), "depth p50": float(p50),
            "depth p90": float(p90), "beyond 40 m": float((depth > 40).mean()), **side_stats(points_cam)}


SIDE_RANGE_M = 25.0
"""``side_stats`` looks this far to each side of the camera, and this far ahead."""


def side_stats(points_cam: np.ndarray) -> dict[str, float]:
    """How far to the right and left of the camera the nearest structures of camera-frame points (N, 3) stand
    (module docstring), and whether the right is the nearer (1.0) or not (0.0)."""
    x, y, z = points_cam.T
    structure = (z > 5) & (z < SIDE_RANGE_M) & (y < 1.0) & (np.abs(x) < SIDE_RANGE_M)
    sides = []
    for side in (x[structure & (x > 0)], -x[structure & (x < 0)]):
        sides.append(float(np.percentile(side, 10)) if len(side) >= 20 else SIDE_RANGE_M)
    return {"right side": sides[0], "left side": sides[1], "right nearer": float(sides[0] < sides[1])}


def real_frames(data: Path) -> dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """{group: [(image, K, camera-frame points)]} of the real sample frames under ``data``."""
    groups: dict[str, list] = {"KITTI (real)": [], "nuScenes (real)": []}
    kitti = data / "kitti_object_sample" / "training"
    for image in sorted((kitti / "image_2").glob("*.png")):
        calibration = read_calibration_file(kitti / "calib" / f"{image.stem}.txt", 2)
        points = read_point_cloud(kitti / "velodyne" / f"{image.stem}.bin")[0]
        groups["KITTI (real)"].append((read_image_file(image), calibration.K,
                                       transform_points(calibration.T_cam_velo, points.astype(np.float64))))
    nuscenes = data / "nuscenes_sample"
    for image in sorted(nuscenes.glob("*CAM_FRONT*.jpg")):
        calibration = read_calibration_file(nuscenes / "CAM_FRONT_K.txt", 2, nuscenes / "CAM_FRONT_lidar2cam.txt")
        points = read_point_cloud(next(iter(sorted(nuscenes.glob("*LIDAR_TOP*.pcd.bin")))))[0]
        groups["nuScenes (real)"].append((read_image_file(image), calibration.K,
                                          transform_points(calibration.T_cam_velo, points.astype(np.float64))))
    return {name: frames for name, frames in groups.items() if frames}


def synthetic_frames(appearance: str, seed: int, sequences: int, frames: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(image, K, camera-frame points) of camera 2 at ``frames`` evenly spaced frames of 25-frame sequences."""
    found = []
    for sequence in range(sequences):
        seq = SyntheticSequence(seed, sequence, 25, "kitti", appearance)
        T_cam2_lidar = np.linalg.inv(seq.rig.T_cam0_cam(2)) @ seq.rig.Tr
        for frame in np.linspace(0, 24, frames).astype(int):
            rgb, _ = seq.render(int(frame), 2)
            points = seq.scan(int(frame))[:, :3].astype(np.float64)
            found.append((rgb, seq.rig.K, transform_points(T_cam2_lidar, points)))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data", help="the shared sample frames")
    parser.add_argument("--seed", type=int, default=100, help="seed of the synthetic sequences")
    parser.add_argument("--sequences", type=int, default=4)
    parser.add_argument("--frames", type=int, default=3, help="frames measured per synthetic sequence")
    parser.add_argument("--appearances", nargs="+", choices=APPEARANCES, default=list(APPEARANCES),
                        help="the synthetic appearances measured")
    args = parser.parse_args()

    groups = real_frames(Path(args.data))
    if "KITTI (real)" not in groups:
        raise SystemExit(f"no KITTI sample frames under {args.data}")
    for appearance in args.appearances:
        groups[f"synthetic {appearance}"] = synthetic_frames(appearance, args.seed, args.sequences, args.frames)

    histograms = {name: sum(histogram(image, K) for image, K, _ in frames) for name, frames in groups.items()}
    reference = histograms["KITTI (real)"] / histograms["KITTI (real)"].sum(1, keepdims=True)
    rows = {}
    for name, frames in groups.items():
        stats = [{**image_stats(image, K), **depth_stats(points, K, *image.shape[:2])} for image, K, points in frames]
        row = {key: float(np.mean([s[key] for s in stats])) for key in stats[0]}
        pooled = histograms[name] / histograms[name].sum(1, keepdims=True)
        row["histogram vs KITTI"] = float(np.minimum(pooled, reference).sum(1).mean())
        rows[f"{name} ({len(frames)})"] = row

    columns = list(next(iter(rows.values())))
    print("| images | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(f"{row[c]:,.0f}" if c == "points in view" else f"{row[c]:.3f}"
                                           if c in ("edge density", "beyond 40 m", "histogram vs KITTI", "right nearer") else f"{row[c]:.1f}"
                                           for c in columns) + " |")
    print(f"\nsynthetic: seed {args.seed}, sequences 0-{args.sequences - 1}, {args.frames} frames each, camera 2, KITTI rig")


if __name__ == "__main__":
    main()
