"""The collate's point pyramid: its kNN indices on every core equal cKDTree's queries on one."""

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from i2preg.data.collate import Collate, pyramid_indices, pyramid_levels
from i2preg.geometry import ground_plane


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


def test_each_cloud_gets_its_ground_plane_or_the_level_one_at_the_model_ground_y():
    rng = np.random.default_rng(0)
    flat = np.c_[rng.uniform(-20, 20, 3000), np.full(3000, 1.4), rng.uniform(0, 40, 3000)]
    leaning = flat @ np.array([[1.0, 0.0, 0.0], [0.0, 0.9998, -0.02], [0.0, 0.02, 0.9998]]).T
    scattered = rng.uniform(-20, 20, (3000, 3))  # no plane holds a tenth of it
    samples = [{"image": torch.zeros(3, 16, 16), "K": torch.eye(3), "points": torch.from_numpy(p).float(),
                "intensity": torch.zeros(3000), "T_gt": torch.eye(4), "resampled": False, "meta": {}}
               for p in (leaning, scattered)]
    collate = Collate({"point_encoder": {"widths": [8, 8], "subsample_sizes": [100]}, "ground_y": 1.6})
    ground = collate(samples)["ground"]
    assert ground.shape == (2, 4) and ground.dtype == torch.float32
    np.testing.assert_allclose(ground[0].numpy(), ground_plane(leaning), atol=1e-6)
    assert abs(float(ground[0, :3] @ torch.tensor([0.0, 0.9998, 0.02])) - 1) < 1e-4  # the leaning ground's normal
    np.testing.assert_array_equal(ground[1].numpy(), np.float32([0.0, 1.0, 0.0, 1.6]))
