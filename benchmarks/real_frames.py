"""The model on real sensor frames: the six KITTI frames and the nuScenes frame of ``../shared/data``.

    python benchmarks/real_frames.py [--weights W] [--data ../shared/data] [--seeds 5] [--seed 7351]
                                     [--out outputs/real] [--pose final|frustum] [--refine none|edges|lines]
                                     [--traffic recorded|right|left|auto] [--yaw-sectors S] [--prior-yaw-deg DEG]
                                     [--point-draws D] [--weights-32beam W] [--single-sweep]

Each frame goes through ``i2preg register --protocol-seed`` (``api.register_files``) once per protocol seed:
the scan is moved into the camera frame with the frame's own calibration (the ground truth), perturbed by the
protocol, and registered; the errors are those of the protocol. Frame ``f`` of ``F`` under repeat ``s`` uses
protocol seed ``seed + s * F + f`` (so ``--seeds 1`` is the old one-pair-a-frame run). Overlays (predicted,
frustum and true pose) go to ``out/<frame>/seed<k>/``. ``--traffic`` is the ``Registrator``'s (the side of the
street the traffic keeps to); ``recorded`` gives each frame its own: KITTI's Karlsruhe keeps to the right, and a
nuScenes log whose name ends in ``+0800`` (Singapore's UTC offset; Boston's logs end in ``-0400``) to the left.
``--prior-yaw-deg DEG`` registers with a prior pose (``Registrator.register``'s ``prior_pose``) as a robot's odometry
or compass would give it: the true pose turned about the camera's y axis by a yaw drawn uniformly within +-DEG / 2
(seeded by the pair's protocol seed), the yaw search kept within DEG of it. ``--point-draws D``: the
``Registrator``'s (each pose the consensus of the network on D draws of the point sample); ``--yaw-sectors S`` too (the
network run again held to each of S sectors of the yaw circle); ``--single-sweep`` too (GPDM's pose search about the
origin of the frame's LiDAR sweep, ``geometry.scan_origin``). ``--weights-32beam W`` registers the frames of a 32-beam
LiDAR (the nuScenes frame) with W (the 32-beam model of docs/TRAINING.md, trained for that rig) and the others with
``--weights``.

Prints ONE Markdown table: a row per frame and rows over all KITTI pairs, the nuScenes pairs and all pairs,
with Acc, median RTE / RRE (over all pairs), the share of pairs whose frustum (GPDM) pose already passes, the
median confidence (``RegistrationResult.confidence``) of the registered and of the failed pairs, and how each pair
failed (``failure_kind``); writes each pair's errors, failure kind, confidence, how many point draws agree with its
pose and, where the ``Registrator`` runs the network more than once, whether any of its runs registers (the best a
choice between them could do, also printed under the table) to ``out/pairs.csv``. ``--pose frustum`` scores GPDM's
frustum pose instead of the final one (for stage-1 weights, whose ICLM and PRM are untrained). The bundled model is
trained on synthetic data only, so these numbers measure the gap from synthetic to real; the frames are for
measurement, never for training or tuning.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import time
from collections import Counter
from pathlib import Path

import numpy as np

from i2preg.api import TRAFFIC_SIDES, register_files
from i2preg.data.readers import read_calibration_file, read_image_file, read_point_cloud
from i2preg.files import write_text
from i2preg.geometry import invert_transform, project_pose, rot_y
from i2preg.metrics import ACC_RRE_DEG, ACC_RTE_M, registration_errors, success

YAW_FLIP_DEG = 150.0
"""A yaw error at least this large (of 180) counts as a flip: the camera looks the opposite way."""

FAILURE_KINDS = ("ok", "yaw flip", "yaw error", "tilt", "centre")
"""How a pair ended: ``ok`` (the Acc thresholds); ``yaw flip`` (|yaw error| >= YAW_FLIP_DEG); ``yaw error``
(RRE >= 5 deg from yaw, short of a flip); ``tilt`` (RRE >= 5 deg from roll/pitch, yaw fine); ``centre``
(rotation fine, RTE >= 2 m)."""


def frames(data: Path) -> list[dict]:
    """The real frames under ``data`` that exist: name, image, points, calib, extrinsic (nuScenes; else None),
    traffic (the side of the street the traffic keeps to where it was recorded) and beams (the LiDAR's)."""
    found = []
    kitti = data / "kitti_object_sample" / "training"
    for image in sorted((kitti / "image_2").glob("*.png")):
        found.append({"name": f"kitti {image.stem}", "image": image, "points": kitti / "velodyne" / f"{image.stem}.bin",
                      "calib": kitti / "calib" / f"{image.stem}.txt", "extrinsic": None, "traffic": "right",
                      "beams": 64})
    nuscenes = data / "nuscenes_sample"
    for image in sorted(nuscenes.glob("*CAM_FRONT*.jpg")):
        points = next(iter(sorted(nuscenes.glob("*LIDAR_TOP*.pcd.bin"))))
        found.append({"name": "nuscenes CAM_FRONT", "image": image, "points": points,
                      "calib": nuscenes / "CAM_FRONT_K.txt", "extrinsic": nuscenes / "CAM_FRONT_lidar2cam.txt",
                      "traffic": "left" if image.stem.split("__")[0].endswith("+0800") else "right", "beams": 32})
    return found


def yaw_error_deg(T_pred: np.ndarray, T_gt: np.ndarray) -> float:
    """Signed yaw (about the camera's y axis) of ``inv(T_pred) @ T_gt``, degrees in (-180, 180]."""
    R = (invert_transform(T_pred) @ T_gt)[:3, :3]
    return math.degrees(math.atan2(R[0, 2], R[2, 2]))


def failure_kind(T_pred: np.ndarray, T_gt: np.ndarray) -> str:
    """One of FAILURE_KINDS for a predicted pose (4, 4) against the ground truth (4, 4)."""
    errors = registration_errors(T_pred[None], T_gt[None])
    rte, rre = float(errors["rte"][0]), float(errors["rre"][0])
    yaw = abs(yaw_error_deg(T_pred, T_gt))
    if rte < ACC_RTE_M and rre < ACC_RRE_DEG:
        return "ok"
    if yaw >= YAW_FLIP_DEG:
        return "yaw flip"
    if rre >= ACC_RRE_DEG:
        return "yaw error" if yaw >= ACC_RRE_DEG / 2 else "tilt"
    return "centre"


def summary_row(name: str, pairs: list[dict]) -> str:
    """A table row over ``pairs`` (each: rte, rre, yaw, kind, frustum_ok, confidence, seconds)."""
    rte = np.array([p["rte"] for p in pairs])
    rre = np.array([p["rre"] for p in pairs])
    yaw = np.abs([p["yaw"] for p in pairs])
    kinds = Counter(p["kind"] for p in pairs)
    acc = 100 * kinds["ok"] / len(pairs)
    frustum = 100 * np.mean([p["frustum_ok"] for p in pairs])
    confidence = " / ".join(f"{np.median(c):.2f}" if c else "-" for c in (
        [p["confidence"] for p in pairs if p["kind"] == "ok"], [p["confidence"] for p in pairs if p["kind"] != "ok"]))
    return (f"| {name} | {len(pairs)} | {acc:.1f} % | {np.median(rte):.2f} | {np.median(rre):.2f} "
            f"| {np.median(yaw):.1f} | {frustum:.1f} % | {confidence} | "
            + " | ".join(str(kinds[k]) for k in FAILURE_KINDS[1:])
            + f" | {np.mean([p['seconds'] for p in pairs]):.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="weights (default: the bundled model)")
    parser.add_argument("--weights-32beam", dest="weights_32beam",
                        help="weights for the frames of a 32-beam LiDAR (default: --weights)")
    parser.add_argument("--data", default="../shared/data", help="the shared sample frames")
    parser.add_argument("--seeds", type=int, default=5, help="protocol seeds (pairs) per frame")
    parser.add_argument("--seed", type=int, default=7351, help="protocol seed of the first pair")
    parser.add_argument("--out", default="outputs/real")
    parser.add_argument("--pose", choices=("final", "frustum"), default="final",
                        help="the pose scored: the model's final one, or GPDM's frustum pose")
    parser.add_argument("--refine", help="none, edges or lines: the final pose's refinement (default: the weights'"
                        " own; lines with --yaw-sectors)")
    parser.add_argument("--point-draws", dest="point_draws", type=int,
                        help="draws of the point sample whose poses' consensus is the pose (default: the weights' own)")
    parser.add_argument("--traffic", choices=("recorded", *TRAFFIC_SIDES), default="recorded",
                        help="the Registrator's traffic side: each frame's own (recorded), or one for all")
    parser.add_argument("--yaw-sectors", dest="yaw_sectors", type=int, default=0,
                        help="the Registrator's yaw sectors (the network run again held to each of S sectors)")
    parser.add_argument("--single-sweep", dest="single_sweep", action="store_true",
                        help="the Registrator's single_sweep: GPDM's pose search about the sweep's origin")
    parser.add_argument("--prior-yaw-deg", dest="prior_yaw_deg", type=float,
                        help="register with a prior pose whose yaw errs by up to half this, the search kept within it")
    args = parser.parse_args()

    found = frames(Path(args.data))
    if not found:
        raise SystemExit(f"no sample frames under {args.data}")
    results: dict[str, list[dict]] = {frame["name"]: [] for frame in found}
    calibrations = {frame["name"]: read_calibration_file(frame["calib"], 2, frame["extrinsic"]) for frame in found}
    for repeat in range(args.seeds):
        for index, frame in enumerate(found):
            seed = args.seed + repeat * len(found) + index
            start = time.perf_counter()
            prior = {}
            if args.prior_yaw_deg is not None:  # the true pose, the camera turned about its y axis
                turn = np.eye(4)
                turn[:3, :3] = rot_y(np.random.default_rng(seed).uniform(-0.5, 0.5) * math.radians(args.prior_yaw_deg))
                prior = {"prior": turn @ calibrations[frame["name"]].T_cam_velo, "prior_yaw_deg": args.prior_yaw_deg}
            result = register_files(frame["image"], frame["points"], frame["calib"],
                                    Path(args.out) / frame["name"].replace(" ", "_") / f"seed{seed}",
                                    weights=args.weights_32beam if frame["beams"] == 32 and args.weights_32beam
                                    else args.weights, extrinsic=frame["extrinsic"], protocol_seed=seed,
                                    refine=args.refine, point_draws=args.point_draws, yaw_sectors=args.yaw_sectors,
                                    single_sweep=args.single_sweep,
                                    traffic=frame["traffic"] if args.traffic == "recorded" else args.traffic,
                                    **prior)
            T_gt = result.info["protocol"]["T_gt"]
            pose = result.frustum_pose if args.pose == "frustum" else result.pose
            runs = result.info.get("runs")  # with --yaw-sectors or --traffic auto: whether any run registers
            any_run = "" if runs is None else bool(success(registration_errors(
                runs["poses"], np.broadcast_to(T_gt, runs["poses"].shape))).any())
            errors = registration_errors(pose[None], T_gt[None])
            frustum = registration_errors(result.frustum_pose[None], T_gt[None])
            results[frame["name"]].append({
                "frame": frame["name"], "seed": seed, "rte": float(errors["rte"][0]), "rre": float(errors["rre"][0]),
                "yaw": yaw_error_deg(pose, T_gt),
                "kind": failure_kind(pose, T_gt),
                "frustum_ok": bool(frustum["rte"][0] < ACC_RTE_M and frustum["rre"][0] < ACC_RRE_DEG),
                "confidence": result.confidence, "draws_agreeing": result.info["draws_agreeing"],
                "any_run_ok": any_run, "seconds": time.perf_counter() - start})

    header = ("| frame | image | points | in view (GT) | pairs | Acc | median RTE (m) | median RRE (deg)"
              " | median abs yaw error (deg) | frustum pose passes | median confidence (registered / failed) | "
              + " | ".join(FAILURE_KINDS[1:]) + " | s a pair |")
    rows = [header, "|" + "---|" * (header.count("|") - 1)]
    for frame in found:
        calibration = calibrations[frame["name"]]
        image = read_image_file(frame["image"])
        points = read_point_cloud(frame["points"])[0]
        in_view = int(project_pose(points, calibration.T_cam_velo, calibration.K, *image.shape[:2])[2].sum())
        described = f"{frame['name']} | {image.shape[1]}x{image.shape[0]} | {len(points):,} | {in_view:,}"
        rows.append(summary_row(described, results[frame["name"]]))
    groups = {"all KITTI": [p for name, ps in results.items() if name.startswith("kitti") for p in ps],
              "nuScenes": [p for name, ps in results.items() if name.startswith("nuscenes") for p in ps],
              "all frames": [p for ps in results.values() for p in ps]}
    for name, pairs in groups.items():
        if pairs:
            rows.append(summary_row(f"**{name}** | | | ", pairs))
    print("\n".join(rows))
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(groups["all frames"][0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(groups["all frames"])
    write_text(Path(args.out) / "pairs.csv", table.getvalue())
    prior = "" if args.prior_yaw_deg is None else (f"; a prior pose's yaw off by up to {args.prior_yaw_deg / 2:g} deg,"
                                                   f" the search within {args.prior_yaw_deg:g} deg of it")
    print(f"\n{args.pose} pose; {args.seeds} protocol seeds a frame from {args.seed}{prior}; failure kinds: " + "; ".join(
        f"{kind}" for kind in FAILURE_KINDS[1:]) + f" (yaw flip: |yaw error| >= {YAW_FLIP_DEG:.0f} deg)")
    if groups["all frames"][0]["any_run_ok"] != "":  # the Registrator's runs (result.info["runs"]): a perfect choice
        print("some run registers (the best a choice between the runs could do): " + "; ".join(
            f"{name} {sum(p['any_run_ok'] for p in pairs)} of {len(pairs)}" for name, pairs in groups.items() if pairs))


if __name__ == "__main__":
    main()
