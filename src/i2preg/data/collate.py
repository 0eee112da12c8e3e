"""Batching: stack the samples and add the point encoder's pyramid, computed on the data side (NumPy / SciPy).

Every tensor is batch-major with a fixed size per level, L = len(model.point_encoder.widths), k = num_neighbors:
- ``image`` (B, 3, H, W), ``K`` (B, 3, 3), ``points`` (B, N, 3), ``intensity`` (B, N), ``T_gt`` (B, 4, 4),
  ``resampled`` (B,) bool, ``meta``: list of B dicts; ``dense_points``: list of B tensors (D_b, 3), cloud frame,
  when every sample has them (evaluation pairs, for ``refine``); ``yaw_prior`` (B, 2), a yaw and its tolerance
  (rad), when every sample has one (``api.Registrator``'s prior pose, for GPDM's pose search); ``centre_prior``
  (B, 2), a camera centre (c_x, c_z) about which that search looks, likewise (``single_sweep``); ``ground`` (B, 4)
  the ground plane (n, d), n . p = d, of each sample's points (``Collate.ground``), whose heights the searches read.
- ``draws`` (int), when the items are lists of D samples of one pair each (``eval.point_draws``: the same image
  with D draws of its point sample): the D samples of each pair are consecutive rows (B = pairs x D).
- ``pyramid_xyz``: L tensors (B, M_l, 3), cloud frame. Level 0 is ``points`` (M_0 = N); level l >= 1 takes
  the centroids of a voxel grid of size ``voxel_size * 2**l`` over level l-1 and resamples them to exactly
  M_l = ``subsample_sizes[l-1]`` (evenly spaced in voxel order; repeated when there are fewer voxels).
- ``pyramid_neighbors``: L int64 tensors (B, M_l, k), the k nearest level-l points of each level-l point
  (itself included), nearest first.
- ``pyramid_pools``: L-1 int64 tensors (B, M_l, k) for l = 1..L-1, the k nearest level-(l-1) points.
- ``pyramid_upsamples``: L-1 int64 tensors (B, M_{l-1}) for l = 1..L-1, the nearest level-l point.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree

from ..config import deep_update
from ..geometry import ground_plane
from ..model.icl import ICL


def voxel_subsample(xyz: np.ndarray, voxel_size: float, size: int) -> np.ndarray:
    """Centroids of the occupied cells of a voxel grid over xyz (N, 3), resampled to exactly (size, 3)."""
    cells = np.floor(xyz / voxel_size).astype(np.int64)
    cells -= cells.min(axis=0)
    extent = cells.max(axis=0) + 1
    keys = (cells[:, 0] * extent[1] + cells[:, 1]) * extent[2] + cells[:, 2]
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    centroids = np.stack([np.bincount(inverse, weights=xyz[:, i]) for i in range(3)], axis=1) / counts[:, None]
    keep = np.linspace(0, len(centroids) - 1, size).round().astype(np.int64)
    return centroids[keep].astype(np.float32)


def pyramid_levels(points: np.ndarray, voxel_size: float, subsample_sizes: list[int]) -> list[np.ndarray]:
    """The level points of one cloud (N, 3): [(N, 3), (M_1, 3), ...] float32, cloud frame."""
    xyz = [np.asarray(points, dtype=np.float32)]
    for level, size in enumerate(subsample_sizes, start=1):
        xyz.append(voxel_subsample(xyz[-1], voxel_size * 2**level, size))
    return xyz


def pyramid_indices(xyz: list[np.ndarray], num_neighbors: int, workers: int = 1) -> dict:
    """The neighbour, pool and upsample indices of the level points ``xyz`` (``pyramid_levels``): the index keys
    of the module docstring without the batch dimension. workers: threads of the kNN queries (SciPy's; -1: every
    core), which answer each query alone, so that the indices do not depend on it."""
    trees = [cKDTree(x) for x in xyz]
    pyramid = {"pyramid_neighbors": [], "pyramid_pools": [], "pyramid_upsamples": []}
    for level, tree in enumerate(trees):
        pyramid["pyramid_neighbors"].append(tree.query(xyz[level], num_neighbors, workers=workers)[1])
        if level > 0:
            pyramid["pyramid_pools"].append(trees[level - 1].query(xyz[level], num_neighbors, workers=workers)[1])
            pyramid["pyramid_upsamples"].append(tree.query(xyz[level - 1], 1, workers=workers)[1])
    return pyramid


def build_pyramid(points: np.ndarray, voxel_size: float, subsample_sizes: list[int], num_neighbors: int,
                  workers: int = 1) -> dict:
    """Pyramid of one cloud (N, 3): the keys of the module docstring without the batch dimension (workers: as
    ``pyramid_indices``)."""
    xyz = pyramid_levels(points, voxel_size, subsample_sizes)
    return {"pyramid_xyz": xyz, **pyramid_indices(xyz, num_neighbors, workers)}


class Collate:
    """``DataLoader(collate_fn=Collate(model_conf))``: samples (dicts of the dataset) -> one batch dict.

    knn_workers: threads of the pyramid's kNN queries (``pyramid_indices``): 1 in DataLoader workers, which run
    beside the training or inference in the main process; -1 (every core) where the collate runs in the main
    process between network batches (``Registrator``)."""

    def __init__(self, model_conf: dict | None = None, knn_workers: int = 1):
        self.knn_workers = knn_workers
        conf = deep_update(ICL.default_conf, model_conf or {})
        encoder = conf["point_encoder"]
        self.voxel_size = encoder["voxel_size"]
        self.subsample_sizes = list(encoder["subsample_sizes"])
        self.num_neighbors = encoder["num_neighbors"]
        self.ground_y = conf["ground_y"]
        if len(self.subsample_sizes) != len(encoder["widths"]) - 1:
            raise ValueError("point_encoder.subsample_sizes needs one entry per level after the first")

    def ground(self, points) -> np.ndarray:
        """(4,) the ground plane (n, d) of a network input cloud (N, 3) (``geometry.ground_plane``), or the level
        plane at the model's ``ground_y`` where no plane holds a tenth of its points."""
        plane = ground_plane(np.asarray(points, dtype=np.float64))
        return np.array([0.0, 1.0, 0.0, self.ground_y]) if plane is None else plane

    def __call__(self, samples: list[dict] | list[list[dict]]) -> dict:
        draws = None
        if samples and isinstance(samples[0], list):
            draws = len(samples[0])
            if any(len(draw) != draws for draw in samples):
                raise ValueError("every pair of a batch needs the same number of point draws")
            samples = [sample for draw in samples for sample in draw]
        batch = {key: torch.stack([torch.as_tensor(s[key]) for s in samples]) for key in ("image", "K", "points", "intensity", "T_gt")}
        batch["resampled"] = torch.tensor([bool(s["resampled"]) for s in samples])
        batch["meta"] = [s["meta"] for s in samples]
        for key in ("yaw_prior", "centre_prior"):
            if all(key in s for s in samples):
                batch[key] = torch.stack([torch.as_tensor(s[key]) for s in samples])
        batch["ground"] = torch.from_numpy(np.stack([self.ground(s["points"]) for s in samples])).float()
        if all("dense_points" in s for s in samples):
            batch["dense_points"] = [torch.as_tensor(s["dense_points"]) for s in samples]
        pyramids = [
            build_pyramid(s["points"], self.voxel_size, self.subsample_sizes, self.num_neighbors, self.knn_workers)
            for s in samples
        ]
        for key in pyramids[0]:
            batch[key] = [
                torch.from_numpy(np.stack([p[key][level] for p in pyramids])) for level in range(len(pyramids[0][key]))
            ]
        for key in ("pyramid_neighbors", "pyramid_pools", "pyramid_upsamples"):
            batch[key] = [index.long() for index in batch[key]]
        if draws is not None:
            batch["draws"] = draws
        return batch


def first_draws(batch: dict) -> dict:
    """A batch of point draws (``batch["draws"]``: D consecutive rows a pair) -> the batch of each pair's first
    draw, without ``draws``; any other batch as it is."""
    draws = batch.get("draws", 1)
    if draws == 1:
        return batch
    first = {}
    for key, value in batch.items():
        if key.startswith("pyramid_"):  # one tensor a level
            first[key] = [level[::draws] for level in value]
        elif key != "draws":  # a tensor, or a list with one entry a row (meta, dense_points)
            first[key] = value[::draws]
    return first
