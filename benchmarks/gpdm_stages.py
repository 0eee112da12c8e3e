"""Which step of GPDM's frustum pose fails: the regressed camera centre, or the yaw search about it?

    python benchmarks/gpdm_stages.py [--weights W] [--real ../shared/data] [--seeds 5]
                                     [--data datasets/synthetic-test --split test --pairs 40]

GPDM (3-DoF, with the pose search) regresses a camera centre, then scores yaw hypotheses about it and refines
(``model.pose_search``). Per pair this runs both as the model does, and runs the search again about the true
camera centre (an oracle centre). If the oracle-centre pose fails as often as the model's, the search's
image-to-point scores are what fail, not the centre. Also the rank of the true yaw bin among the search's
bins about the true centre (0: the best). Real frames (those of ``benchmarks/real_frames.py``, the same
protocol seeds) and the first ``--pairs`` pairs of a synthetic split, one Markdown table. The real frames are for
measurement only, never for training or tuning.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
from real_frames import frames

from i2preg.api import Registrator
from i2preg.data.pairs import pair_config
from i2preg.data.readers import read_calibration_file, read_image_file, read_point_cloud, undistort_image
from i2preg.geometry import (
    frustum_params_to_pose,
    invert_transform,
    pose_to_frustum_params,
    sample_perturbation,
    transform_points,
)
from i2preg.inference import pair_loader
from i2preg.metrics import ACC_RRE_DEG, ACC_RTE_M, registration_errors
from i2preg.model.pose_search import vector_yaws
from i2preg.weights import bundled_weights


def real_batches(registrator: Registrator, data: Path, seeds: int, first_seed: int):
    """(group name, collated batch) per real frame: its ``seeds`` protocol pairs, seeded as real_frames.py does."""
    found = frames(data)
    amplitudes = pair_config(registrator.config)["amplitudes"]
    for index, frame in enumerate(found):
        calibration = read_calibration_file(frame["calib"], 2, frame["extrinsic"])
        image, K = undistort_image(read_image_file(frame["image"]), calibration.K, calibration.distortion)
        points, intensity = read_point_cloud(frame["points"])
        samples = []
        for repeat in range(seeds):
            P = sample_perturbation(np.random.default_rng(first_seed + repeat * len(found) + index), amplitudes)
            cloud = transform_points(P @ calibration.T_cam_velo, points)
            sample = registrator._prepare(image, cloud, K, intensity).samples[0]
            sample["T_gt"] = torch.from_numpy(invert_transform(P)).float()
            samples.append(sample)
        yield ("KITTI" if frame["name"].startswith("kitti") else "nuScenes"), registrator.collate(samples)


def passes(T: torch.Tensor, T_gt: torch.Tensor) -> np.ndarray:
    errors = registration_errors(T.double().numpy(), T_gt.double().numpy())
    return (errors["rte"] < ACC_RTE_M) & (errors["rre"] < ACC_RRE_DEG)


def abs_yaw_error_deg(T: torch.Tensor, T_gt: torch.Tensor) -> torch.Tensor:
    R = (torch.linalg.inv(T) @ T_gt)[..., :3, :3]
    return torch.rad2deg(torch.atan2(R[..., 0, 2], R[..., 2, 2])).abs()


@torch.no_grad()
def measure(model, batch: dict) -> dict[str, np.ndarray]:
    """Per pair of a batch: the regressed centre's error (m), whether the frustum pose passes and its yaw error,
    the same for the search about the true centre, and the true yaw bin's rank there."""
    image_map = model.image_encoder(batch["image"])[-1]
    xyz, point_feats = model.point_encoder(batch)
    image_size = tuple(batch["image"].shape[-2:])
    out = model.gpdm(image_map, point_feats, xyz, batch["K"], image_size)
    T_gt = batch["T_gt"]
    true_centre, true_direction = pose_to_frustum_params(T_gt)
    oracle = model.gpdm.search(image_map, point_feats, xyz, true_centre, batch["K"], image_size)
    T_oracle = frustum_params_to_pose(oracle["centre"], oracle["rotation"])
    logits = oracle["yaw_logits"]
    bins = logits.shape[1]
    true_bin = torch.round(vector_yaws(true_direction) % (2 * math.pi) / (2 * math.pi / bins)).long() % bins
    rank = (logits > logits.gather(1, true_bin[:, None])).sum(1)
    return {"centre_error": (out["coarse_centre"] - true_centre).norm(dim=-1).numpy(),
            "frustum_ok": passes(out["frustum_pose"], T_gt), "frustum_yaw": abs_yaw_error_deg(out["frustum_pose"], T_gt).numpy(),
            "oracle_ok": passes(T_oracle, T_gt), "oracle_yaw": abs_yaw_error_deg(T_oracle, T_gt).numpy(),
            "true_bin_rank": rank.numpy()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=str(bundled_weights()))
    parser.add_argument("--real", type=Path, default=Path("../shared/data"), help="the shared sample frames")
    parser.add_argument("--seeds", type=int, default=5, help="protocol seeds (pairs) per real frame")
    parser.add_argument("--seed", type=int, default=7351, help="protocol seed of the first real pair")
    parser.add_argument("--data", default="datasets/synthetic-test", help="a synthetic dataset root ('' for none)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--pairs", type=int, default=40, help="the first N pairs of the synthetic split")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    registrator = Registrator.from_pretrained(args.weights)
    model = registrator.model
    if model.gpdm.search is None:
        raise SystemExit(f"{args.weights}: GPDM has no pose search (3 DoF, gpdm.yaw_bins > 0) to measure")
    groups: dict[str, list[dict]] = {}
    sources = [real_batches(registrator, args.real, args.seeds, args.seed)]
    if args.data:
        sources.append((f"synthetic {args.split}", b) for b in pair_loader(registrator.config, args.split, args.data,
                                                                          args.pairs, 8))
    for source in sources:
        for name, batch in source:
            groups.setdefault(name, []).append(measure(model, batch))
    print("| pairs | n | frustum pose Acc | median regressed-centre error (m) | median abs yaw error (deg) "
          "| search about the true centre: Acc | median abs yaw error (deg) | median rank of the true yaw bin |")
    print("|---|---|---|---|---|---|---|---|")
    for name, parts in groups.items():
        r = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        print(f"| {name} | {len(r['centre_error'])} | {100 * r['frustum_ok'].mean():.1f} % | "
              f"{np.median(r['centre_error']):.2f} | {np.median(r['frustum_yaw']):.1f} | {100 * r['oracle_ok'].mean():.1f} % | "
              f"{np.median(r['oracle_yaw']):.1f} | {np.median(r['true_bin_rank']):.0f} |")


if __name__ == "__main__":
    main()
