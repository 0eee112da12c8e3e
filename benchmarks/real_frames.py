"""The model on real sensor frames: the six KITTI frames and the nuScenes frame of ``../shared/data``.

    python benchmarks/real_frames.py [--weights W] [--data ../shared/data] [--seed 7351] [--out outputs/real]

Each frame goes through ``i2preg register --protocol-seed`` (``api.register_files``): the scan is moved into
the camera frame with the frame's own calibration (the ground truth), perturbed by the protocol with seed
``seed + frame index``, and registered; the errors are those of the protocol. Overlays (predicted, frustum and
true pose) go to ``out/<frame>/``. Prints a Markdown table. The bundled model is trained on synthetic data
only, so these numbers measure the gap from synthetic to real.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from i2preg.api import register_files
from i2preg.data.readers import read_calibration_file, read_image_file, read_point_cloud
from i2preg.geometry import project_pose
from i2preg.metrics import registration_errors


def frames(data: Path) -> list[dict]:
    """The real frames under ``data`` that exist: name, image, points, calib (and extrinsic for nuScenes)."""
    found = []
    kitti = data / "kitti_object_sample" / "training"
    for image in sorted((kitti / "image_2").glob("*.png")):
        found.append({"name": f"kitti {image.stem}", "image": image, "points": kitti / "velodyne" / f"{image.stem}.bin",
                      "calib": kitti / "calib" / f"{image.stem}.txt", "extrinsic": None})
    nuscenes = data / "nuscenes_sample"
    for image in sorted(nuscenes.glob("*CAM_FRONT*.jpg")):
        points = next(iter(sorted(nuscenes.glob("*LIDAR_TOP*.pcd.bin"))))
        found.append({"name": "nuscenes CAM_FRONT", "image": image, "points": points,
                      "calib": nuscenes / "CAM_FRONT_K.txt", "extrinsic": nuscenes / "CAM_FRONT_lidar2cam.txt"})
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="weights (default: the bundled model)")
    parser.add_argument("--data", default="../shared/data", help="the shared sample frames")
    parser.add_argument("--seed", type=int, default=7351, help="protocol seed of the first frame (+1 per frame)")
    parser.add_argument("--out", default="outputs/real")
    args = parser.parse_args()

    header = ("| frame | image | points | in view (GT) | RTE (m) | RRE (deg) | success | frustum RTE (m) | frustum RRE (deg)"
              " | confidence | s |")
    rows = [header, "|" + "---|" * (header.count("|") - 1)]
    for index, frame in enumerate(frames(Path(args.data))):
        start = time.perf_counter()
        result = register_files(frame["image"], frame["points"], frame["calib"], Path(args.out) / frame["name"].replace(" ", "_"),
                                weights=args.weights, extrinsic=frame["extrinsic"], protocol_seed=args.seed + index)
        seconds = time.perf_counter() - start
        check = result.info["protocol"]
        frustum = registration_errors(result.frustum_pose[None], check["T_gt"][None])
        calibration = read_calibration_file(frame["calib"], 2, frame["extrinsic"])
        image = read_image_file(frame["image"])
        points = read_point_cloud(frame["points"])[0]
        in_view = int(project_pose(points, calibration.T_cam_velo, calibration.K, *image.shape[:2])[2].sum())
        rows.append(f"| {frame['name']} | {image.shape[1]}x{image.shape[0]} | {len(points):,} | {in_view:,} "
                    f"| {check['rte']:.2f} | {check['rre']:.2f} | {'yes' if check['success'] else 'no'} "
                    f"| {frustum['rte'][0]:.2f} | {frustum['rre'][0]:.2f} | {result.confidence:.2f} | {seconds:.1f} |")
    if len(rows) == 2:
        raise SystemExit(f"no sample frames under {args.data}")
    print("\n".join(rows))
    errors = np.array([[float(r.split("|")[5]), float(r.split("|")[6])] for r in rows[2:]])
    print(f"\nmean RTE {errors[:, 0].mean():.2f} m, mean RRE {errors[:, 1].mean():.2f} deg over {len(errors)} frames")


if __name__ == "__main__":
    main()
