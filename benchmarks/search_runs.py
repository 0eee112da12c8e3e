"""More runs of the network: the Registrator's ``traffic="auto"`` (the input and its mirror images) and ``yaw_sectors``
(the yaw search held to each of S sectors of the circle as well), on a dataset's pairs.

    python benchmarks/search_runs.py --data datasets/synthetic-test [--sequences 00,01] [--sectors 12] [--weights W]
                                     [--refine none|edges|lines] [--limit N] [--pitch-deg 0] [--roll-deg 0]
                                     [--single-sweep] [--set eval.KEY=VALUE ...]

Every pair of the test split (the protocol's crops and point samples, as ``i2preg eval`` draws them) is run as it is
and as its mirror image (image flipped left to right with its principal point, the clouds' and the true pose's x
negated: a street that keeps to the other side), and as it is once more held to each of ``--sectors`` equal sectors of
the yaw circle (``api.sector_priors``, as the Registrator sets them). The table gives the final pose's Acc, median RTE
and RRE and yaw flips on the pairs as given for the Registrator's settings, each of which keeps, of its runs, the one
``api.chosen_run`` picks (the yaw the most runs reach, then the fine search's score): traffic "right" (the free run as
given), "left" (the free run of the mirror image), "auto" (both), and "right" with the yaw sectors. The pairs' mirror
images, a world that keeps to the left, score the same with "left" and "right" swapped, and the same with "auto". One
point draw; ``--refine`` refines every run's pose before the choice (the Registrator's order). ``--pitch-deg`` and
``--roll-deg`` give every pair a camera that is not level (``tilted``). ``--single-sweep``: every run's pose search
looks about the origin of the pair's LiDAR sweep (``geometry.scan_origin``, as ``Registrator(single_sweep=True)``
sets it). A design check on
synthetic pairs; ``benchmarks/real_frames.py --traffic auto --yaw-sectors 12`` measures the real frames.
"""

from __future__ import annotations

import argparse
import math
import time

import cv2
import numpy as np
import torch

from i2preg import api
from i2preg.api import chosen_run, pose_yaws, sector_priors
from i2preg.assembly import full_config, load_model
from i2preg.config import deep_update, parse_overrides
from i2preg.data.collate import Collate
from i2preg.data.pairs import build_dataset
from i2preg.geometry import make_transform, rot_x, rot_z, scan_origin
from i2preg.inference import infer, search_scores
from i2preg.metrics import registration_errors, success, yaw_offsets
from i2preg.weights import resolve_weights

MIRROR = torch.from_numpy(api.MIRROR)  # x -> -x, float64


def mirrored(sample: dict) -> dict:
    """A protocol pair's mirror image: image (3, h, w) flipped left to right, K's principal point mirrored, the
    points' and dense points' x negated (cloud frame, y down), T_gt conjugated by the reflection."""
    sample = dict(sample)
    K = sample["K"].clone()
    K[0, 2] = sample["image"].shape[-1] - 1 - K[0, 2]
    reflect = MIRROR.to(sample["T_gt"].dtype)
    sample.update(image=sample["image"].flip(-1), K=K, T_gt=reflect @ sample["T_gt"] @ reflect)
    for key in ("points", "dense_points"):
        if key in sample:
            sample[key] = sample[key] * torch.tensor([-1.0, 1.0, 1.0])
    return sample


def tilted(sample: dict, pitch_deg: float, roll_deg: float) -> dict:
    """The pair seen by its camera turned about its x axis by ``pitch_deg`` and then about its optical axis by
    ``roll_deg`` (camera frame, y down), a camera that is not level: image (3, h, w) warped by K R K^-1 (borders
    reflected), points and dense points moved by T_gt^-1 R T_gt, so that T_gt maps them into the turned camera's frame
    and the scene's walls lean in it."""
    turn = make_transform(rot_z(math.radians(roll_deg)) @ rot_x(math.radians(pitch_deg)), np.zeros(3))
    K, truth = sample["K"].double().numpy(), sample["T_gt"].double().numpy()
    image = sample["image"].permute(1, 2, 0).numpy()
    warped = cv2.warpPerspective(image, K @ turn[:3, :3] @ np.linalg.inv(K), image.shape[1::-1], flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_REFLECT)
    move = torch.from_numpy(np.linalg.inv(truth) @ turn @ truth).float()
    sample = {**sample, "image": torch.from_numpy(warped).permute(2, 0, 1)}
    for key in ("points", "dense_points"):
        if key in sample:
            sample[key] = sample[key] @ move[:3, :3].T + move[:3, 3]
    return sample


def sweep_origins(samples: list[dict], seconds: list[float]) -> torch.Tensor:
    """(B, 2) the origin of each pair's LiDAR sweep (``geometry.scan_origin`` of its points), for ``--single-sweep``;
    each cloud's time appended to ``seconds``."""
    origins = []
    for sample in samples:
        start = time.perf_counter()
        origins.append(scan_origin(sample["points"].double().numpy()))
        seconds.append(time.perf_counter() - start)
    if any(origin is None for origin in origins):
        raise SystemExit("--single-sweep: a pair's cloud shows no sweep's origin")
    return torch.from_numpy(np.stack(origins)).float()


def run(model, batch: dict, eval_cfg: dict, prior: torch.Tensor | None = None, encoded: tuple | None = None
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """The final poses (B, 4, 4) and search scores (B,) of a run on a collated batch, its yaw search held to
    ``prior`` (2,) if given (``encoded``: ``ICL.encode(batch)``, shared by the runs, or None)."""
    if prior is not None:
        batch = {**batch, "yaw_prior": prior.expand(len(batch["K"]), 2)}
    result = infer(model, batch, eval_cfg=eval_cfg, encoded=encoded)
    return result.pose.double(), search_scores(result.out).double()


def summary(name: str, pose: np.ndarray, truth: np.ndarray) -> str:
    errors = registration_errors(pose, truth)
    flips = int((np.abs(yaw_offsets(pose, truth)) >= 150).sum())
    return (f"| {name} | {len(pose)} | {success(errors).mean():.1%} | {np.median(errors['rte']):.2f} |"
            f" {np.median(errors['rre']):.2f} | {flips} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="dataset root (KITTI Odometry layout)")
    parser.add_argument("--sequences", help="the test split's sequences (default: the weights' config's)")
    parser.add_argument("--weights", help="weights (default: the bundled model)")
    parser.add_argument("--limit", type=int, help="the first N pairs")
    parser.add_argument("--sectors", type=int, default=12, help="the yaw sectors of the last setting")
    parser.add_argument("--refine", default="none", help="every run's refinement (inference.REFINEMENTS)")
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=8)
    parser.add_argument("--pitch-deg", type=float, default=0.0, help="every camera turned about its x axis (deg)")
    parser.add_argument("--roll-deg", type=float, default=0.0, help="and then about its optical axis (deg)")
    parser.add_argument("--single-sweep", dest="single_sweep", action="store_true",
                        help="every run's pose search about the pair's sweep origin (Registrator's single_sweep)")
    parser.add_argument("--set", action="append", default=[], metavar="eval.KEY=VALUE",
                        help="override an eval setting, e.g. eval.lines.level_deg=90")
    args = parser.parse_args()
    model, cfg = load_model(resolve_weights(args.weights))
    model.eval()
    cfg = full_config(cfg)
    if args.sequences:
        cfg["data"]["test_sequences"] = args.sequences.split(",")
    cfg = deep_update(cfg, parse_overrides(args.set))
    eval_cfg = {**cfg["eval"], "refine": args.refine, "point_draws": 1}
    pairs = build_dataset(cfg, "test", args.data)
    count = min(len(pairs), args.limit or len(pairs))
    collate = Collate(model.conf, knn_workers=-1)
    torch.manual_seed(0)
    poses, scores, truth = [], [], []  # runs: as given, mirror image, as given held to each sector
    origin_gaps, origin_seconds = [], []  # --single-sweep: the origins' distances from the cameras, their times
    for start in range(0, count, args.batch_size):
        samples = [pairs[index] for index in range(start, min(start + args.batch_size, count))]
        if args.pitch_deg or args.roll_deg:
            samples = [tilted(sample, args.pitch_deg, args.roll_deg) for sample in samples]
        batch, mirror_samples = collate(samples), [mirrored(s) for s in samples]
        mirror_batch = collate(mirror_samples)
        if args.single_sweep:
            batch["centre_prior"], mirror_batch["centre_prior"] = (sweep_origins(samples, origin_seconds),
                                                                    sweep_origins(mirror_samples, origin_seconds))
            cameras = torch.linalg.inv(batch["T_gt"].double())[:, [0, 2], 3]  # the true camera centres (x, z)
            origin_gaps.append(torch.linalg.norm(batch["centre_prior"].double() - cameras, dim=1))
        with torch.inference_mode():
            encoded = model.encode(batch)  # the runs as given share the encoders' work
        given, mirror = run(model, batch, eval_cfg, encoded=encoded), run(model, mirror_batch, eval_cfg)
        held = [run(model, batch, eval_cfg, prior, encoded) for prior in sector_priors(args.sectors)]
        poses.append(torch.stack([given[0], MIRROR @ mirror[0] @ MIRROR, *(pose for pose, _ in held)], 1))
        scores.append(torch.stack([given[1], mirror[1], *(score for _, score in held)], 1))
        truth.append(torch.stack([s["T_gt"].double() for s in samples]))
    poses, scores, truth = (torch.cat(part).numpy() for part in (poses, scores, truth))
    yaws = pose_yaws(poses)  # (P, runs), the pairs' frames as given
    tilt = (f" (camera pitched {args.pitch_deg:g} deg, rolled {args.roll_deg:g})"
            if args.pitch_deg or args.roll_deg else "")
    print(f"{args.data}, the pairs as given{tilt}:\n")
    if origin_gaps:
        gaps = torch.cat(origin_gaps).numpy()
        print(f"the sweeps' origins lie a median {np.median(gaps):.2f} m, at most {gaps.max():.2f} m, from the cameras;"
              f" scan_origin took a mean {np.mean(origin_seconds):.3f} s a cloud\n")
    print("| traffic, yaw sectors | pairs | Acc | median RTE (m) | median RRE (deg) | yaw flips |")
    print("|---|---|---|---|---|---|")
    for name, runs in (("right", [0]), ("left", [1]), ("auto", [0, 1]),
                       (f"right, {args.sectors} yaw sectors", [0, *range(2, 2 + args.sectors)])):
        best = [runs[chosen_run(yaws[p, runs], scores[p, runs])] for p in range(len(poses))]
        print(summary(name, poses[np.arange(len(poses)), best], truth))

if __name__ == "__main__":
    main()
