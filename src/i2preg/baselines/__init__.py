"""Baselines measured beside ICL: explicit 2D-3D matching + PnP-RANSAC (CorrI2P / VP2P-Match style)."""

from .matching import (
           MatchingNet,
           estimate_poses,
           match,
           mutual_nearest_neighbors,
)
from .pnp import PNP_DEFAULTS, pnp_poses, solve_pnp_ransac

__all__ = ["PNP_DEFAULTS", "MatchingNet", "estimate_poses", "match", "mutual_nearest_neighbors",
           "pnp_poses", "solve_pnp_ransac"]
