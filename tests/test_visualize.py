"""Projection overlays, correspondences, overlap and error plots, and atomic image writing."""

from pathlib import Path

import cv2
import matplotlib
import numpy as np
import pytest
import torch

from i2preg.errors import InputError
from i2preg.geometry import make_transform
from i2preg.visualize import (
    add_caption,
    draw_correspondences,
    draw_projection,
    plot_accuracy_vs_thresholds,
    plot_cumulative_errors,
    plot_overlap,
    save_image,
)

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



def test_correspondences_join_2d_keypoints_to_projected_3d_keypoints():
    kp_2d = np.array([[10.0, 10], [50.0, 40]])
    kp_3d = np.array([[-1.1, -0.2, 5], [0.0, 0, -5]])  # the first projects to (10, 20); the second is behind
    rgb = draw_correspondences(np.zeros((48, 64, 3), np.uint8), kp_2d, kp_3d, np.eye(4), K, radius=2)
    first, second = (np.rint(np.array(matplotlib.colormaps["hsv"](x)[:3]) * 255) for x in (0.0, 0.5))
    np.testing.assert_array_equal(rgb[10, 10], first)  # the 2D keypoint's disc
    np.testing.assert_allclose(rgb[15, 10], first, atol=40)  # the (antialiased) line half-way to (10, 20)
    assert (np.abs(rgb[18:23, 8:13] - first) < 40).all(-1).any()  # the ring around the projection (10, 20)
    np.testing.assert_array_equal(rgb[40, 50], second)
    assert not (rgb[:, 20:] == first).all(-1).any() and not (rgb[:35] == second).all(-1).any()


def test_caption_adds_a_band_on_top():
    rgb = np.full((20, 40, 3), 7, np.uint8)
    captioned = add_caption(rgb, "a long caption that must shrink to fit", height=12)
    assert captioned.shape == (32, 40, 3) and (captioned[12:] == 7).all() and captioned[:12].max() > 0


def test_plots_render_rgb_figures():
    rng = np.random.default_rng(0)
    errors = {name: {"rte": rng.exponential(1, 50), "rre": rng.exponential(3, 50)} for name in ("final", "frustum")}
    cumulative = plot_cumulative_errors({n: e["rte"] for n, e in errors.items()}, 2.0, "RTE (m)")
    accuracy = plot_accuracy_vs_thresholds(errors, 2.0, 5.0)
    xyz = rng.uniform(-20, 20, (200, 3))
    masks = {"truth": xyz[:, 2] > 0, "prediction": xyz[:, 0] > 0}
    overlap = plot_overlap(xyz, np.eye(4), K, (48, 64), masks)
    for rgb, size in ((cumulative, (350, 500)), (accuracy, (350, 900)), (overlap, (480, 800))):
        assert rgb.dtype == np.uint8 and rgb.shape == (*size, 3) and rgb.min() < 100 < rgb.max()

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
