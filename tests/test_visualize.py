"""Projection overlays and atomic image writing."""

from pathlib import Path

import cv2
import matplotlib
import numpy as np
import pytest
import torch

from i2preg.errors import InputError
from i2preg.geometry import make_transform
from i2preg.visualize import draw_projection, save_image

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kitti_object_sample" / "training"
K = np.array([[100.0, 0, 32], [0, 100.0, 24], [0, 0, 1]])


def colour(name, value):
    return np.rint(np.array(matplotlib.colormaps[name](value)[:3]) * 255).astype(np.uint8)


def test_points_land_on_their_pixels_coloured_by_depth():
    image = np.zeros((48, 64, 3), np.uint8)
    points = np.array([[0.0, 0, 2], [0.5, 0.2, 10], [0, 0, -3]])  # the last is behind the camera
    rgb = draw_projection(image, points, np.eye(4), K, depth_range=(2, 10), radius=0)
    assert rgb.dtype == np.uint8 and rgb.shape == (48, 64, 3) and image.max() == 0
    np.testing.assert_array_equal(rgb[24, 32], colour("turbo", 0.0))
    np.testing.assert_array_equal(rgb[26, 37], colour("turbo", 1.0))
    assert (rgb.sum(-1) > 0).sum() == 2


def test_pose_moves_the_points_and_nearer_points_win():
    points = np.array([[0.0, 0, 1], [0.0, 0, 9]])  # both on the optical axis after the pose
    T = make_transform(np.eye(3), np.array([0.0, 0, 1]))
    rgb = draw_projection(np.zeros((48, 64, 3), np.uint8), points, T, K, depth_range=(2, 10), radius=2)
    np.testing.assert_array_equal(rgb[24, 32], colour("turbo", 0.0))


def test_accepts_sample_tensors():
    image = torch.full((3, 48, 64), 0.5)
    rgb = draw_projection(image, torch.tensor([[0.0, 0, 5]]), torch.eye(4), torch.tensor(K), radius=0)
    assert rgb.shape == (48, 64, 3) and rgb[0, 0].tolist() == [128, 128, 128]
    assert rgb[24, 32].tolist() != [128, 128, 128]


def test_save_image_round_trip_and_atomic(tmp_path):
    rgb = np.zeros((5, 7, 3), np.uint8)
    rgb[..., 0] = 255
    path = tmp_path / "figures" / "red.png"
    save_image(path, rgb)
    np.testing.assert_array_equal(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), rgb)
    assert [p.name for p in path.parent.iterdir()] == ["red.png"]
    with pytest.raises(InputError, match="red.nope"):
        save_image(tmp_path / "red.nope", rgb)
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="no real KITTI sample at ../shared/data")
def test_real_overlay(tmp_path):
    from i2preg.data.kitti import KittiObject

    frames = KittiObject(SAMPLE)
    calibration = frames.calibration(0)[2]
    image = frames.image(0, 2)
    rgb = draw_projection(image, frames.points(0)[:, :3], calibration.T_cam_velo, calibration.K)
    changed = (rgb != image).any(-1)
    assert rgb.shape == image.shape and 0.05 < changed.mean() < 0.9
    assert changed[: image.shape[0] // 4].mean() < changed[image.shape[0] // 2 :].mean()  # LiDAR misses the sky
