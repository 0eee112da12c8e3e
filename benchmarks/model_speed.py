"""Speed and memory of the ICL model, alone or side by side with another git revision.

    python benchmarks/model_speed.py [--configs synthetic-small kitti | WEIGHTS.safetensors] [--against REV] [--rounds 3]
        [--repeats 3] [--threads 2] [--device cpu|cuda] [--precision 32-true|bf16-mixed] [--forward-batches 1 8]
        [--train-batches 8] [--data ROOT]

Measures, per bundled config: the forward time per pair (inference: eval mode, no_grad) at each forward batch
size; the collate time per pair (the point pyramid, built on the data side); one training step (forward +
losses + backward + Adam, as ``train`` sets up each stage: stage 1 trains GPDM, stage 2 the rest with GPDM
frozen) at each training batch size; and the peak memory of each (CPU: the growth of the process's max RSS over
model + batch; CUDA: torch.cuda.max_memory_allocated). ``--precision bf16-mixed`` runs the forward pass and
the losses under bfloat16 autocast, as ``i2preg train --precision bf16-mixed`` does (the pose searches and
KPConv's matmuls stay float32). Inputs are random images and KITTI-like extents of uniform random points at the
config's input size, or with ``--data ROOT`` the first test pairs of that
KITTI-layout root (e.g. ``datasets/synthetic-test``), read once by this tree and handed to every tree as arrays.
Real scans are dense near the sensor, so their KPConv neighbourhoods hold many more nonzero kernel influences
than uniform points: time the point encoder on ``--data``. A config is random weights, which time most of the
model as trained weights do, but not the pose search and the fine search, whose work depends on the poses they
find: give a weights file (e.g. ``src/i2preg/weights/synthetic-small.safetensors``) with ``--data`` for those.

Each measurement runs in a fresh subprocess whose PYTHONPATH points at a tree's ``src``, and reports the median of
``--repeats`` runs after one warm-up (three on CUDA). ``--against REV`` checks REV out into a temporary git worktree
and measures both trees in turn, ``--rounds`` times, interleaved (this tree, REV, this tree, REV...), so that both
see the same machine load; the table gives the median over the rounds and the ratio REV / this tree (above 1: this
tree is faster). Speed claims in this project are such ratios: absolute times on shared machines move by 30 % and
more. Prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def full_config(name: str) -> dict:
    """A bundled config, or a weights file's (``.safetensors``: the config in its header), with every default
    filled in, as the tree on ``sys.path`` defines them (the function that does so moved between revisions)."""
    from i2preg.config import load_config

    try:
        from i2preg.assembly import full_config as fill
    except ImportError:  # revisions before i2preg.assembly
        from i2preg.config import full_config as fill
    if name.endswith(".safetensors"):
        from i2preg.weights import read_weights_config

        return fill(read_weights_config(Path(name)))
    return fill(load_config(name))


def synthetic_samples(cfg: dict, batch_size: int, seed: int = 0) -> list[dict]:
    """Random images and KITTI-like extents of points (60 m x 3 m x 60 m around the camera), perturbed, at the
    config's input size (data.crop, data.num_points)."""
    from i2preg.geometry import invert_transform, sample_perturbation

    (H, W), N = cfg["data"]["crop"], cfg["data"]["num_points"]
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(batch_size):
        P = sample_perturbation(rng)
        points_cam = rng.uniform([-30, -2, -30], [30, 1, 30], size=(N, 3))
        samples.append({
            "image": rng.random((3, H, W), dtype=np.float32),
            "K": np.array([[W / 2, 0, (W - 1) / 2], [0, W / 2, (H - 1) / 2], [0, 0, 1]], dtype=np.float32),
            "points": (points_cam @ P[:3, :3].T + P[:3, 3]).astype(np.float32),
            "intensity": np.zeros(N, dtype=np.float32),
            "T_gt": invert_transform(P).astype(np.float32),
            "resampled": False,
            "meta": {},
        })  # fmt: skip
    return samples


def dataset_samples(name: str, root: str, batch_size: int) -> list[dict]:
    """The first ``batch_size`` test pairs of the KITTI-layout data under ``root``, read by this tree with the
    config's data settings, as the arrays ``synthetic_samples`` gives."""
    from i2preg.data.pairs import build_dataset

    dataset = build_dataset(full_config(name), "test", root)
    keys = ("image", "K", "points", "intensity", "T_gt")
    samples = []
    for i in range(batch_size):
        pair = dataset[i]  # reads and builds the pair: once
        samples.append({**{key: pair[key].numpy() for key in keys}, "resampled": False, "meta": {}})
    return samples


def current_rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


def measure(name: str, mode: str, batch_size: int, device: str, threads: int, repeats: int,
            samples_file: str | None = None, precision: str = "32-true") -> dict:
    """One measurement of the tree on sys.path, meant for a fresh process. mode: forward, collate, stage1 or
    stage2; samples_file: a pickle of ``dataset_samples``' list (default: ``synthetic_samples``); precision:
    32-true or bf16-mixed (bfloat16 autocast over the forward pass and the losses). Returns the median seconds per
    run and the peak memory in MB."""
    import torch

    from i2preg.data.collate import Collate
    from i2preg.losses import compute_losses
    from i2preg.model import ICL

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = full_config(name)
    model = ICL(cfg["model"])
    if name.endswith(".safetensors"):
        from i2preg.weights import load_weights

        load_weights(model, Path(name))
    model = model.to(device)
    if samples_file:
        with open(samples_file, "rb") as file:
            samples = pickle.load(file)[:batch_size]
    else:
        samples = synthetic_samples(cfg, batch_size)
    collate = Collate(cfg["model"])
    if mode == "collate":
        times = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            collate(samples)
            times.append(time.perf_counter() - start)
        return {"seconds": statistics.median(times[1:]), "peak_mb": 0.0}
    batch = {k: [x.to(device) for x in v] if isinstance(v, list) and isinstance(v[0], torch.Tensor)
             else v.to(device) if isinstance(v, torch.Tensor) else v for k, v in collate(samples).items()}

    def autocast():
        return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")

    if mode == "forward":
        model.eval()

        @torch.no_grad()
        def step():
            with autocast():
                model(batch)
    else:
        stage = int(mode[-1])
        gpdm = {id(p) for p in model.gpdm_parameters()}
        for parameter in model.parameters():  # as training: stage 1 trains GPDM alone, stage 2 all but GPDM
            parameter.requires_grad_((id(parameter) in gpdm) == (stage == 1))
        forward = model.forward_gpdm if stage == 1 else model
        train = cfg["train"]
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=train["lr"], weight_decay=train["weight_decay"])

        def step():
            optimizer.zero_grad()
            with autocast():
                loss = compute_losses(forward(batch), batch, cfg["loss"], stage=stage)["total"]
            loss.backward()
            optimizer.step()

    sync = torch.cuda.synchronize if device == "cuda" else lambda: None
    rss_before = current_rss_kb()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        allocated_before = torch.cuda.memory_allocated()
    # CUDA's first few calls stay slow (H200, the bundled model at batch 1, one warm-up: the median of 3 runs 165 ms
    # a pair, of 7 runs 56 ms)
    warmups = 3 if device == "cuda" else 1
    times = []
    for _ in range(repeats + warmups):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    if device == "cuda":
        peak_mb = (torch.cuda.max_memory_allocated() - allocated_before) / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    return {"seconds": statistics.median(times[warmups:]), "peak_mb": peak_mb}


def measure_tree(src: Path, *args) -> dict:
    """``measure(*args)`` in a fresh Python process that imports i2preg from ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    code = f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import model_speed; " \
           f"print(json.dumps(model_speed.measure(*{list(args)!r})))"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    if result.returncode:
        raise RuntimeError(f"measurement {args} under {src} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measurements(args) -> list[tuple[str, str, int, str]]:
    """(config, mode, batch size, row label) of every measurement the arguments ask for."""
    rows = []
    for name in args.configs:
        rows += [(name, "forward", b, f"forward ms/pair, batch {b}") for b in args.forward_batches]
        rows.append((name, "collate", max(args.forward_batches), "collate ms/pair"))
        for b in args.train_batches:
            rows += [(name, f"stage{s}", b, f"train step s, stage {s}, batch {b}") for s in (1, 2)]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["synthetic-small", "kitti"],
                        help="bundled config names, or .safetensors weights files: their config and weights")
    parser.add_argument("--against", help="git revision to time side by side with this tree")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--threads", type=int, default=2, help="torch threads on CPU")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement after the warm-ups")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds with --against")
    parser.add_argument("--forward-batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--train-batches", type=int, nargs="*", default=[8], help="none: no training steps")
    parser.add_argument("--data", help="KITTI-layout root whose first test pairs are the inputs (default: random)")
    args = parser.parse_args()

    trees = {"this tree": REPO / "src"}
    with tempfile.TemporaryDirectory(prefix="model_speed_") as scratch:
        if args.against:
            worktree = Path(scratch) / "against"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(worktree),
                            args.against], check=True)
            trees[args.against] = worktree / "src"
        try:
            samples_files = {name: None for name in args.configs}
            if args.data:
                largest = max(args.forward_batches + args.train_batches)
                for name in args.configs:
                    samples_files[name] = str(Path(scratch) / f"{Path(name).name}.pkl")
                    with open(samples_files[name], "wb") as file:
                        pickle.dump(dataset_samples(name, args.data, largest), file)
            rounds = args.rounds if args.against else 1
            inputs = f"the first test pairs of {args.data}" if args.data else "random inputs"
            warmups = "three warm-ups" if args.device == "cuda" else "one warm-up"
            print(f"{args.device}, {args.precision}, {args.threads} threads, {inputs}; each cell: median over {rounds}"
                  f" interleaved round(s) of the median of {args.repeats} runs after {warmups}\n")
            header = " | ".join(f"{tree} | peak MB" for tree in trees)
            ratio = f" {args.against} / this tree |" if args.against else ""
            print(f"| config | measure | {header} |{ratio}")
            print("|---|---|" + "---|---|" * len(trees) + ("---|" if args.against else ""))
            for name, mode, batch_size, label in measurements(args):
                results = {tree: [] for tree in trees}
                for _ in range(rounds):
                    for tree, src in trees.items():
                        results[tree].append(measure_tree(src, name, mode, batch_size, args.device, args.threads,
                                                          args.repeats, samples_files[name], args.precision))
                cells, seconds = [], {}
                for tree, runs in results.items():
                    seconds[tree] = statistics.median(r["seconds"] for r in runs)
                    value = 1e3 * seconds[tree] / batch_size if mode in ("forward", "collate") else seconds[tree]
                    peak = statistics.median(r["peak_mb"] for r in runs)
                    cells += [f"{value:.0f}" if mode in ("forward", "collate") else f"{value:.2f}",
                              f"{peak:.0f}" if mode != "collate" else ""]
                speedup = f" {seconds[args.against] / seconds['this tree']:.2f} |" if args.against else ""
                print(f"| {name} | {label} | {' | '.join(cells)} |{speedup}", flush=True)
        finally:
            if args.against:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)], check=False)


if __name__ == "__main__":
    main()
