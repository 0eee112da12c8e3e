"""The ``i2preg`` command: ``synth``, ``train``, ``demo`` and friends (``i2preg COMMAND --help``)."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from . import __version__
from .config import deep_update, parse_overrides
from .errors import InputError


def _synth(args: argparse.Namespace) -> None:
    from .data.synthetic import generate_dataset

    ids = list(range(args.first_sequence, args.first_sequence + args.sequences))
    out = generate_dataset(args.out, ids, args.frames, seed=args.seed, sensor=args.sensor, workers=args.workers,
                           appearance=args.appearance)
    print(f"wrote {out}")


def _train(args: argparse.Namespace) -> None:
    from .config import load_config
    from .train import train

    overrides = parse_overrides(args.set)
    cfg = load_config(args.config, overrides)
    for key in ("devices", "num_nodes", "strategy", "accelerator", "precision"):
        value = getattr(args, key)
        if value is not None:
            cfg["train"][key] = int(value) if isinstance(value, str) and value.isdigit() else value
    if args.data:
        cfg["data"]["root"] = args.data
    if args.init:
        cfg["train"]["init_weights"] = args.init
    if args.stages:
        cfg["train"]["stages"] = args.stages
    run_dir = Path(args.run_dir or Path("runs") / Path(args.config).stem)
    print(f"final weights: {train(cfg, run_dir, resume=args.resume, overrides=overrides)}")


def _add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--refine", metavar="none|edges|lines",
                   help="after the solver: edges (edge alignment on the dense cloud), lines (the yaw that lines the"
                        " cloud's walls up with the image's horizontal lines), both beyond the paper, or none"
                        " (default: the weights' eval.refine)")
    p.add_argument("--point-draws", dest="point_draws", type=int, metavar="D",
                   help="run the network on D draws of the cloud's point sample and take the consensus of their"
                        " poses: more accurate on scenes like the synthetic world's (not on the real frames), D times"
                        " the points' work and memory (default: the weights' eval.point_draws, 1)")


def _eval(args: argparse.Namespace) -> None:
    from .evaluate import evaluate

    evaluate(args.weights, args.data, args.out, config=args.config, split=args.split, limit=args.limit,
             batch_size=args.batch_size, device=args.device, figure_pairs=args.figure_pairs,
             overrides=deep_update(parse_overrides(args.set), _eval_overrides(args)), solver=args.solver,
             sequences=args.sequences)
    print(f"wrote pairs.csv, summary.json and the figures in {args.out}")


def _eval_overrides(args: argparse.Namespace) -> dict:
    override = {} if args.refine is None else {"refine": args.refine}
    if args.point_draws is not None:
        override["point_draws"] = args.point_draws
    return {"eval": override} if override else {}


def _compare(args: argparse.Namespace) -> None:
    from .compare import compare

    compare(args.method, args.data, args.out, config=args.config, split=args.split, limit=args.limit,
            batch_size=args.batch_size, device=args.device, overrides=parse_overrides(args.set),
            sequences=args.sequences)
    print(f"wrote comparison.md and comparison.csv in {args.out}")


def _register(args: argparse.Namespace) -> None:
    from .api import REGISTER_FILES, REGISTER_PROTOCOL_FILES, register_files

    prior = {} if args.prior_yaw_deg is None else {"prior_yaw_deg": args.prior_yaw_deg}
    print(register_files(args.image, args.points, args.calib, args.out, camera=args.camera, weights=args.weights,
                         extrinsic=args.extrinsic, protocol_seed=args.protocol_seed, refine=args.refine,
                         traffic=args.traffic, prior=args.prior, cloud_axes=args.cloud_axes,
                         point_draws=args.point_draws, yaw_sectors=args.yaw_sectors,
                         single_sweep=args.single_sweep, **prior))
    if args.out:
        names = REGISTER_FILES + (REGISTER_PROTOCOL_FILES if args.protocol_seed is not None else ())
        print(f"wrote {', '.join(names)} in {args.out}")


def _export(args: argparse.Namespace) -> None:
    from .export import export_weights

    print(f"wrote {export_weights(args.weights, args.out)}")


def _prepare_nuscenes(args: argparse.Namespace) -> None:
    from .data.nuscenes import prepare_nuscenes

    s = prepare_nuscenes(args.root, args.version, args.out, parse_overrides(args.set), progress=print)
    print(f"{s.pairs} pairs; dropped: {s.no_camera} without a camera image within reach, {s.few_points} with too few"
          f" points in view; {len(s.night_scenes)} night scenes excluded; train with --config {s.config}")


def _index_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _name_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _add_test_set_arguments(p: argparse.ArgumentParser, config_help: str) -> None:
    """The test set and how to run on it, as ``eval`` and ``compare`` share them."""
    p.add_argument("--data", required=True, help="dataset root (KITTI Odometry layout), e.g. a folder of i2preg synth")
    p.add_argument("--config", help=config_help)
    p.add_argument("--split", choices=["train", "val", "test"], default="test")
    p.add_argument("--sequences", type=_name_list, metavar="00,01,...",
                   help="the split's sequence names (default: the config's data.SPLIT_sequences; the synthetic test"
                        " set's are 00,01,02,03)")
    p.add_argument("--limit", type=int, help="the first N pairs only")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=8)
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")


def _demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(Path(args.out))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="i2preg", description=__doc__)
    parser.add_argument("--version", action="version", version=f"i2preg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="generate a synthetic street dataset in the KITTI Odometry layout")
    p.add_argument("--out", required=True, help="output root (sequences/ and poses/ are written inside)")
    p.add_argument("--sequences", type=int, default=1,
                   help="how many sequences, numbered from --first-sequence (default 1; eval's --sequences names them)")
    p.add_argument("--first-sequence", type=int, default=0, help="id of the first sequence (default 0)")
    p.add_argument("--frames", type=int, default=20, help="frames per sequence (default 20)")
    p.add_argument("--seed", type=int, default=0,
                   help="world seed; with the sequence id it fixes a sequence (default 0; the test set's is 2)")
    p.add_argument("--sensor", choices=["kitti", "nuscenes"], default="kitti",
                   help="the rig: kitti (default: 64-beam LiDAR, 1241 x 376 images) or nuscenes (32 beams, 1600 x 900)")
    p.add_argument("--appearance", choices=["default", "varied"], default="default",
                   help="default: the world of the bundled model and test set, byte for byte; varied adds street "
                        "clutter (bollards, bins, bushes, hedges, fences, pedestrians, vans), clouds, sun shadows, "
                        "facade weathering and a random camera response per image (exposure, white balance, "
                        "vignetting, blur, noise, gamma, saturation, JPEG)")
    p.add_argument("--workers", type=int, default=1, help="processes (default 1; same bytes with any number)")
    p.set_defaults(func=_synth)

    p = sub.add_parser("train", help="train ICL: stage 1 (GPDM) then stage 2 (everything else)")
    p.add_argument("--config", required=True, help="a YAML file or a bundled config name (e.g. synthetic-small)")
    p.add_argument("--data", help="dataset root (overrides data.root)")
    p.add_argument("--run-dir", help="where checkpoints, logs and weights go (default runs/CONFIG)")
    p.add_argument("--resume", action="store_true", help="continue a killed run from its last checkpoint (with its own config; "
                   "--set train.stage1_epochs=N and the like train it for longer)")
    p.add_argument("--init", help="start from these weights (.safetensors), e.g. an earlier run's")
    p.add_argument("--stages", type=int, nargs="+", choices=[1, 2], help="stages to run (default: 1 2)")
    p.add_argument("--devices", help="Lightning devices (e.g. 1, 4, auto)")
    p.add_argument("--num-nodes", dest="num_nodes", type=int)
    p.add_argument("--strategy", help="Lightning strategy (auto, ddp, ddp_spawn...)")
    p.add_argument("--accelerator", help="cpu, gpu or auto")
    p.add_argument("--precision", help="32-true, bf16-mixed, 16-mixed")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value")
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="evaluate weights with the benchmark protocol: table, pairs.csv, summary.json, figures")
    p.add_argument("--weights", help="a .safetensors file written by i2preg train, or a bundled model's name"
                                     " (default: the bundled synthetic-small)")
    _add_test_set_arguments(p, config_help="YAML file or bundled name whose data and eval sections replace the weights'")
    p.add_argument("--out", default="outputs/eval", help="folder for pairs.csv, summary.json and the figures")
    p.add_argument("--figure-pairs", dest="figure_pairs", type=_index_list, metavar="I,J,...",
                   help="indices of the pairs to draw (default: the first 3; '' for none)")
    p.add_argument("--solver", default="prm",
                   help="final pose: prm (PRM's), pnp (PnP-RANSAC on ICL's keypoint pairs), frustum (GPDM's) or fine"
                        " (the fine search's, weights trained with it)")
    _add_eval_arguments(p)
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value")
    p.set_defaults(func=_eval)

    p = sub.add_parser("compare", help="ICL, its ablations and the matching baseline on one test set, one table")
    p.add_argument("--method", action="append",
                   metavar="NAME=WEIGHTS[:solver=prm|pnp|frustum|fine][:mask=geometric|classifier][:refine=none|edges|lines]",
                   help="a method to run (repeat); WEIGHTS: a file or a bundled model's name, whose header says which"
                        " model it is (default: icl=synthetic-small and matching=matching-small, the bundled ones)")
    _add_test_set_arguments(p, config_help="YAML file or bundled name whose data and eval sections all methods use")
    p.add_argument("--out", default="outputs/compare", help="folder for comparison.md and comparison.csv")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value")
    p.set_defaults(func=_compare)

    p = sub.add_parser("register", help="register one camera image to one point cloud with trained weights")
    p.add_argument("--image", required=True, help="camera image (PNG, JPG...)")
    p.add_argument("--points", required=True, help="point cloud: KITTI .bin, .pcd.bin, PCD, PLY, NPY or NPZ")
    p.add_argument("--calib", required=True, help="KITTI calib.txt, a 9-number K file, or YAML/JSON (K, distortion)")
    p.add_argument("--camera", type=int, default=2, help="KITTI camera whose P gives K")
    p.add_argument("--weights", help="weights file or bundled model name (default: the bundled synthetic-small)")
    p.add_argument("--extrinsic", help="4x4 LiDAR -> camera text file, for a calib without one (nuScenes style)")
    p.add_argument("--protocol-seed", dest="protocol_seed", type=int, metavar="SEED",
                   help="check the model on this frame: move the cloud into the camera frame with the calib's"
                        " extrinsic, perturb it by the protocol with SEED, register, and report RTE and RRE")
    p.add_argument("--out", help="write pose.txt, overlay.png and overlay_frustum.png here")
    p.add_argument("--traffic", choices=("right", "left", "auto"), default="right",
                   help="the side of the street the scene's traffic keeps to: the model learned a right-hand world;"
                        " left registers the mirror images of image and cloud and mirrors the pose back; auto"
                        " registers both ways and keeps the pose the network scores higher (twice the time)")
    p.add_argument("--yaw-sectors", dest="yaw_sectors", type=int, default=0, metavar="S",
                   help="run the network S times more, its yaw search held to each of S sectors of the circle, and"
                        " keep the run the most runs agree with (for scenes unlike the training world; with --prior,"
                        " of the runs within --prior-yaw-deg of it); its --refine defaults to lines, which brings the"
                        " runs together")
    p.add_argument("--single-sweep", dest="single_sweep", action="store_true",
                   help="the cloud is one sweep of a spinning LiDAR beside the camera (the benchmark protocol's"
                        " clouds): GPDM's pose search looks about the sweep's origin, found from the gap its beams"
                        " leave on the ground, instead of the centre the network regresses")
    p.add_argument("--cloud-axes", dest="cloud_axes", default="rdf", metavar="AXES",
                   help="where the cloud's x, y and z point, one letter each of r, l, d, u, f, b (right, left, down,"
                        " up, forward, back): rdf (default) is the camera's axes, which a 3-DoF model expects; flu a"
                        " LiDAR's x forward, y left, z up (KITTI, ROS); rfu nuScenes' LiDAR's")
    p.add_argument("--prior", metavar="POSE_TXT",
                   help="a guess of the pose (4x4 cloud -> camera text file, as pose.txt; from odometry or a compass):"
                        " the yaw search keeps within --prior-yaw-deg of its yaw")
    p.add_argument("--prior-yaw-deg", dest="prior_yaw_deg", type=float, metavar="DEG",
                   help="how far the yaw may lie from the prior's (default 30)")
    _add_eval_arguments(p)
    p.set_defaults(func=_register)

    p = sub.add_parser("export", help="export trained weights' network to ONNX, for ONNX Runtime (Registrator backend)")
    p.add_argument("--weights", help="weights file or bundled model name (default: the bundled synthetic-small)")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.set_defaults(func=_export)

    p = sub.add_parser("prepare", help="turn a public dataset into protocol-ready sequences")
    datasets = p.add_subparsers(dest="dataset", required=True)
    q = datasets.add_parser("nuscenes", help="nuScenes LIDAR_TOP keyframes + CAM_FRONT (METHOD section 3)")
    q.add_argument("--root", required=True, help="nuScenes root (VERSION/*.json, samples/, sweeps/)")
    q.add_argument("--version", required=True, choices=["v1.0-trainval", "v1.0-test", "v1.0-mini"])
    q.add_argument("--out", required=True, help="output root in the KITTI Odometry layout, with nuscenes.yaml")
    q.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a preparation setting")
    q.set_defaults(func=_prepare_nuscenes)

    p = sub.add_parser("demo", help="generate a small synthetic test set and show what i2preg does with it")
    p.add_argument("--out", default="outputs/demo",
                   help="folder for the data, pictures and eval (default outputs/demo)")
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command: bad input is one line on stderr and exit code 2, a warning one line on stderr."""
    args = build_parser().parse_args(argv)

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"i2preg {args.command}: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show_warning
        try:
            args.func(args)
        except InputError as err:
            print(f"i2preg {args.command}: error: {err}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
