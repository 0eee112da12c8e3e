"""Stage 2 on a small fixed set: does ICLM learn correspondences, and does its training stay stable?

    python benchmarks/stage2_overfit.py --train-data datasets/stage2-train --heldout-data datasets/stage2-heldout \
        [--weights W] [--pairs N] [--steps 300] [--lr 4e-4] [--log-every 25] [--set loss.heat_2d=1 ...] [--csv run.csv]

From stage-1 weights, Adam trains the stage-2 modules (GPDM frozen) on the fixed, seeded pairs of every sequence
under --train-data, batches drawn at random (one seed). GPDM and its encoders are frozen and have no
normalisation that depends on the batch, so their outputs are computed once per pair and reused: a step costs
the image decoder, ICLM and PRM only. With --fresh-pairs the training pairs are drawn as ``i2preg train`` draws
them instead (a new random perturbation each time, GPDM run on each batch). Every --log-every steps (and at step 0), one row per split (train,
held-out) says:

- the loss terms' means over the steps since the last row, the largest per-batch L_corr in that window, and the
  largest gradient norm (before clipping); L_corr is the unbounded one here (every query in front of the GT
  camera), whatever the loss in use, so that runs compare;
- on all of the split's pairs, in eval mode: ICLM's pair error (|pi(T_gt kp_3d) - kp_2d|, median over the
  queries in front of the GT camera) against the frustum pairing's on the same queries (``iclm_diagnostics``),
  how far ICLM's 2D keypoints moved from the frustum pairing (median pixels) and the share of the frustum
  pairing's error that move corrects (``frustum_pairing_errors``: 0 pairs as GPDM's pose does, 1 is exact), the share of pairs under 8 px, the spread of the projected 3D keypoints (norm of their standard deviation,
  pixels; a collapse shows as a few pixels), the heatmaps' entropy (2D: the last stage's), and PRM's final pose and
  PnP-RANSAC's pose on ICLM's pairs against the frustum pose (Acc, median RTE and RRE).
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import numpy as np
import torch
from iclm_diagnostics import pair_statistics
from torch.utils.data import DataLoader, Subset

from i2preg.baselines.pnp import pnp_poses
from i2preg.config import deep_update, parse_overrides
from i2preg.data.collate import Collate
from i2preg.data.kitti import KittiOdometry
from i2preg.data.pairs import KittiPairs, pair_config
from i2preg.geometry import project_points, transform_points
from i2preg.losses import MIN_DEPTH, compute_losses
from i2preg.metrics import registration_errors, summarize
from i2preg.model.icl import ICL
from i2preg.weights import bundled_weights, load_weights, read_weights_config, save_weights

STAGE2_TERMS = ("total", "corr", "heat_2d", "div_2d", "div_3d", "cam")
"""The logged loss terms: stage 2's (GPDM's are constants with it frozen)."""


def fixed_pairs(cfg: dict, root: Path, limit: int | None) -> Subset:
    """The first ``limit`` (None: all) seeded (test-mode) pairs of the sequences under root/sequences."""
    sequences = sorted(p.name for p in (root / "sequences").iterdir() if p.is_dir())
    data_cfg = pair_config(cfg)
    pairs = KittiPairs(KittiOdometry(root, sequences, data_cfg["cameras"]), data_cfg, train=False)
    return Subset(pairs, range(min(limit or len(pairs), len(pairs))))


class EncodedPairs:
    """The frozen part of ICL's forward (encoders and GPDM) run once over a dataset; ``batch(indices)`` gives the
    stage-2 inputs of those pairs: the batch (image, K, T_gt) and the cached encoder and GPDM outputs."""

    def __init__(self, model: ICL, dataset, collate: Collate):
        self.batches, self.encoded = [], []
        with torch.no_grad():
            for batch in DataLoader(dataset, batch_size=8, collate_fn=collate):
                self.batches.append({k: batch[k] for k in ("image", "K", "T_gt")})
                self.encoded.append(model._encode_and_detect(batch))
        self.batches = {k: torch.cat([b[k] for b in self.batches]) for k in self.batches[0]}
        outs, feature_lists = zip(*self.encoded)
        self.gpdm = {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
        self.image_features = [torch.cat(level) for level in zip(*(f[0] for f in feature_lists))]
        self.coarse_feats = torch.cat([f[1] for f in feature_lists])
        self.size = len(self.coarse_feats)

    def batch(self, indices) -> tuple[dict, tuple]:
        index = torch.as_tensor(indices)
        encoded = ({k: v[index] for k, v in self.gpdm.items()},
                   ([f[index] for f in self.image_features], self.coarse_feats[index]))
        return {k: v[index] for k, v in self.batches.items()}, encoded


class FreshPairs:
    """Training pairs as ``i2preg train`` draws them: ``batch(indices)`` gives pairs ``indices`` of the sequences
    under root with a fresh random perturbation, crop and voxel representatives each call (train mode, keys
    (call, index)), the frozen encoders and GPDM run on them (no gradient)."""

    def __init__(self, model: ICL, cfg: dict, root: Path, collate: Collate):
        sequences = sorted(p.name for p in (root / "sequences").iterdir() if p.is_dir())
        data_cfg = pair_config(cfg)
        self.pairs = KittiPairs(KittiOdometry(root, sequences, data_cfg["cameras"]), data_cfg, train=True)
        self.model, self.collate, self.size, self.calls = model, collate, len(self.pairs), 0

    def batch(self, indices) -> tuple[dict, tuple]:
        self.calls += 1
        batch = self.collate([self.pairs[(self.calls, int(i))] for i in indices])
        with torch.no_grad():
            encoded = self.model._encode_and_detect(batch)
        return {k: batch[k] for k in ("image", "K", "T_gt")}, encoded


def forward(model: ICL, pairs: EncodedPairs | FreshPairs, indices) -> tuple[dict, dict]:
    """ICL's forward on the pairs ``indices`` with the cached (or freshly drawn) encoders' and GPDM's outputs
    standing in for the model's own ``_encode_and_detect`` during the call: (outputs, batch)."""
    batch, encoded = pairs.batch(indices)
    model._encode_and_detect = lambda _: encoded
    try:
        return model(batch), batch
    finally:
        del model._encode_and_detect


def unbounded_corr(out: dict, batch: dict) -> float:
    """The plain L_corr: mean distance over the queries whose 3D keypoint is in front of the GT camera."""
    pixels, depth = project_points(transform_points(batch["T_gt"], out["kp_3d"]), batch["K"])
    in_front = depth > MIN_DEPTH
    return float((out["kp_2d"] - pixels).norm(dim=-1)[in_front].mean())


def frustum_pairing_errors(out: dict, batch: dict) -> dict[str, np.ndarray]:
    """Per query (B, Q), with f = pi(T_f kp_3d) the frustum pairing, g = pi(T_gt kp_3d) and k = kp_2d (pixels):
    error |f - g|, NaN where the 3D keypoint is behind the GT camera; shift |k - f|, ICLM's move away from the
    frustum pairing; dot (k - f).(g - f) and square |g - f|^2 (NaN behind the GT camera), whose sums give the
    share of the frustum pairing's error that ICLM's shift corrects (least squares: 0 for the frustum pairing
    itself, 1 for the GT pairs)."""
    g, depth = project_points(transform_points(batch["T_gt"], out["kp_3d"]), batch["K"])
    f = project_points(transform_points(out["frustum_pose"], out["kp_3d"]), batch["K"])[0]
    in_front = depth > MIN_DEPTH
    nan = lambda x: torch.where(in_front, x, torch.nan).double().numpy()  # noqa: E731
    return {"error": nan((f - g).norm(dim=-1)), "shift": (out["kp_2d"] - f).norm(dim=-1).double().numpy(),
            "dot": nan(((out["kp_2d"] - f) * (g - f)).sum(-1)), "square": nan((g - f).square().sum(-1))}


def evaluate(model: ICL, pairs: EncodedPairs) -> dict[str, float]:
    """ICLM's pairs, PnP on them and PRM's pose against the frustum pose, on all of ``pairs``."""
    model.eval()
    parts, frustum_errors, errors = [], [], {"final": [], "frustum": [], "pnp": []}
    with torch.no_grad():
        for start in range(0, pairs.size, 8):
            out, batch = forward(model, pairs, range(start, min(start + 8, pairs.size)))
            parts.append(pair_statistics(out, batch, 8.0))
            frustum_errors.append(frustum_pairing_errors(out, batch))
            T_gt = batch["T_gt"].double().numpy()
            pnp = pnp_poses(out["kp_2d"], out["kp_3d"], batch["K"])[0]
            for name, pose in (("final", out["pose"]), ("frustum", out["frustum_pose"]), ("pnp", pnp)):
                errors[name].append(registration_errors(pose.double().numpy(), T_gt))
    model.train()
    stats = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    query_error = stats["query_error_px"]
    frustum = {k: np.concatenate([e[k] for e in frustum_errors]) for k in frustum_errors[0]}
    row = {
        "pair_px": np.nanmedian(query_error),
        "frustum_pairing_px": np.nanmedian(frustum["error"]),
        "shift_px": np.median(frustum["shift"]),
        "shift_gain": np.nansum(frustum["dot"]) / np.nansum(frustum["square"]),
        "under_8px": 100 * np.nanmean(np.where(np.isnan(query_error), np.nan, query_error < 8)),
        "kp_3d_spread_px": stats["kp_3d_spread_px"].mean(),
        "entropy_2d": stats["entropy_2d"].mean(),
        "entropy_3d": stats["entropy_3d"].mean(),
    }
    for name, parts_of in errors.items():
        s = summarize({k: np.concatenate([e[k] for e in parts_of]) for k in parts_of[0]})
        row[f"{name}_acc"] = 100 * s["acc"]
        row[f"{name}_rte_med"], row[f"{name}_rre_med"] = s["rte_median"], s["rre_median"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=bundled_weights())
    parser.add_argument("--train-data", type=Path, required=True)
    parser.add_argument("--heldout-data", type=Path, required=True)
    parser.add_argument("--pairs", type=int, help="the first N pairs of each split (default: all)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                        help="override a model, loss or train setting (train.gradient_clip_val, train.weight_decay)")
    parser.add_argument("--csv", type=Path, help="write the rows here too")
    parser.add_argument("--save", type=Path, help="save the trained weights here (safetensors)")
    parser.add_argument("--fresh-pairs", action="store_true",
                        help="train on the --train-data pairs drawn afresh each step (random perturbation, as i2preg "
                             "train), GPDM run on each batch; the rows still score the fixed pairs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    cfg = deep_update(read_weights_config(args.weights), parse_overrides(args.set))  # weights hold a full config
    model = ICL(cfg["model"])
    fresh = load_weights(model, args.weights, strict=False)  # modules the weights lack (new ICLM stages) start fresh
    fresh_modules = sorted({".".join(name.split(".")[:3]) for name in fresh})
    print(f"freshly initialised: {', '.join(fresh_modules)}" if fresh else "every tensor from the weights", flush=True)
    model.freeze_gpdm()
    model.eval()
    collate = Collate(cfg["model"])
    splits = {"train": EncodedPairs(model, fixed_pairs(cfg, args.train_data, args.pairs), collate),
              "heldout": EncodedPairs(model, fixed_pairs(cfg, args.heldout_data, args.pairs), collate)}
    model.train()
    train = FreshPairs(model, cfg, args.train_data, collate) if args.fresh_pairs else splits["train"]
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=args.lr, weight_decay=cfg["train"].get("weight_decay", 0.0))
    clip = cfg["train"].get("gradient_clip_val")
    rng = np.random.default_rng(args.seed)
    order: list[int] = []
    window: list[dict[str, float]] = []
    rows = []
    started = time.perf_counter()
    for step in range(args.steps + 1):
        if step % args.log_every == 0 or step == args.steps:
            losses = {k: float(np.mean([w[k] for w in window])) for k in window[0]} if window else {}
            if window:
                losses["corr_batch_max"] = max(w["corr_unbounded"] for w in window)
                losses["grad_norm_max"] = max(w["grad_norm"] for w in window)
                losses["s_per_step"] = (time.perf_counter() - started) / len(window)
            for split, pairs in splits.items():
                row = {"step": step, "split": split, **(losses if split == "train" else {}), **evaluate(model, pairs)}
                rows.append(row)
                print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
            window, started = [], time.perf_counter()
        if step == args.steps:
            break
        if len(order) < args.batch_size:  # epochs over the training pairs, each in a fresh random order
            order += rng.permutation(train.size).tolist()
        indices, order = order[: args.batch_size], order[args.batch_size :]
        out, batch = forward(model, train, indices)
        terms = compute_losses(out, batch, cfg["loss"], stage=2)
        optimizer.zero_grad()
        terms["total"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, clip if clip else math.inf)
        optimizer.step()
        window.append({**{k: float(terms[k]) for k in STAGE2_TERMS if k in terms}, "corr_unbounded": unbounded_corr(out, batch),
                       "grad_norm": float(grad_norm)})
    if args.csv:
        keys = list(dict.fromkeys(k for row in rows for k in row))
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, keys)
            writer.writeheader()
            writer.writerows(rows)
    if args.save:
        save_weights(model, args.save, cfg, {"stage": 2, "global_step": args.steps})


if __name__ == "__main__":
    main()
