"""The collate's point pyramid: its kNN indices on every core equal cKDTree's queries on one."""

import numpy as np
import pytest
from scipy.spatial import cKDTree

from i2preg.data.collate import pyramid_indices, pyramid_levels


def single_thread_indices(xyz, k):
    """The reference: each level's queries on one thread."""
    trees = [cKDTree(x) for x in xyz]
    return {
        "pyramid_neighbors": [tree.query(x, k)[1] for tree, x in zip(trees, xyz)],
        "pyramid_pools": [trees[level - 1].query(xyz[level], k)[1] for level in range(1, len(xyz))],
        "pyramid_upsamples": [trees[level].query(xyz[level - 1], 1)[1] for level in range(1, len(xyz))],
    }


@pytest.mark.parametrize("repeats", [False, True])
def test_pyramid_indices_on_every_core_equal_one_core_queries(repeats):
    """A random street-like cloud; with ``repeats``, a resampled one (points repeated, so distances tie)."""
    rng = np.random.default_rng(4)
    points = rng.uniform([-30, -2, -30], [30, 1, 30], (3000, 3)).astype(np.float32)
    if repeats:
        points = points[rng.integers(0, 1500, 3000)]
    xyz = pyramid_levels(points, 0.3, [1024, 256, 64])
    indices, expected = pyramid_indices(xyz, 16, workers=-1), single_thread_indices(xyz, 16)
    for key, levels in expected.items():
        assert len(indices[key]) == len(levels)
        for got, want in zip(indices[key], levels):
            assert got.dtype == np.int64 and got.shape == want.shape
            np.testing.assert_array_equal(got, want)
