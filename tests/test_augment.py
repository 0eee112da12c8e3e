"""Photometric augmentation: seeded, shape and dtype kept, geometry (K, points, pose) untouched."""

import numpy as np
import pytest

from i2preg.data.augment import PHOTOMETRIC_DEFAULTS, linear_to_srgb, photometric_augment, srgb_to_linear
from i2preg.data.kitti import Calibration, CameraCalibration, FrameId
from i2preg.data.pairs import KittiPairs

K = np.array([[350.0, 0.0, 256.0], [0.0, 350.0, 80.0], [0.0, 0.0, 1.0]])
IDENTITY = {"exposure": [0.0, 0.0], "white_balance": 0.0, "vignetting": [0.0, 0.0], "blur": [0.0, 0.0],
            "shot_noise": [0.0, 0.0], "read_noise": [0.0, 0.0], "gamma": [1.0, 1.0], "saturation": [1.0, 1.0],
            "jpeg_probability": 0.0}


def textured_image(height=160, width=512, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_same_seed_same_image_other_seed_other_image():
    image = textured_image()
    a = photometric_augment(image, K, PHOTOMETRIC_DEFAULTS, np.random.default_rng(5))
    b = photometric_augment(image, K, PHOTOMETRIC_DEFAULTS, np.random.default_rng(5))
    c = photometric_augment(image, K, PHOTOMETRIC_DEFAULTS, np.random.default_rng(6))
    assert a.shape == image.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, image)


def test_identity_ranges_give_back_the_image():
    image = textured_image()
    out = photometric_augment(image, K, IDENTITY, np.random.default_rng(1))
    assert np.abs(out.astype(int) - image).max() <= 1  # the sRGB round trip, to a level


def test_srgb_round_trip():
    values = np.linspace(0, 1, 1001, dtype=np.float32)
    np.testing.assert_allclose(linear_to_srgb(srgb_to_linear(values)), values, atol=1e-5)


def test_exposure_scales_brightness_in_linear_light():
    image = np.full((160, 512, 3), 100, np.uint8)
    brighter = photometric_augment(image, K, {**IDENTITY, "exposure": [1.0, 1.0]}, np.random.default_rng(0))
    expected = 255 * linear_to_srgb(2 * srgb_to_linear(np.float32(100 / 255)))
    assert np.abs(brighter.astype(float) - expected).max() <= 1


def test_vignetting_darkens_away_from_the_principal_point():
    image = np.full((160, 512, 3), 200, np.uint8)
    out = photometric_augment(image, K, {**IDENTITY, "vignetting": [0.6, 0.6]}, np.random.default_rng(0))
    assert out[80, 256].min() >= 199  # at the principal point: no fall-off
    assert out[0, 0].max() < out[80, 128].min() < out[80, 256].min()


def test_jpeg_and_noise_keep_the_range_and_shape():
    image = textured_image(100, 300)
    cfg = {**PHOTOMETRIC_DEFAULTS, "jpeg_probability": 1.0, "shot_noise": [0.05, 0.05], "read_noise": [0.02, 0.02]}
    out = photometric_augment(image, K, cfg, np.random.default_rng(2))
    assert out.shape == (100, 300, 3) and out.dtype == np.uint8


class TexturedFrames:
    """Two frames with random textures and clouds, the reader interface of KittiPairs."""

    def __init__(self):
        rng = np.random.default_rng(0)
        self.frames = [FrameId("00", i) for i in range(2)]
        self.clouds = [np.c_[rng.uniform([-20, -20, -2], [20, 20, 1], (3000, 3)), rng.uniform(0, 1, 3000)]
                       .astype(np.float32) for _ in range(2)]
        T_cam_velo = np.array([[0.0, -1, 0, 0.06], [0, 0, -1, -0.1], [1, 0, 0, -0.3], [0, 0, 0, 1]])
        calib_K = np.array([[700.0, 0.0, 610.0], [0.0, 700.0, 185.0], [0.0, 0.0, 1.0]])
        self.calib = Calibration({c: CameraCalibration(calib_K, T_cam_velo) for c in (2, 3)}, "fake")

    def __len__(self):
        return len(self.frames)

    def image(self, i, camera):
        return textured_image(375, 1242, seed=10 * i + camera)

    def points(self, i):
        return self.clouds[i]

    def calibration(self, i):
        return self.calib


@pytest.mark.parametrize("key", [(3, 1), (0, 2)])
def test_training_pairs_change_only_the_image(key):
    plain = KittiPairs(TexturedFrames(), {"num_points": 512}, train=True)
    augmented = KittiPairs(TexturedFrames(), {"num_points": 512, "photometric": {"enabled": True}}, train=True)
    a, b, again = plain.pair(key)[0], augmented.pair(key)[0], augmented.pair(key)[0]
    for name in ("K", "points", "intensity", "T_gt", "source_index"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.crop_offset == b.crop_offset
    assert b.image.shape == a.image.shape and b.image.dtype == np.uint8
    assert not np.array_equal(a.image, b.image)
    np.testing.assert_array_equal(b.image, again.image)


def test_evaluation_pairs_are_never_augmented():
    plain = KittiPairs(TexturedFrames(), {"num_points": 512})
    augmented = KittiPairs(TexturedFrames(), {"num_points": 512, "photometric": {"enabled": True}})
    np.testing.assert_array_equal(plain.pair(1)[0].image, augmented.pair(1)[0].image)
