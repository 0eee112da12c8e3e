"""Regenerate the figures of docs/: ``python docs/make_figures.py``.

Each figure is one function ``figure_<name>(out_dir) -> Path | None`` listed in ``FIGURES``; a figure
whose input is unavailable is skipped with a message (None). The ``eval_*.png`` figures are copied from the
output of the bundled model's evaluation (BENCHMARKS.md):
``i2preg eval --data datasets/synthetic-test --out outputs/eval``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import cv2
import numpy as np

from i2preg.visualize import add_caption, draw_projection, save_image

DOCS = Path(__file__).resolve().parent
KITTI_SAMPLE = DOCS.parent.parent / "shared" / "data" / "kitti_object_sample" / "training"
EVAL_OUT = DOCS.parent / "outputs" / "eval"
EVAL_FIGURES = {"eval_keypoints.png": "pair_0000_keypoints.png", "eval_overlap.png": "pair_0000_overlap.png",
                "eval_cumulative_rte.png": "cumulative_rte.png"}


def overlay(frames, index: int, camera: int, path: Path) -> Path:
    """Points of frame ``index`` projected on its ``camera`` image at the ground-truth pose, by depth."""
    calibration = frames.calibration(index)[camera]
    image = frames.image(index, camera)
    rgb = draw_projection(image, frames.points(index)[:, :3], calibration.T_cam_velo, calibration.K,
                          depth_range=(2.0, 50.0))
    save_image(path, rgb)
    return path


def figure_kitti_real(out_dir: Path) -> Path | None:
    """docs/overlay_kitti_real.png: a real KITTI frame (object layout sample), ground-truth projection."""
    from i2preg.data.kitti import KittiObject

    if not KITTI_SAMPLE.is_dir():
        print(f"skip overlay_kitti_real.png: no {KITTI_SAMPLE}")
        return None
    return overlay(KittiObject(KITTI_SAMPLE), 2, 2, out_dir / "overlay_kitti_real.png")


def figure_sample(out_dir: Path) -> Path:
    """docs/sample_registration.png: the bundled sample pair registered by the bundled model (a quarter of
    the cloud projected with the predicted pose, top, and the true pose, bottom), at half size."""
    import i2preg
    from i2preg.data.pairs import resize_intrinsics
    from i2preg.metrics import registration_errors

    image, points, K, pose = i2preg.load_sample()
    result = i2preg.Registrator.from_pretrained().register(image, points, K)
    errors = registration_errors(result.pose, pose)
    half = cv2.resize(image, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    shown = points[np.random.default_rng(0).choice(len(points), len(points) // 4, replace=False), :3]
    panels = []
    for T, caption in ((result.pose, f"predicted: RTE {errors['rte'][0]:.2f} m, RRE {errors['rre'][0]:.2f} deg"),
                       (pose, "ground truth")):
        rgb = draw_projection(half, shown, T, resize_intrinsics(K, 0.5), depth_range=(2.0, 50.0))
        panels.append(add_caption(rgb, caption))
    path = out_dir / "sample_registration.png"
    save_image(path, np.concatenate(panels, axis=0))
    return path


def figure_eval(out_dir: Path) -> Path | None:
    """docs/eval_*.png: the first test pair's pictures and the cumulative RTE of ``i2preg eval``."""
    if not (EVAL_OUT / "cumulative_rte.png").is_file():
        print(f"skip eval_*.png: no evaluation in {EVAL_OUT}")
        return None
    for name, source in EVAL_FIGURES.items():
        shutil.copyfile(EVAL_OUT / source, out_dir / name)
    return out_dir / "eval_*.png"


FIGURES = [figure_kitti_real, figure_sample, figure_eval]


def main(out_dir: Path = DOCS) -> int:
    for make in FIGURES:
        path = make(out_dir)
        if path is not None:
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
