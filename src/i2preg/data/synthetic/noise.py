"""Stateless integer hashing and value noise: the procedural textures' source of randomness.

Every function is a pure function of its integer keys, so a texture looks the same from every
frame and every camera, and the same on every platform.
"""

from __future__ import annotations

import numpy as np

_MIX1 = np.uint32(0x85EBCA6B)
_MIX2 = np.uint32(0xC2B2AE35)
_GOLDEN = np.uint32(0x9E3779B1)


def hash_uint(*keys: np.ndarray | int) -> np.ndarray:
    """uint32 hash of integer keys (broadcast together); negative keys wrap modulo 2^32."""
    h = np.uint32(0)
    with np.errstate(over="ignore"):  # uint32 arithmetic wraps by design
        for key in keys:
            h = (h ^ np.asarray(key, dtype=np.int64).astype(np.uint32)) * _GOLDEN
            h ^= h >> np.uint32(16)
            h *= _MIX1
            h ^= h >> np.uint32(13)
            h *= _MIX2
            h ^= h >> np.uint32(16)
    return np.asarray(h)


def hash_uniform(*keys: np.ndarray | int) -> np.ndarray:
    """Uniform float32 in [0, 1) from integer keys (see ``hash_uint``)."""
    return (hash_uint(*keys) >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / (1 << 24))


def cell_noise(seed: int, x: np.ndarray, y: np.ndarray, size: float) -> np.ndarray:
    """One uniform [0, 1) value per square cell of side ``size`` (m) at points (x, y) (N,)."""
    return hash_uniform(seed, np.floor(x / size).astype(np.int64), np.floor(y / size).astype(np.int64))


def value_noise(seed: int, x: np.ndarray, y: np.ndarray, size: float) -> np.ndarray:
    """Smooth 2-D value noise in [0, 1) with feature size ``size`` (m) at points (x, y) (N,)."""
    x = np.asarray(x, np.float32) / np.float32(size)
    y = np.asarray(y, np.float32) / np.float32(size)
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    ix, iy = x0.astype(np.int64), y0.astype(np.int64)
    c00, c10 = hash_uniform(seed, ix, iy), hash_uniform(seed, ix + 1, iy)
    c01, c11 = hash_uniform(seed, ix, iy + 1), hash_uniform(seed, ix + 1, iy + 1)
    bottom = c00 + (c10 - c00) * fx
    top = c01 + (c11 - c01) * fx
    return bottom + (top - bottom) * fy
