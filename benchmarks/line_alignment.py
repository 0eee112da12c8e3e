"""The line alignment alone, without a network: from each pair's true pose turned by a seeded yaw, how close does it
come back?

    python benchmarks/line_alignment.py --data datasets/varied-dev4 --sequences 00,01 [--config synthetic-small]
                                        [--camera 2] [--max-yaw-deg 30] [--seed 0] [--set eval.lines.KEY=VALUE ...]
                                        [--pitch-deg 0] [--roll-deg 0]

Each pair of the test split (one camera) starts from its ground-truth pose turned about the camera's y axis by a yaw
drawn uniformly within +-``--max-yaw-deg`` (NumPy generator ``--seed``, one draw a pair in order), and
``lines.align_yaw`` runs on the pair's network crop, intrinsics and dense cloud. Prints one Markdown row: pairs,
starts kept (the guards: too few walls, the best yaw at the window's edge, no clear peak), the median absolute yaw
error after (``metrics.yaw_offsets``), and the share of pairs within 1, 2 and 5 deg. ``--pitch-deg`` and
``--roll-deg`` emulate a camera that is not level: turned about its x axis, then its optical axis, by these angles,
the image warped by the homography K R K^-1 of that turn (borders reflected) and the cloud moved with the camera, so
that the pair's true pose still maps it into the camera's frame while its walls now lean in that frame
(``search_runs.tilted``). A check of the alignment's design on synthetic pairs of either rig (``i2preg synth
--sensor nuscenes`` for a 32-beam LiDAR); not for the real frames' settings.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch
from search_runs import tilted

from i2preg.assembly import full_config
from i2preg.config import load_config, parse_overrides
from i2preg.data.pairs import build_dataset
from i2preg.lines import align_yaw
from i2preg.metrics import yaw_offsets
from i2preg.refine import yaw_shift


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="dataset root (KITTI Odometry layout)")
    parser.add_argument("--sequences", required=True, help="the test split's sequences, e.g. 00,01")
    parser.add_argument("--config", default="synthetic-small", help="the data section's config (crop, dense points)")
    parser.add_argument("--camera", type=int, default=2)
    parser.add_argument("--max-yaw-deg", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pitch-deg", type=float, default=0.0, help="the camera turned about its x axis (deg)")
    parser.add_argument("--roll-deg", type=float, default=0.0, help="and then about its optical axis (deg)")
    parser.add_argument("--set", action="append", default=[], metavar="eval.lines.KEY=VALUE",
                        help="override a config value, e.g. a line alignment setting (lines.LINE_DEFAULTS)")
    args = parser.parse_args()
    cfg = full_config(load_config(args.config, parse_overrides(args.set)))
    conf = cfg["eval"]["lines"]
    cfg["data"].update({"test_sequences": args.sequences.split(","), "cameras": [args.camera]})
    pairs = build_dataset(cfg, "test", args.data)
    rng = np.random.default_rng(args.seed)
    errors, kept = [], 0
    for index in range(len(pairs)):
        sample = pairs[index]
        if args.pitch_deg or args.roll_deg:
            sample = tilted(sample, args.pitch_deg, args.roll_deg)
        truth = sample["T_gt"].double()
        start = (yaw_shift(math.radians(rng.uniform(-args.max_yaw_deg, args.max_yaw_deg)), 0.0) @ truth).float()
        aligned = align_yaw(sample["image"], sample["K"], sample["dense_points"], start, conf)
        kept += bool(torch.equal(aligned, start))
        errors.append(abs(float(yaw_offsets(aligned.double().numpy(), truth.numpy())[0])))
    errors = np.array(errors)
    print("| data | pitch, roll (deg) | pairs | starts kept | median abs yaw error (deg) | within 1 deg | within 2 deg | within 5 deg |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {args.data} | {args.pitch_deg:g}, {args.roll_deg:g} | {len(errors)} | {kept} | {np.median(errors):.2f} | {np.mean(errors < 1):.0%} |"
          f" {np.mean(errors < 2):.0%} | {np.mean(errors < 5):.0%} |")


if __name__ == "__main__":
    main()
