"""Speed of the synthetic street generator on ONE CPU core, for both sensor presets.

Usage: python benchmarks/synth_speed.py [--frames 8] [--seed 0] [--appearance default varied]

Pins the process to one core before Embree starts, generates a few frames per preset exactly as
``i2preg synth`` does (both camera images, the LiDAR scan, PNG/bin writing), per appearance (their
frames interleaved, with the per-frame time ratio printed), and prints a Markdown table. World building (route, mesh, Embree BVH) is timed separately, also for a long sequence, whose
per-frame share is what it adds to a real dataset.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # before any thread pool starts

import numpy as np  # noqa: E402

from i2preg.data.synthetic import SyntheticSequence  # noqa: E402
from i2preg.data.synthetic.world import APPEARANCES  # noqa: E402


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def points_in_view(seq: SyntheticSequence, points: np.ndarray) -> int:
    rig = seq.rig
    h = np.c_[points[:, :3], np.ones(len(points))] @ (rig.P[2] @ rig.Tr).T
    z = h[:, 2]
    uv = h[:, :2] / np.where(z > 0, z, 1)[:, None]
    inside = (z > 0) & (uv[:, 0] >= -0.5) & (uv[:, 0] < rig.width - 0.5) & (uv[:, 1] >= -0.5) & (uv[:, 1] < rig.height - 0.5)
    return int(inside.sum())


def build(seed: int, frames: int, sensor: str, appearance: str = "default") -> tuple[SyntheticSequence, float]:
    start = time.perf_counter()
    seq = SyntheticSequence(seed, 0, frames, sensor, appearance)
    seq.caster  # noqa: B018 - builds the world and its BVH
    return seq, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--long", type=int, default=1000, help="frames of the long sequence whose world build is timed")
    parser.add_argument("--appearance", nargs="+", choices=APPEARANCES, default=["default"])
    args = parser.parse_args()

    print(f"CPU: {cpu_model()}; {os.cpu_count()} cores, running on {len(os.sched_getaffinity(0))}; "
          f"Python {platform.python_version()}, NumPy {np.__version__}\n")
    print("| appearance | sensor | image | world build (s) | s / frame | rays / s | points / scan | points in view |")
    print("|---|---|---|---|---|---|---|---|")
    ratios = {}
    for sensor in ("kitti", "nuscenes"):
        # The appearances' frames alternate, so that a busy machine slows them alike and their ratio holds.
        built = {appearance: build(args.seed, args.frames, sensor, appearance) for appearance in args.appearance}
        times = {appearance: [] for appearance in args.appearance}
        sizes = {appearance: [] for appearance in args.appearance}
        in_view = {appearance: [] for appearance in args.appearance}
        with tempfile.TemporaryDirectory() as out:
            for frame in range(args.frames):
                for appearance, (seq, _) in built.items():
                    folder = Path(out) / appearance
                    for sub in ("image_2", "image_3", "velodyne"):
                        (folder / sub).mkdir(parents=True, exist_ok=True)
                    seq.camera  # noqa: B018 - per-rig ray table, built once per process
                    start = time.perf_counter()
                    points = seq.write_frame(folder, frame)
                    times[appearance].append(time.perf_counter() - start)
                    sizes[appearance].append(len(points))
                    in_view[appearance].append(points_in_view(seq, points))
        for appearance, (seq, build_s) in built.items():
            rig = seq.rig
            rays = 2 * rig.width * rig.height + len(rig.elevations) * rig.azimuth_steps
            per_frame = float(np.mean(times[appearance]))
            print(f"| {appearance} | {sensor} | {rig.width} x {rig.height} | {build_s:.2f} ({args.frames} frames) "
                  f"| {per_frame:.3f} | {rays / per_frame / 1e6:.2f} M | {np.mean(sizes[appearance]):,.0f} "
                  f"| {np.mean(in_view[appearance]):,.0f} |")
        first = args.appearance[0]
        for appearance in args.appearance[1:]:
            ratios[f"{appearance} / {first}, {sensor}"] = np.median(np.array(times[appearance]) / np.array(times[first]))

    print()
    for appearance in args.appearance:
        _, long_s = build(args.seed, args.long, "kitti", appearance)
        print(f"World build ({appearance}) for a {args.long}-frame sequence: {long_s:.1f} s "
              f"({1000 * long_s / args.long:.1f} ms per frame amortised).")
    print("Rays / s counts both images and the LiDAR scan per frame (not the varied world's shadow rays), end to end.")
    for name, ratio in ratios.items():
        print(f"Time a frame, {name}: {ratio:.2f} (median of the per-frame ratios, frames interleaved).")


if __name__ == "__main__":
    main()
