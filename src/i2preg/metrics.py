"""The benchmark metrics shared by DeepI2P, CorrI2P, VP2P-Match and ICL (METHOD section 3).

``P_diff = inv(T_pred) @ T_gt``; RTE is the norm of its translation, RRE the sum of the absolute
Euler angles of its rotation (SciPy order 'xzy', degrees), and a pair counts as a success when
RTE < 2 m and RRE < 5 deg. Statistics are always over ALL pairs, never over successes only.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from .geometry import invert_transform, rotation_angle

ACC_RTE_M = 2.0
ACC_RRE_DEG = 5.0


def registration_errors(T_pred: np.ndarray, T_gt: np.ndarray) -> dict[str, np.ndarray]:
    """Per-pair errors of predicted poses against ground truth, both (B, 4, 4) or (4, 4).

    Returns ``rte`` (metres), ``rre`` (degrees, the protocol's Euler-angle sum) and
    ``rre_geodesic`` (degrees, the rotation angle of P_diff), each of shape (B,).
    """
    T_pred = np.asarray(T_pred, dtype=np.float64).reshape(-1, 4, 4)
    T_gt = np.asarray(T_gt, dtype=np.float64).reshape(-1, 4, 4)
    diff = invert_transform(T_pred) @ T_gt
    rte = np.linalg.norm(diff[:, :3, 3], axis=-1)
    # Project onto SO(3) first: float32 predictions are not exactly orthonormal.
    rotations = Rotation.from_matrix(diff[:, :3, :3])
    rre = np.abs(rotations.as_euler("xzy", degrees=True)).sum(axis=-1)
    rre_geodesic = np.degrees(rotation_angle(rotations.as_matrix()))
    return {"rte": rte, "rre": rre, "rre_geodesic": rre_geodesic}


def centre_offsets(T_pred: np.ndarray, T_gt: np.ndarray) -> np.ndarray:
    """(B, 3) metres: the predicted camera centre minus the true one, in the true camera's axes (x right, y down,
    z forward), for poses (B, 4, 4) or (4, 4) cloud -> camera. Unlike the RTE, it does not grow with the rotation
    error times the distance of the cloud frame's origin."""
    T_pred = np.asarray(T_pred, dtype=np.float64).reshape(-1, 4, 4)
    T_gt = np.asarray(T_gt, dtype=np.float64).reshape(-1, 4, 4)
    centres = invert_transform(T_pred)[:, :3, 3] - invert_transform(T_gt)[:, :3, 3]  # cloud frame
    return np.einsum("bij,bj->bi", T_gt[:, :3, :3], centres)


def yaw_offsets(T_pred: np.ndarray, T_gt: np.ndarray) -> np.ndarray:
    """(B,) degrees: how far to the right of the true camera's optical axis the predicted camera looks (negative: to
    the left), the angle of the predicted optical axis about the true camera's y axis (down), in the true camera's
    x-z plane; poses (B, 4, 4) or (4, 4) cloud -> camera. With ``centre_offsets``' x it shows a pose that slid along
    the direction its image barely tells apart: a camera too far right that also looks too far left sees distant
    points where the true one does."""
    T_pred = np.asarray(T_pred, dtype=np.float64).reshape(-1, 4, 4)
    T_gt = np.asarray(T_gt, dtype=np.float64).reshape(-1, 4, 4)
    axis = np.einsum("bij,bkj->bik", T_gt[:, :3, :3], T_pred[:, :3, :3])[:, :, 2]  # R_gt R_pred^T (0, 0, 1)
    return np.degrees(np.arctan2(axis[:, 0], axis[:, 2]))


def success(errors: dict[str, np.ndarray], rte_thresh: float = ACC_RTE_M, rre_thresh: float = ACC_RRE_DEG) -> np.ndarray:
    """(B,) bool: the pairs whose RTE and (Euler-sum) RRE are below the thresholds."""
    return (errors["rte"] < rte_thresh) & (errors["rre"] < rre_thresh)


def summarize(
    errors: dict[str, np.ndarray], rte_thresh: float = ACC_RTE_M, rre_thresh: float = ACC_RRE_DEG
) -> dict[str, float]:
    """Mean, standard deviation and median of every error over ALL pairs, plus Acc (a fraction) and the count."""
    out: dict[str, float] = {"pairs": int(len(errors["rte"]))}
    for name in ("rte", "rre", "rre_geodesic"):
        values = np.asarray(errors[name], dtype=np.float64)
        out[f"{name}_mean"] = float(values.mean()) if values.size else float("nan")
        out[f"{name}_std"] = float(values.std()) if values.size else float("nan")
        out[f"{name}_median"] = float(np.median(values)) if values.size else float("nan")
    out["acc"] = float(success(errors, rte_thresh, rre_thresh).mean()) if len(errors["rte"]) else float("nan")
    return out


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """Markdown table in the paper's format, one row per method: RTE and RRE mean +- std (median), Acc."""
    lines = [
        "| method | RTE (m) | RRE (deg) | RRE geodesic (deg) | Acc | pairs |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in rows.items():
        lines.append(
            f"| {name} | {s['rte_mean']:.2f} +- {s['rte_std']:.2f} ({s['rte_median']:.2f}) "
            f"| {s['rre_mean']:.2f} +- {s['rre_std']:.2f} ({s['rre_median']:.2f}) "
            f"| {s['rre_geodesic_mean']:.2f} ({s['rre_geodesic_median']:.2f}) "
            f"| {100 * s['acc']:.2f} % | {s['pairs']} |"
        )
    return "\n".join(lines)
