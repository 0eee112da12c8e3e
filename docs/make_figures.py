"""Regenerate the figures of docs/: ``python docs/make_figures.py``.

Each figure is one function ``figure_<name>(out_dir) -> Path | None`` listed in ``FIGURES``; a figure
whose input is unavailable is skipped with a message (None).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from i2preg.visualize import draw_projection, save_image

DOCS = Path(__file__).resolve().parent
KITTI_SAMPLE = DOCS.parent.parent / "shared" / "data" / "kitti_object_sample" / "training"


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


def figure_synthetic(out_dir: Path) -> Path:
    """docs/overlay_synthetic.png: a generated frame (KITTI odometry layout), ground-truth projection."""
    from i2preg.data.kitti import KittiOdometry
    from i2preg.data.synthetic import generate_dataset

    with tempfile.TemporaryDirectory() as root:
        generate_dataset(root, sequences=[0], frames=1, seed=0, progress=False)
        return overlay(KittiOdometry(root, ["00"]), 0, 2, out_dir / "overlay_synthetic.png")


FIGURES = [figure_kitti_real, figure_synthetic]


def main(out_dir: Path = DOCS) -> int:
    for make in FIGURES:
        path = make(out_dir)
        if path is not None:
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
