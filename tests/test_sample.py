"""The sample pair that ships with the package (i2preg.load_sample): its files, its frames, and that
docs/make_sample.py regenerates it and the bundled model registers it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import i2preg
from i2preg.geometry import invert_transform, project_pose
from i2preg.metrics import registration_errors, success
from i2preg.sample import SAMPLE_DIR
from i2preg.weights import bundled_weights

MAKE_SAMPLE = Path(__file__).resolve().parents[1] / "docs" / "make_sample.py"


@pytest.fixture(scope="module")
def sample() -> i2preg.SamplePair:
    return i2preg.load_sample()


def test_files_and_shapes(sample):
    image, points, K, pose = sample
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert points.dtype == np.float32 and points.ndim == 2 and points.shape[1] == 4
    assert len(points) >= 8192  # at least the bundled model's input size, so nothing is repeated
    assert K.shape == (3, 3) and K[0, 0] > 0 and K[1, 1] > 0 and np.allclose(K[2], [0, 0, 1])
    assert 0 < K[0, 2] < image.shape[1] and 0 < K[1, 2] < image.shape[0]
    size = sum(p.stat().st_size for p in SAMPLE_DIR.iterdir())
    assert size < 2e6, f"the sample's files hold {size} bytes"


def test_pose_is_a_protocol_pose(sample):
    """The true pose is rigid and 3-DoF (yaw about the camera's y axis, planar translation), as the
    benchmark's perturbation makes it."""
    R, t = sample.pose[:3, :3], sample.pose[:3, 3]
    assert np.allclose(R @ R.T, np.eye(3), atol=1e-9) and np.isclose(np.linalg.det(R), 1)
    assert np.allclose(R[1], [0, 1, 0]) and np.allclose(R[:, 1], [0, 1, 0]) and abs(t[1]) < 1e-9
    assert np.allclose(sample.pose[3], [0, 0, 0, 1])


def sky_share(image: np.ndarray, points: np.ndarray, T: np.ndarray, K: np.ndarray) -> tuple[float, float]:
    """(share of the points that land in the image through T, share of those that land on sky pixels)."""
    height, width = image.shape[:2]
    uv, _, inside = project_pose(points[:, :3].astype(np.float64), T, K, height, width)
    u, v = np.round(uv[inside]).astype(int).clip(0, [width - 1, height - 1]).T
    red, blue = image[..., 0].astype(int), image[..., 2].astype(int)
    sky = (blue > red + 25) & (blue > 180)
    return float(inside.mean()), float(sky[v, u].mean())


def test_true_pose_projects_the_points_into_the_image(sample):
    """At the true pose about a camera's field of view of the 360-degree scan lands in the image, and (a
    LiDAR gets no returns from the sky) almost none of it on the sky; through the perturbation itself (the
    pose's inverse: what a writer that mixed them up would ship) several times as much does."""
    image, points, K, pose = sample
    in_image, on_sky = sky_share(image, points, pose, K)
    assert 0.1 < in_image < 0.5
    assert on_sky < 0.002
    assert sky_share(image, points, invert_transform(pose), K)[1] > 3 * on_sky


@pytest.mark.slow
def test_make_sample_regenerates_the_files(sample):
    spec = importlib.util.spec_from_file_location("make_sample", MAKE_SAMPLE)
    make_sample = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_sample)
    image, points, K, pose = make_sample.make_sample()
    assert image.shape == sample.image.shape
    assert np.abs(image.astype(int) - sample.image).mean() < 0.5  # a ray-cast render, up to float noise
    assert points.shape == sample.points.shape
    assert np.allclose(points, sample.points, atol=1e-3)
    assert np.allclose(K, sample.K) and np.allclose(pose, sample.pose)


@pytest.mark.slow
@pytest.mark.skipif(not bundled_weights().is_file(), reason="the bundled model is not installed")
def test_bundled_model_registers_the_sample(sample):
    result = i2preg.Registrator.from_pretrained().register(sample.image, sample.points, sample.K)
    errors = registration_errors(result.pose[None], sample.pose[None])
    assert success(errors)[0], f"RTE {errors['rte'][0]:.2f} m, RRE {errors['rre'][0]:.2f} deg"
