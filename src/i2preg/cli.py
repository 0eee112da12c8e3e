"""The ``i2preg`` command: ``synth``, ``train``, ``demo`` and friends (``i2preg COMMAND --help``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import InputError


def _synth(args: argparse.Namespace) -> None:
    from .data.synthetic import generate_dataset

    ids = list(range(args.first_sequence, args.first_sequence + args.sequences))
    out = generate_dataset(args.out, ids, args.frames, seed=args.seed, sensor=args.sensor, workers=args.workers)
    print(f"wrote {out}")


def _train(args: argparse.Namespace) -> None:
    from .config import deep_update, load_config, parse_override
    from .train import train

    cfg = load_config(args.config)
    for text in args.set or []:
        cfg = deep_update(cfg, parse_override(text))
    for key in ("devices", "num_nodes", "strategy", "accelerator", "precision"):
        value = getattr(args, key)
        if value is not None:
            cfg["train"][key] = int(value) if isinstance(value, str) and value.isdigit() else value
    if args.data:
        cfg["data"]["root"] = args.data
    run_dir = Path(args.run_dir or Path("runs") / Path(args.config).stem)
    print(f"final weights: {train(cfg, run_dir, resume=args.resume)}")


def _demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(Path(args.out))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="i2preg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="generate a synthetic street dataset in the KITTI Odometry layout")
    p.add_argument("--out", required=True, help="output root (sequences/ and poses/ are written inside)")
    p.add_argument("--sequences", type=int, default=1, help="number of sequences")
    p.add_argument("--first-sequence", type=int, default=0, help="id of the first sequence")
    p.add_argument("--frames", type=int, default=20, help="frames per sequence")
    p.add_argument("--seed", type=int, default=0, help="world seed; with the sequence id it fixes a sequence")
    p.add_argument("--sensor", choices=["kitti", "nuscenes"], default="kitti")
    p.add_argument("--workers", type=int, default=1, help="processes")
    p.set_defaults(func=_synth)

    p = sub.add_parser("train", help="train ICL: stage 1 (GPDM) then stage 2 (everything else)")
    p.add_argument("--config", required=True, help="a YAML file or a bundled config name (e.g. synthetic-small)")
    p.add_argument("--data", help="dataset root (overrides data.root)")
    p.add_argument("--run-dir", help="where checkpoints, logs and weights go (default runs/CONFIG)")
    p.add_argument("--resume", action="store_true", help="continue a killed run from its last checkpoint")
    p.add_argument("--devices", help="Lightning devices (e.g. 1, 4, auto)")
    p.add_argument("--num-nodes", dest="num_nodes", type=int)
    p.add_argument("--strategy", help="Lightning strategy (auto, ddp, ddp_spawn...)")
    p.add_argument("--accelerator", help="cpu, gpu or auto")
    p.add_argument("--precision", help="32-true, bf16-mixed, 16-mixed")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value")
    p.set_defaults(func=_train)

    p = sub.add_parser("demo", help="generate a small synthetic test set and show what i2preg does with it")
    p.add_argument("--out", default="outputs/demo")
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except InputError as err:
        print(f"i2preg {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
