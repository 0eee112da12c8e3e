"""PRM alone: can it refine GPDM's frustum pose from ICLM's pairs, or from perfect ones?

    python benchmarks/prm_alone.py --weights W --train-data datasets/stage2-train \
        --heldout-data datasets/stage2-heldout [--oracle] [--set model.prm.reprojection_residual=true] \
        [--steps 400] [--lr 4e-4] [--seed 0] [--cache outputs.pt]

The network of W (its config, with --set over it) runs once, in eval mode, over the fixed, seeded pairs of every
sequence under each data folder; its ICLM outputs (kp_2d, kp_3d, desc_2d, desc_3d), K, the frustum pose and the
GT are kept (in --cache, reused when it exists). A fresh PRM of that config (seeded) then trains alone on the
training pairs' outputs with L_cam (batches of 8 drawn at random, Adam), as in stage 2 where PRM's inputs are
detached. With --oracle each kp_2d is replaced by the GT projection of its 3D keypoint (perfect pairs, where the
keypoint is in front of the GT camera): if PRM cannot refine the frustum pose even then, its architecture or
loss is what holds it back, not ICLM. Prints, every steps / 4, the final pose's Acc and median RTE and RRE
against the frustum pose's on both splits.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from stage2_overfit import fixed_pairs
from torch.utils.data import DataLoader

from i2preg.config import deep_update, parse_overrides
from i2preg.data.collate import Collate
from i2preg.geometry import project_points, transform_points
from i2preg.losses import MIN_DEPTH, camera_loss
from i2preg.metrics import registration_errors, summarize
from i2preg.model.icl import ICL
from i2preg.model.prm import PRM
from i2preg.weights import load_weights, read_weights_config

PRM_INPUTS = ("kp_2d", "kp_3d", "desc_2d", "desc_3d", "K", "frustum_pose")


def network_outputs(model: ICL, dataset, collate: Collate) -> dict[str, torch.Tensor]:
    """PRM's inputs (``PRM_INPUTS``) and T_gt of every pair of ``dataset``, concatenated."""
    parts = []
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=8, collate_fn=collate):
            out = model(batch)
            parts.append({**{k: out[k] for k in PRM_INPUTS if k in out}, "K": batch["K"], "T_gt": batch["T_gt"]})
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def perfect_pairs(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``outputs`` with kp_2d replaced by pi(T_gt kp_3d) where the 3D keypoint is in front of the GT camera."""
    pixels, depth = project_points(transform_points(outputs["T_gt"], outputs["kp_3d"]), outputs["K"])
    return {**outputs, "kp_2d": torch.where((depth > MIN_DEPTH)[..., None], pixels, outputs["kp_2d"])}


def pose_row(pose: torch.Tensor, T_gt: torch.Tensor) -> str:
    s = summarize(registration_errors(pose.double().numpy(), T_gt.double().numpy()))
    return f"Acc {100 * s['acc']:.1f} %, RTE {s['rte_median']:.3f} m, RRE {s['rre_median']:.3f} deg"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--train-data", type=Path, required=True)
    parser.add_argument("--heldout-data", type=Path, required=True)
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a model setting")
    parser.add_argument("--oracle", action="store_true", help="PRM gets the GT projections of the 3D keypoints")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, help="the network's outputs: read if it exists, else written")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = deep_update(read_weights_config(args.weights), parse_overrides(args.set))
    if args.cache and args.cache.exists():
        splits = torch.load(args.cache)
    else:
        model = ICL(cfg["model"])
        load_weights(model, args.weights, strict=False)
        model.eval()
        collate = Collate(cfg["model"])
        splits = {name: network_outputs(model, fixed_pairs(cfg, root, None), collate)
                  for name, root in (("train", args.train_data), ("heldout", args.heldout_data))}
        if args.cache:
            torch.save(splits, args.cache)
    if args.oracle:
        splits = {name: perfect_pairs(outputs) for name, outputs in splits.items()}
    for name, outputs in splits.items():
        print(f"{name}: {len(outputs['K'])} pairs, frustum pose {pose_row(outputs['frustum_pose'], outputs['T_gt'])}")

    torch.manual_seed(args.seed)
    prm = PRM(cfg["model"]["iclm"]["dim"], cfg["model"]["prm"], cfg["model"]["dof"])
    optimizer = torch.optim.Adam(prm.parameters(), lr=args.lr)
    rng = np.random.default_rng(args.seed)
    train = splits["train"]
    for step in range(args.steps + 1):
        if step % max(1, args.steps // 4) == 0 or step == args.steps:
            prm.eval()
            with torch.no_grad():
                rows = [f"{name} {pose_row(prm(*(o[k] for k in PRM_INPUTS))['pose'], o['T_gt'])}"
                        for name, o in splits.items()]
            prm.train()
            print(f"step {step}: final pose " + "; ".join(rows), flush=True)
        if step == args.steps:
            break
        index = torch.as_tensor(rng.choice(len(train["K"]), 8, replace=False))
        out = prm(*(train[k][index] for k in PRM_INPUTS))
        loss = camera_loss(out["residual_rotation"], out["residual_translation"], train["frustum_pose"][index],
                           train["T_gt"][index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


if __name__ == "__main__":
    main()
