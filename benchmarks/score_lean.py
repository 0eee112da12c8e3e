"""The fine search's score under a camera that leans: the mean best logit of a run and of its mirror image's run.

    python benchmarks/score_lean.py --data datasets/dev-seed3 [--sequences 00,01] [--limit 16] [--weights W]
                                    [--tilts 0:0,2:0,-2:0,0:4]

The first ``--limit`` pairs of the test split, each seen by a camera turned by every pitch:roll of ``--tilts`` (degrees;
``search_runs.tilted``: the image warped by K R K^-1, the cloud moved with the camera, so that the true pose is still
a yaw and a planar shift), are run by the network as they are and as their mirror images (``search_runs.mirrored``; on
a right-hand world the mirror image's run flips its yaw), without refinement. One Markdown row a tilt: the mean of each
run's best fine-search logit (``inference.search_scores``, what ``api.chosen_run`` weighs runs by), the Acc of each
run, and how often the mirror image's run scores higher (where ``traffic="auto"`` would keep it). A score that the
lean moves more than the pose does picks the wrong run; a design check on synthetic pairs (docs/METHOD.md, "Heights
over the cloud's ground").
"""

from __future__ import annotations

import argparse

import torch
from search_runs import MIRROR, mirrored, run, tilted

from i2preg.assembly import full_config, load_model
from i2preg.data.collate import Collate
from i2preg.data.pairs import build_dataset
from i2preg.metrics import registration_errors, success
from i2preg.weights import resolve_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="dataset root (KITTI Odometry layout)")
    parser.add_argument("--sequences", default="00,01", help="the test split's sequences")
    parser.add_argument("--weights", help="weights (default: the bundled model)")
    parser.add_argument("--limit", type=int, default=16, help="the first N pairs (one batch)")
    parser.add_argument("--tilts", default="0:0,2:0,-2:0,0:4", help="pitch:roll pairs in degrees, comma-separated")
    args = parser.parse_args()
    model, cfg = load_model(resolve_weights(args.weights))
    model.eval()
    cfg = full_config(cfg)
    cfg["data"]["test_sequences"] = args.sequences.split(",")
    eval_cfg = {**cfg["eval"], "refine": "none", "point_draws": 1}
    pairs = build_dataset(cfg, "test", args.data)
    collate = Collate(model.conf, knn_workers=-1)
    level = [pairs[index] for index in range(min(args.limit, len(pairs)))]
    print("| pitch, roll (deg) | pairs | best logit: as given / mirror image | Acc: as given / mirror image |"
          " mirror image scores higher |")
    print("|---|---|---|---|---|")
    for tilt in args.tilts.split(","):
        pitch, roll = (float(angle) for angle in tilt.split(":"))
        samples = [tilted(sample, pitch, roll) for sample in level] if pitch or roll else level
        truth = torch.stack([sample["T_gt"].double() for sample in samples]).numpy()
        torch.manual_seed(0)
        (given, given_score), (mirror, mirror_score) = (run(model, collate(batch), eval_cfg) for batch in
                                                        (samples, [mirrored(sample) for sample in samples]))
        given_ok = success(registration_errors(given.numpy(), truth)).mean()
        mirror_ok = success(registration_errors((MIRROR @ mirror @ MIRROR).numpy(), truth)).mean()
        print(f"| {pitch:g}, {roll:g} | {len(samples)} | {given_score.mean():.1f} / {mirror_score.mean():.1f} |"
              f" {given_ok:.1%} / {mirror_ok:.1%} | {(mirror_score > given_score).double().mean():.1%} |")


if __name__ == "__main__":
    main()
