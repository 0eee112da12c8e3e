"""Regenerate the figures of docs/: ``python docs/make_figures.py``.

Each figure is one function ``figure_<name>(out_dir) -> Path | None`` listed in ``FIGURES``; a figure
whose input is unavailable is skipped with a message (None).
"""

from __future__ import annotations

import importlib.util
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


def figure_synthetic(out_dir: Path) -> Path | None:
    """docs/overlay_synthetic.png: a generated frame (KITTI odometry layout), ground-truth projection."""
    if importlib.util.find_spec("i2preg.data.synthetic") is None:
        return None
    from i2preg.data import synthetic
    from i2preg.data.kitti import KittiOdometry

    if not hasattr(synthetic, "generate_dataset"):
        print("skip overlay_synthetic.png: i2preg.data.synthetic.generate_dataset is not there yet")
        return None
    with tempfile.TemporaryDirectory() as root:
        synthetic.generate_dataset(root, sequences=["00"], frames=1, seed=0)
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
