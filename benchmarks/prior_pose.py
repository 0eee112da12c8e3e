"""A prior pose on protocol pairs: the same pairs registered without one and with one (``Registrator.register``'s
``prior_pose``), side by side.

    python benchmarks/prior_pose.py --data datasets/synthetic-train --split val [--sequences 10,11]
                                    [--weights W] [--prior-yaw-deg 30] [--refine none|edges|lines] [--yaw-sectors S]

Each pair's prior is its true pose turned about the camera's y axis by a yaw drawn uniformly within +-D/2 (numpy
seed 0, in pair order), the search kept within D of it (the real-frame measurement of ``real_frames.py
--prior-yaw-deg`` on synthetic pairs). The prior enters the batch as the ``Registrator`` puts it there
(``yaw_prior``: the prior's yaw and the tolerance). With ``--yaw-sectors S`` the prior holds no search: the pair is
run freely and held to each of S sectors of the yaw circle, and the prior chooses between the runs
(``api.chosen_run``), as the ``Registrator`` does. ``--refine``: every pose's refinement (default: the weights' own).
Prints Acc and medians of the final pose both ways and how many poses the prior changed.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from i2preg.api import chosen_run, pose_yaws, sector_priors
from i2preg.assembly import load_model
from i2preg.config import deep_update
from i2preg.geometry import pose_to_frustum_params
from i2preg.inference import infer, search_scores
from i2preg.metrics import registration_errors, success
from i2preg.model.pose_search import vector_yaws
from i2preg.train import make_loader
from i2preg.weights import resolve_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="weights (default: the bundled model)")
    parser.add_argument("--data", required=True, help="dataset root (KITTI Odometry layout)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--sequences", help="the split's sequences, comma-separated (default: the config's)")
    parser.add_argument("--prior-yaw-deg", dest="prior_yaw_deg", type=float, default=30.0)
    parser.add_argument("--refine", help="none, edges or lines (default: the weights' eval.refine)")
    parser.add_argument("--yaw-sectors", dest="yaw_sectors", type=int, default=0,
                        help="run each pair held to each of S yaw sectors too, the prior choosing between the runs")
    args = parser.parse_args()

    model, cfg = load_model(resolve_weights(args.weights))
    data = {"root": args.data}
    if args.sequences:
        data[f"{args.split}_sequences"] = args.sequences.split(",")
    cfg = deep_update(cfg, {"data": data, "train": {"num_workers": 0}})
    eval_cfg = {**cfg["eval"], **({} if args.refine is None else {"refine": args.refine})}
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    poses: dict[str, list[np.ndarray]] = {"without a prior": [], "with the prior": []}
    truths = []
    model.eval()
    with torch.no_grad():
        for batch in make_loader(cfg, args.split):
            yaw = vector_yaws(pose_to_frustum_params(batch["T_gt"])[1])
            turn = torch.from_numpy(rng.uniform(-0.5, 0.5, len(yaw)) * math.radians(args.prior_yaw_deg)).float()
            tolerance = torch.full_like(yaw, math.radians(args.prior_yaw_deg))
            batch.pop("yaw_prior", None)
            free = infer(model, batch, eval_cfg=eval_cfg)
            poses["without a prior"].append(free.pose.double().numpy())
            prior = torch.stack([yaw + turn, tolerance], dim=-1)
            if args.yaw_sectors:  # the free run (above) and the sectors', the prior choosing (degrees, as run_yaw)
                results = [free]
                for held in sector_priors(args.yaw_sectors):
                    batch["yaw_prior"] = held.expand(len(yaw), 2)
                    results.append(infer(model, batch, eval_cfg=eval_cfg))
                runs = np.stack([r.pose.double().numpy() for r in results], 1)  # (B, S + 1, 4, 4)
                scores = np.stack([search_scores(r.out).double().numpy() for r in results], 1)
                yaws = pose_yaws(runs)
                chosen = [chosen_run(yaws[b], scores[b], tuple(np.degrees(prior[b].numpy()))) for b in range(len(yaw))]
                poses["with the prior"].append(runs[np.arange(len(yaw)), chosen])
            else:
                batch["yaw_prior"] = prior
                poses["with the prior"].append(infer(model, batch, eval_cfg=eval_cfg).pose.double().numpy())
            truths.append(batch["T_gt"].double().numpy())
    T_gt = np.concatenate(truths)
    print("| poses | pairs | Acc | median RTE (m) | median RRE (deg) |\n|---|---|---|---|---|")
    for name, found in poses.items():
        errors = registration_errors(np.concatenate(found), T_gt)
        print(f"| {name} | {len(T_gt)} | {100 * success(errors).mean():.1f} % | {np.median(errors['rte']):.3f} | "
              f"{np.median(errors['rre']):.3f} |")
    moved = np.abs(np.concatenate(poses["with the prior"]) - np.concatenate(poses["without a prior"])).max(axis=(1, 2))
    held = "runs chosen" if args.yaw_sectors else "searched"
    print(f"\nprior yaw within +-{args.prior_yaw_deg / 2:g} deg of the truth, {held} within {args.prior_yaw_deg:g} deg;"
          f" poses the prior changed (any entry by more than 1e-6): {int((moved > 1e-6).sum())} of {len(moved)}")


if __name__ == "__main__":
    main()
