"""Photometric augmentation of training images: a random camera response applied to an 8-bit RGB image.

The image is decoded to linear light (sRGB curve), then, in the order a camera applies them: exposure
(a gain in stops), white balance (a gain per channel), vignetting (radial fall-off about the principal
point, in units of the focal length, so the same for any crop), lens blur (Gaussian), sensor noise (shot
noise growing with the signal plus read noise), re-encoded with a random gamma, a saturation change, 8-bit
quantisation and JPEG compression. Geometry is untouched: the same pixels see the same points, so K and the
pose stay as they are.

Every effect is drawn from the ``rng`` passed in; ranges that contain the identity (0 stops, gamma 1...)
let some images through nearly unchanged. The ``data.photometric`` config section (``PHOTOMETRIC_DEFAULTS``)
sets the ranges; it is off unless ``enabled``.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

PHOTOMETRIC_DEFAULTS: dict[str, Any] = {
    "enabled": False,
    "exposure": [-1.0, 1.0],  # gain in stops (log2), uniform
    "white_balance": 0.15,  # per-channel gain exp(uniform(-a, a)), the mean gain kept at 1
    "vignetting": [0.0, 0.6],  # fall-off 1 / (1 + k r^2) with r = distance from the principal point / focal length
    "blur": [0.0, 1.2],  # Gaussian sigma in pixels (below 0.3: none)
    "shot_noise": [0.0, 0.02],  # std = a * sqrt(linear signal)
    "read_noise": [0.0, 0.01],  # std in linear units
    "gamma": [0.75, 1.35],  # extra exponent on the encoded image (> 1: darker mid-tones)
    "saturation": [0.6, 1.4],  # mix with the grey image: 0 grey, 1 unchanged
    "jpeg_probability": 0.5,
    "jpeg_quality": [35, 95],
}
"""The ``data.photometric`` config section: the ranges of each effect, and whether to apply them."""


def srgb_to_linear(encoded: np.ndarray) -> np.ndarray:
    """Linear light of sRGB-encoded values in [0, 1] (any shape, float32)."""
    return np.where(encoded <= 0.04045, encoded / 12.92, ((encoded + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    """sRGB encoding of linear values in [0, 1] (any shape, float32)."""
    linear = np.clip(linear, 0, 1)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055).astype(np.float32)


_DECODE = srgb_to_linear(np.arange(256, dtype=np.float32) / 255)  # uint8 level -> linear light
_ENCODE_LEVELS = 16384  # linear light is encoded through a table of this many levels


def _uniform(rng: np.random.Generator, bounds) -> float:
    low, high = bounds
    return float(rng.uniform(low, high))


def photometric_augment(image: np.ndarray, K: np.ndarray, cfg: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """A new (H, W, 3) uint8 RGB image: ``image`` (H, W, 3) uint8 RGB seen through a random camera response.

    K: (3, 3) intrinsics of ``image`` (only its principal point and focal length are read, for the
    vignetting). cfg: ``PHOTOMETRIC_DEFAULTS`` keys (missing keys take the defaults; ``enabled`` is not
    read here). The same rng state gives the same image.
    """
    cfg = {**PHOTOMETRIC_DEFAULTS, **cfg}
    height, width = image.shape[:2]
    linear = _DECODE[image]

    white_balance = np.exp(rng.uniform(-cfg["white_balance"], cfg["white_balance"], 3))
    gain = 2.0 ** _uniform(rng, cfg["exposure"]) * white_balance / white_balance.mean()
    linear = linear * gain.astype(np.float32)

    strength = _uniform(rng, cfg["vignetting"])
    u = (np.arange(width, dtype=np.float32) - K[0, 2]) / K[0, 0]
    v = (np.arange(height, dtype=np.float32) - K[1, 2]) / K[1, 1]
    linear *= (1 / (1 + strength * (v[:, None] ** 2 + u[None, :] ** 2)))[..., None]

    sigma = _uniform(rng, cfg["blur"])
    if sigma >= 0.3:
        linear = cv2.GaussianBlur(linear, (0, 0), sigma)

    shot, read = _uniform(rng, cfg["shot_noise"]), _uniform(rng, cfg["read_noise"])
    std = np.sqrt(shot**2 * np.clip(linear, 0, None) + read**2)
    linear = linear + std * rng.standard_normal(linear.shape, dtype=np.float32)

    encode = linear_to_srgb(np.linspace(0, 1, _ENCODE_LEVELS, dtype=np.float32)) ** np.float32(_uniform(rng, cfg["gamma"]))
    encoded = encode[(np.clip(linear, 0, 1) * (_ENCODE_LEVELS - 1) + 0.5).astype(np.intp)]
    grey = encoded @ np.array([0.299, 0.587, 0.114], np.float32)
    encoded = grey[..., None] + np.float32(_uniform(rng, cfg["saturation"])) * (encoded - grey[..., None])
    out = (255 * np.clip(encoded, 0, 1) + 0.5).astype(np.uint8)

    quality = int(rng.integers(cfg["jpeg_quality"][0], cfg["jpeg_quality"][1] + 1))
    if rng.random() < cfg["jpeg_probability"]:
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(out, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        assert ok
        out = cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return out
