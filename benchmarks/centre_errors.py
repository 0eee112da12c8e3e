"""Which part of the pose error each pose corrects: across (right), along the optical axis (forward) and in yaw.

    python benchmarks/centre_errors.py outputs/eval [outputs/eval-other ...]

Reads the ``pairs.csv`` that ``i2preg eval`` writes (each pose's camera-centre offset in the true camera's axes and
its yaw offset) and, over the pairs that every pose registers (Acc), prints per axis the median absolute offset of
GPDM's frustum pose, the fine search's pose and the final pose, and the least-squares slope and correlation of the
fine pose's offset against the frustum pose's: a slope of 1 means the fine search keeps GPDM's error along that
axis, 0 that it removes it. Prints Markdown.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from i2preg.evaluate import FINE_POSE, POSES

PREFIX = {name: prefix for name, prefix, _ in (*POSES, FINE_POSE)}
"""Pose -> its columns' prefix in pairs.csv."""
ORDER = ("frustum", "fine", "final")
AXES = {"across (m)": "centre_dx", "forward (m)": "centre_dz", "yaw (deg)": "yaw_offset"}


def columns(path: Path) -> dict[str, np.ndarray]:
    """pairs.csv -> column name -> values (floats; success columns as bool)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {key: np.array([row[key] == "True" if key.endswith("success") else float(row[key]) for row in rows])
            for key in rows[0] if key not in ("sequence", "camera")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("evals", nargs="+", type=Path, help="output folders of i2preg eval")
    args = parser.parse_args()
    print("| eval | pairs | axis | median abs offset: frustum, fine, final | fine on frustum: slope, correlation |")
    print("|---|---|---|---|---|")
    for folder in args.evals:
        c = columns(folder / "pairs.csv")
        kept = np.logical_and.reduce([c[f"{PREFIX[p]}success"] for p in ORDER])
        for axis, key in AXES.items():
            offsets = {p: c[f"{PREFIX[p]}{key}"][kept] for p in ORDER}
            slope = np.polyfit(offsets["frustum"], offsets["fine"], 1)[0]
            corr = np.corrcoef(offsets["frustum"], offsets["fine"])[0, 1]
            medians = ", ".join(f"{np.median(np.abs(offsets[p])):.3f}" for p in ORDER)
            print(f"| {folder} | {kept.sum()} of {len(kept)} | {axis} | {medians} | {slope:.2f}, {corr:.2f} |")


if __name__ == "__main__":
    main()
