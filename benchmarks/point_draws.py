"""How the pose moves with the draw of the point sample, and what the consensus of D draws gives, for D = 1..N.

    python benchmarks/point_draws.py --data datasets/dev-seed4 --sequences 00,01,02,03 [--weights W] [--draws 8]
                                     [--pairs P] [--batch-size 4]

Each pair of the test split is run on N draws of its point sample (``eval.point_draws``: the first the protocol's
own, the others seeded per pair), and each draw's final pose is kept. Prints the median over the pairs of the
standard deviation of a pair's RTE over the N draws, then ONE Markdown table: for D = 1..N, the final median RTE,
mean RTE, median RRE and Acc of the consensus of the first D draws (``geometry.consensus_pose``, as ``eval
--point-draws D`` computes it), and how many pairs have all D draws, and all but one, in the consensus. Choose D on
design sets, never on the test set.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from i2preg.evaluate import load_model
from i2preg.geometry import consensus_pose
from i2preg.inference import evaluation_config, pair_loader, to_device, with_sequences
from i2preg.metrics import registration_errors, success
from i2preg.weights import read_weights_config, resolve_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="weights (default: the bundled model)")
    parser.add_argument("--data", required=True, help="dataset root (KITTI Odometry layout)")
    parser.add_argument("--sequences", required=True, help="the test split's sequences, e.g. 00,01")
    parser.add_argument("--draws", type=int, default=8, help="draws of each pair's point sample")
    parser.add_argument("--pairs", type=int, help="the first P pairs (default: all)")
    parser.add_argument("--batch-size", type=int, default=4, help="pairs a batch (each of --draws rows)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    weights = resolve_weights(args.weights)
    overrides = with_sequences({"eval": {"point_draws": args.draws}}, "test", args.sequences.split(","))
    cfg = evaluation_config(read_weights_config(weights), None, overrides)
    model, cfg = load_model(weights, cfg)
    model.eval()
    poses, truths = [], []
    with torch.inference_mode():
        for batch in pair_loader(cfg, "test", args.data, args.pairs, args.batch_size):
            pose = model(to_device(batch, torch.device("cpu")))["pose"].double()
            poses.append(pose.view(-1, args.draws, 4, 4))
            truths.append(batch["T_gt"][:: args.draws].double().numpy())
    poses, truth = torch.cat(poses), np.concatenate(truths)
    per_draw = np.stack([registration_errors(poses[:, k].numpy(), truth)["rte"] for k in range(args.draws)], 1)
    print(f"{len(truth)} pairs, {args.draws} draws: median over the pairs of a pair's RTE standard deviation over the"
          f" draws {np.median(per_draw.std(1)):.3f} m")
    print("| draws | median RTE (m) | mean RTE (m) | median RRE (deg) | Acc | all draws agree | all but one |")
    print("|---|---|---|---|---|---|---|")
    for draws in range(1, args.draws + 1):
        pose, agreeing = consensus_pose(poses[:, :draws])
        errors = registration_errors(pose.numpy(), truth)
        agreeing = agreeing.numpy()
        print(f"| {draws} | {np.median(errors['rte']):.3f} | {errors['rte'].mean():.3f} | {np.median(errors['rre']):.2f}"
              f" | {100 * success(errors).mean():.1f} % | {(agreeing == draws).sum()} | {(agreeing >= draws - 1).sum()} |")


if __name__ == "__main__":
    main()
