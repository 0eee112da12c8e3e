"""What the fine search's score sees about the true pose: its logits over a lateral x forward grid about the GT.

    python benchmarks/fine_score_profile.py [--weights synthetic-small] --data datasets/dev-seed4 [--sequences 00,01]
        [--pairs 48] [--radius 3] [--step 0.15]

The network runs on each pair as in inference; the fine search's scorer (``FineSearch.step``, with the features and
points it was given) then scores a grid of (2 radius + 1)^2 poses about the TRUE pose: lateral and forward shifts of
``step`` metres along the true camera's axes, the true yaw. Prints, as Markdown, the mean over the pairs of each
pose's logit minus the true pose's (rows: lateral, columns: forward), then how often the grid's best pose is the true
one along each axis and the median absolute softmax-weighted mean offset per axis (what one grid about the truth
would move the pose by). A flat row or column is a direction the score does not see. Last, the whole fine search (its
wide grid and its grids) run from the true pose and from GPDM's frustum pose: how far from the truth each ends, per
axis; where the two differ, the error comes from the pose the search starts at.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch.nn.functional import normalize
from torch.utils.data import DataLoader, Subset

from i2preg.api import Registrator
from i2preg.data.collate import Collate
from i2preg.data.pairs import build_dataset
from i2preg.geometry import pose_to_frustum_params
from i2preg.inference import evaluation_config, with_sequences
from i2preg.model.fine_search import offset_grid, offsets_to


def about_true_pose(model, batch: dict, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, G) the fine search's logits for the grid (G, 3) of offsets about each pair's GT pose, and (2, B, 3) the
    offsets (``offsets_to``) from the GT of the fine search's pose run from the GT and from GPDM's frustum pose."""
    search, inputs = model.fine, []
    hook = search.register_forward_pre_hook(lambda module, args: inputs.append(args))
    try:
        out = model(batch)
    finally:
        hook.remove()
    token_map, feats, xyz, _, _, K, image_size = inputs[0]
    centre, rotation = pose_to_frustum_params(batch["T_gt"])
    rotation = normalize(rotation, dim=-1)
    from_truth = search(token_map, feats, xyz, centre, rotation, K, image_size)
    ends = torch.stack([offsets_to(centre, rotation, from_truth["fine_centre"], from_truth["fine_rotation"]),
                        offsets_to(centre, rotation, out["fine_centre"], out["fine_rotation"])])
    image, points = search.image_proj(token_map), search.point_proj(feats)
    return search.step(grid, image, points, xyz, centre, rotation, K, image_size)[0], ends


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="synthetic-small")
    parser.add_argument("--data", required=True)
    parser.add_argument("--sequences", default="00,01")
    parser.add_argument("--pairs", type=int, default=48)
    parser.add_argument("--radius", type=int, default=3)
    parser.add_argument("--step", type=float, default=0.15)
    args = parser.parse_args()
    registrator = Registrator.from_pretrained(args.weights)
    model = registrator.model.eval()
    if model.fine is None:
        raise SystemExit(f"{args.weights}: no fine search (model.fine.num_points is 0)")
    cfg = evaluation_config(registrator.config, None, with_sequences(None, "test", args.sequences.split(",")))
    dataset = build_dataset(cfg, "test", args.data)
    pairs = Subset(dataset, range(min(args.pairs, len(dataset))))
    r, side = args.radius, 2 * args.radius + 1
    grid = offset_grid([r, r, 0], torch.tensor([args.step, args.step, 0.0]))  # lateral-major, then forward
    with torch.inference_mode():
        logits, ends = zip(*(about_true_pose(model, batch, grid)
                             for batch in DataLoader(pairs, batch_size=8, collate_fn=Collate(cfg["model"]))))
    logits, ends = torch.cat(logits), np.median(np.abs(torch.cat(ends, dim=1).numpy()), axis=1)  # (2, 3)
    relative = (logits - logits[:, len(grid) // 2 : len(grid) // 2 + 1]).view(-1, side, side).numpy()
    offsets = np.arange(-r, r + 1) * args.step
    print(f"{len(relative)} pairs of {args.data}, {args.weights}: mean logit minus the true pose's\n")
    print("| lateral \\ forward (m) | " + " | ".join(f"{o:+.2f}" for o in offsets) + " |")
    print("|---" * (side + 1) + "|")
    for o, row in zip(offsets, relative.mean(0)):
        print(f"| {o:+.2f} | " + " | ".join(f"{v:+.2f}" for v in row) + " |")
    best = relative.reshape(len(relative), -1).argmax(1)
    weights = logits.softmax(-1).view(-1, side, side).numpy()
    mean_lateral = (weights.sum(2) * offsets).sum(1)
    mean_forward = (weights.sum(1) * offsets).sum(1)
    print(f"\nbest pose at the true lateral position {100 * (best // side == r).mean():.0f} % of the pairs, at the true"
          f" forward position {100 * (best % side == r).mean():.0f} %; softmax-weighted mean offset, median |.|: lateral"
          f" {np.median(np.abs(mean_lateral)):.3f} m, forward {np.median(np.abs(mean_forward)):.3f} m")
    for start, (lateral, forward, yaw) in zip(("the true pose", "GPDM's frustum pose"), ends):
        print(f"the fine search from {start} ends, median |.|: lateral {lateral:.3f} m, forward {forward:.3f} m, yaw"
              f" {np.degrees(yaw):.2f} deg")


if __name__ == "__main__":
    main()
