"""Speed and memory of the ICL model at the paper size and the CPU size.

    python benchmarks/model_speed.py [--configs kitti synthetic-small] [--device cpu|cuda] [--threads 2]

Per config: parameters; forward time per pair (inference, batch 1 and 8); the peak memory of that forward
(CPU: growth of the process's max RSS over model + batch, each measurement in a fresh process; CUDA:
torch.cuda.max_memory_allocated); the collate time per pair (pyramid construction, measured separately); and the
time of one training step (forward + backward + Adam) at batch 2 and 8 in stage 1 (GPDM) and stage 2. Medians
over ``--repeats`` runs after one warm-up. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import time

import numpy as np
import torch

from i2preg.config import load_config
from i2preg.data.collate import Collate
from i2preg.geometry import invert_transform, sample_perturbation
from i2preg.losses import compute_losses
from i2preg.model import ICL


def model_config(name: str) -> dict:
    """The model section of a bundled config (kitti: the paper's sizes; synthetic-small: the CPU model)."""
    return load_config(name)["model"]


def synthetic_samples(conf: dict, batch_size: int, seed: int = 0) -> list[dict]:
    """Random images and KITTI-like extents of points (60 m x 3 m x 60 m around the camera), perturbed."""
    (H, W), N = conf["image_size"], conf["num_points"]
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


def to_device(batch: dict, device: str) -> dict:
    def move(x):
        return x.to(device) if isinstance(x, torch.Tensor) else x

    return {k: [move(x) for x in v] if isinstance(v, list) else move(v) for k, v in batch.items()}


def current_rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


def measure(name: str, mode: str, batch_size: int, device: str, threads: int, repeats: int) -> dict:
    """One measurement, meant to run in a fresh process. mode: forward, collate, stage1 or stage2."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = ICL(model_config(name)).to(device)
    samples = synthetic_samples(model.conf, batch_size)
    collate = Collate(model_config(name))
    if mode == "collate":
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            collate(samples)
            times.append(time.perf_counter() - start)
        return {"seconds": statistics.median(times)}
    batch = to_device(collate(samples), device)
    if mode == "forward":
        model.eval()

        @torch.no_grad()
        def step():
            model(batch)
    else:
        stage = int(mode[-1])
        if stage == 2:
            model.freeze_gpdm()
        forward = model.forward_gpdm if stage == 1 else model
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step():
            optimizer.zero_grad()
            compute_losses(forward(batch), batch, stage=stage)["total"].backward()
            optimizer.step()

    sync = torch.cuda.synchronize if device == "cuda" else lambda: None
    rss_before = current_rss_kb()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        allocated_before = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeats + 1):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    if device == "cuda":
        peak_mb = (torch.cuda.max_memory_allocated() - allocated_before) / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    return {"seconds": statistics.median(times[1:]), "peak_mb": peak_mb}


def run_isolated(*args) -> dict:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(measure, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["kitti", "synthetic-small"], help="bundled config names")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch threads on CPU")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--forward-batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--train-batches", type=int, nargs="+", default=[2, 8])
    args = parser.parse_args()
    common = (args.device, args.threads, args.repeats)
    print(f"device {args.device}, {args.threads} threads, median of {args.repeats} runs after one warm-up\n")
    print("| config | params | forward ms/pair (batch) | peak forward MB | collate ms/pair | train step s, stage 1 / stage 2 (batch) |")
    print("|---|---|---|---|---|---|")
    for name in args.configs:
        params = sum(p.numel() for p in ICL(model_config(name)).parameters())
        forward, peak, train = [], [], []
        for b in args.forward_batches:
            result = run_isolated(name, "forward", b, *common)
            forward.append(f"{1e3 * result['seconds'] / b:.0f} ({b})")
            peak.append(f"{result['peak_mb']:.0f} ({b})")
        collate = run_isolated(name, "collate", max(args.forward_batches), *common)["seconds"]
        collate /= max(args.forward_batches)
        for b in args.train_batches:
            stage_1, stage_2 = (run_isolated(name, f"stage{s}", b, *common)["seconds"] for s in (1, 2))
            train.append(f"{stage_1:.2f} / {stage_2:.2f} ({b})")
        print(f"| {name} | {params / 1e6:.2f} M | {', '.join(forward)} | {', '.join(peak)} | {1e3 * collate:.0f} | {', '.join(train)} |")


if __name__ == "__main__":
    main()
