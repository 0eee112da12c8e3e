"""More runs of the network, chosen by its fine search's score: the Registrator's ``traffic="auto"`` (the input and its
mirror images) and ``flip_check`` (the yaw search held to the other half of the circle as well), on a dataset's pairs.

    python benchmarks/search_runs.py --data datasets/synthetic-test [--sequences 00,01] [--weights W] [--limit N]

Every pair of the test split (the protocol's crops and point samples, as ``i2preg eval`` draws them) is run as it is
and as its mirror image (image flipped left to right with its principal point, the clouds' and the true pose's x
negated: a street that keeps to the other side), each once freely and once with GPDM's yaw search held within
``api.PRIOR_YAW_DEG`` of the opposite of the free run's yaw. The table gives the final pose's Acc, median RTE and RRE
and yaw flips on the pairs as given for the Registrator's settings, each of which keeps, of its runs, the one whose
fine search scored its best hypothesis higher (``inference.search_scores``): traffic "right" (the free run as
given), "left" (the free run of the mirror image), "auto" (both), each with and without ``flip_check``. The pairs'
mirror images, a world that keeps to the left, score the same with "left" and "right" swapped, and the same with
"auto". No refinement, one point draw. A design check on synthetic pairs; ``benchmarks/real_frames.py --traffic auto
--flip-check`` measures the real frames.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from i2preg.api import PRIOR_YAW_DEG
from i2preg.assembly import full_config, load_model
from i2preg.data.collate import Collate
from i2preg.data.pairs import build_dataset
from i2preg.inference import infer, search_scores
from i2preg.metrics import ACC_RRE_DEG, ACC_RTE_M, registration_errors, yaw_offsets
from i2preg.weights import resolve_weights

MIRROR = torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0], dtype=torch.float64))


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


def free_and_other_half(model, collate: Collate, samples: list[dict], eval_cfg: dict
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The final poses (B, 4, 4) and search scores (B,) of a free run and of a run held to the other half of the yaw
    circle (the prior at the free pose's yaw + 180 deg, ``api.PRIOR_YAW_DEG`` either side)."""
    free = infer(model, collate(samples), eval_cfg=eval_cfg)
    yaws = torch.atan2(-free.pose[:, 2, 0], free.pose[:, 0, 0]) + math.pi
    held = [{**s, "yaw_prior": torch.tensor([float(y), math.radians(PRIOR_YAW_DEG)])} for s, y in zip(samples, yaws)]
    other = infer(model, collate(held), eval_cfg=eval_cfg)
    return free.pose.double(), search_scores(free.out).double(), other.pose.double(), search_scores(other.out).double()


def summary(name: str, pose: np.ndarray, truth: np.ndarray) -> str:
    errors = registration_errors(pose, truth)
    success = (errors["rte"] < ACC_RTE_M) & (errors["rre"] < ACC_RRE_DEG)
    flips = int((np.abs(yaw_offsets(pose, truth)) >= 150).sum())
    return (f"| {name} | {len(pose)} | {success.mean():.1%} | {np.median(errors['rte']):.2f} |"
            f" {np.median(errors['rre']):.2f} | {flips} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="dataset root (KITTI Odometry layout)")
    parser.add_argument("--sequences", help="the test split's sequences (default: the weights' config's)")
    parser.add_argument("--weights", help="weights (default: the bundled model)")
    parser.add_argument("--limit", type=int, help="the first N pairs")
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=8)
    args = parser.parse_args()
    model, cfg = load_model(resolve_weights(args.weights))
    model.eval()
    cfg = full_config(cfg)
    if args.sequences:
        cfg["data"]["test_sequences"] = args.sequences.split(",")
    eval_cfg = {**cfg["eval"], "refine": "none", "point_draws": 1}
    pairs = build_dataset(cfg, "test", args.data)
    count = min(len(pairs), args.limit or len(pairs))
    collate = Collate(model.conf, knn_workers=-1)
    torch.manual_seed(0)
    poses, scores, truth = [], [], []  # runs: as given free, other half; mirror images free, other half
    for start in range(0, count, args.batch_size):
        samples = [pairs[index] for index in range(start, min(start + args.batch_size, count))]
        given, mirror = (free_and_other_half(model, collate, batch, eval_cfg)
                         for batch in (samples, [mirrored(s) for s in samples]))
        poses.append(torch.stack([*given[::2], *(MIRROR @ pose @ MIRROR for pose in mirror[::2])], 1))
        scores.append(torch.stack([*given[1::2], *mirror[1::2]], 1))
        truth.append(torch.stack([s["T_gt"].double() for s in samples]))
    poses, scores, truth = (torch.cat(part).numpy() for part in (poses, scores, truth))
    print(f"{args.data}, the pairs as given:\n")
    print("| traffic, flip check | pairs | Acc | median RTE (m) | median RRE (deg) | yaw flips |")
    print("|---|---|---|---|---|---|")
    for name, runs in (("right", [0]), ("left", [2]), ("auto", [0, 2]), ("right, flip check", [0, 1]),
                       ("left, flip check", [2, 3]), ("auto, flip check", [0, 1, 2, 3])):
        best = np.array(runs)[scores[:, runs].argmax(1)]
        print(summary(name, poses[np.arange(len(poses)), best], truth))


if __name__ == "__main__":
    main()
