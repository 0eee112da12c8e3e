"""Point-cloud operations of the benchmark protocol: voxel downsampling and fixed-size sampling."""

from __future__ import annotations

import numpy as np


def voxel_downsample(points: np.ndarray, voxel: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """Keep one point per occupied voxel of side ``voxel`` (metres).

    points: (N, 3). Returns the sorted indices (M,) of the kept points: the first point of each voxel
    in input order when ``rng`` is None (deterministic), a uniformly random one otherwise (the first in a random
    order). Each point's voxel and its place in that order make one distinct int64 key, so that a plain sort (1.4
    times faster than the stable one ``np.unique`` needs to report first indices) puts each voxel's first point first;
    a cloud too large for such keys is sorted by both (``np.lexsort``).
    """
    n = len(points)
    rank = np.arange(n)  # each point's place in the order
    if rng is not None:
        rank[rng.permutation(n)] = np.arange(n)
    cells = np.floor(points / voxel).astype(np.int64)
    cells -= cells.min(axis=0)
    extent = cells.max(axis=0) + 1
    voxels = (cells[:, 0] * extent[1] + cells[:, 1]) * extent[2] + cells[:, 2]
    if int(voxels.max()) * n + n < 2**63:
        ranked = np.argsort(voxels * n + rank)  # by voxel, then by place in the order
    else:
        ranked = np.lexsort((rank, voxels))
    sorted_voxels = voxels[ranked]
    first = np.ones(n, dtype=bool)
    first[1:] = sorted_voxels[1:] != sorted_voxels[:-1]
    return np.sort(ranked[first])


def distinct_indices(num_available: int, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``limit`` distinct random indices into ``num_available`` points (all of them, shuffled, when there
    are fewer): the dense cloud of ``eval.refine``."""
    return rng.permutation(num_available)[:limit]


def sample_indices(num_available: int, num_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """Exactly ``num_samples`` random indices into ``num_available`` points, in random order.

    Without replacement when there are enough points; otherwise every point once plus random repeats.
    Returns (indices (num_samples,), resampled) where ``resampled`` says that repeats were needed.
    """
    if num_available >= num_samples:
        return rng.choice(num_available, num_samples, replace=False), False
    repeats = rng.choice(num_available, num_samples - num_available, replace=True)
    return rng.permutation(np.concatenate([np.arange(num_available), repeats])), True
