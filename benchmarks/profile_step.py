"""Where the time of one training step and one inference batch goes, section by section.

    python benchmarks/profile_step.py [--config synthetic-small] [--data datasets/synthetic-test]
        [--batch-size 8] [--threads 2] [--repeats 3] [--weights W] [--device cpu|cuda] [--trace DIR] [--top 15]

Reads ``batch-size`` test pairs of the KITTI-layout data under ``--data`` with the config's data settings,
then times, as medians over ``--repeats`` runs after two warm-ups (the second run of a process can still fault in
fresh memory: 37,000 page faults in a stage-2 step, then none):
- data: reading and building the pairs (``dataset[i]``), the collate's stacking, its voxel levels and its kNN
  (``data.collate``);
- a training step of each stage (forward + losses + backward + Adam, stage 2 with GPDM frozen as in training)
  and one inference batch (eval mode, no_grad), split by module: image encoder, point encoder (KPConv), GPDM
  heads, pose search, image decoder, ICLM, PRM, losses, backward, optimiser.
Module times come from forward hooks (wall clock, nested: the pose search is inside GPDM, and the table gives GPDM
without it; on ``--device cuda`` each section synchronises the GPU at its ends, so that it holds its own kernels;
the data sections stay on the CPU, and the batch moves to the GPU once). With ``--top`` N, the N costliest operators
of each run (torch.profiler, self CPU or CUDA time) follow the table (a profiled run allocates differently and
faults fresh memory in again, 57,000 page faults in a stage-2 step: memory-bound operators, copies and elementwise
ones, read slower there than they run); ``--trace DIR`` writes a Chrome trace of each run. Prints Markdown.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity, profile

from i2preg.assembly import full_config
from i2preg.config import load_config
from i2preg.data.collate import Collate, pyramid_indices, pyramid_levels
from i2preg.data.pairs import build_dataset
from i2preg.inference import to_device
from i2preg.losses import compute_losses
from i2preg.model import ICL
from i2preg.weights import load_weights, read_weights_config, resolve_weights

MODULES = {
    "image encoder": "image_encoder",
    "point encoder (KPConv)": "point_encoder",
    "GPDM heads": "gpdm",
    "pose search": "gpdm.search",
    "image decoder": "image_decoder",
    "fine search": "fine",
    "ICLM": "iclm",
    "PRM": "prm",
}
"""Table row -> the ICL submodule it times (GPDM heads: gpdm without its pose search)."""


class SectionTimer:
    """Accumulates wall-clock seconds per named section; ``section(name)`` is a context manager that also marks
    the section in a torch.profiler trace. ``hook(model)`` times the ``MODULES`` forwards."""

    def __init__(self, device: str = "cpu"):
        self.seconds: dict[str, float] = defaultdict(float)
        self.sync = torch.cuda.synchronize if device == "cuda" else lambda: None

    def section(self, name: str):
        timer = self

        class Section:
            def __enter__(self):
                self.mark = record_function(name)
                self.mark.__enter__()
                timer.sync()
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                timer.sync()
                timer.seconds[name] += time.perf_counter() - self.start
                self.mark.__exit__(*exc)

        return Section()

    def hook(self, model: torch.nn.Module) -> None:
        for row, path in MODULES.items():
            module = model.get_submodule(path) if _has_submodule(model, path) else None
            if module is None:
                continue
            sections = {}

            def before(module, args, row=row, sections=sections):
                sections[row] = self.section(row)
                sections[row].__enter__()

            def after(module, args, output, row=row, sections=sections):
                sections.pop(row).__exit__(None, None, None)

            module.register_forward_pre_hook(before)
            module.register_forward_hook(after)

    def table(self) -> dict[str, float]:
        """Seconds per section, with the pose search taken out of GPDM."""
        seconds = dict(self.seconds)
        if "GPDM heads" in seconds:
            seconds["GPDM heads"] -= seconds.get("pose search", 0.0)
        return seconds


def _has_submodule(model: torch.nn.Module, path: str) -> bool:
    try:
        return model.get_submodule(path) is not None
    except AttributeError:
        return False


def load_batch(cfg: dict, data_root: str, batch_size: int, timer: SectionTimer) -> dict:
    """The first ``batch_size`` test pairs, collated, with the data sections timed."""
    dataset = build_dataset(cfg, "test", data_root)
    collate = Collate(cfg["model"])
    with timer.section("data: read pairs"):
        samples = [dataset[i] for i in range(batch_size)]
    with timer.section("collate: voxel levels"):
        levels = [pyramid_levels(s["points"], collate.voxel_size, collate.subsample_sizes) for s in samples]
    with timer.section("collate: kNN"):
        for xyz in levels:
            pyramid_indices(xyz, collate.num_neighbors)
    with timer.section("collate: total"):
        batch = collate(samples)
    return batch


def run(model: ICL, batch: dict, mode: str, timer: SectionTimer) -> None:
    """One training step of stage 1 or 2 (mode "stage1" / "stage2") or one inference batch ("inference")."""
    if mode == "inference":
        with torch.no_grad():
            model(batch)
        return
    stage = int(mode[-1])
    forward = model.forward_gpdm if stage == 1 else model
    optimizer = model.optimizer
    with timer.section("zero_grad"):
        optimizer.zero_grad()
    out = forward(batch)
    with timer.section("losses"):
        loss = compute_losses(out, batch, model.loss_weights, stage=stage)["total"]
    with timer.section("backward"):
        loss.backward()
    with timer.section("optimiser (Adam)"):
        optimizer.step()


def prepare(cfg: dict, mode: str, weights: str | None, device: str) -> ICL:
    torch.manual_seed(0)
    model = ICL(cfg["model"])
    model.loss_weights = cfg["loss"]
    if weights:
        load_weights(model, weights)
    model.to(device)
    if mode == "inference":
        return model.eval()
    stage = int(mode[-1])
    gpdm = {id(p) for p in model.gpdm_parameters()}
    for parameter in model.parameters():  # as train.ICLModule: stage 1 GPDM alone, stage 2 all but GPDM
        parameter.requires_grad_((id(parameter) in gpdm) == (stage == 1))
    model.optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return model.train()


def profile_mode(cfg, batch, mode, args) -> tuple[dict[str, float], float, str]:
    """Median seconds per section and of the whole run, and the top-operator table of one profiled run."""
    model = prepare(cfg, mode, args.weights, args.device)
    for _ in range(2):  # warm-ups
        run(model, batch, mode, SectionTimer(args.device))
    timer = SectionTimer(args.device)
    timer.hook(model)
    timers, totals = [], []
    for _ in range(args.repeats):
        timer.seconds.clear()
        timer.sync()
        start = time.perf_counter()
        run(model, batch, mode, timer)
        timer.sync()
        totals.append(time.perf_counter() - start)
        timers.append(timer.table())
    sections = {name: statistics.median(t.get(name, 0.0) for t in timers) for name in timers[0]}
    top = ""
    if args.top or args.trace:
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
        with profile(activities=activities) as prof:
            run(model, batch, mode, timer)
        if args.trace:
            Path(args.trace).mkdir(parents=True, exist_ok=True)
            prof.export_chrome_trace(str(Path(args.trace) / f"{args.config}-{mode}.json"))
        if args.top:
            key = "self_cuda_time_total" if args.device == "cuda" else "self_cpu_time_total"
            top = prof.key_averages().table(sort_by=key, row_limit=args.top)
    return sections, statistics.median(totals), top


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="synthetic-small", help="bundled config name or YAML path")
    parser.add_argument("--data", default="datasets/synthetic-test", help="KITTI-layout root with the test split")
    parser.add_argument("--weights", help="safetensors weights, with their own config (default: --config, random"
                        " initialisation, same cost)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=["stage1", "stage2", "inference"])
    parser.add_argument("--top", type=int, default=0, help="print the N costliest operators of each run")
    parser.add_argument("--trace", help="folder for Chrome traces, one per run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = full_config(read_weights_config(resolve_weights(args.weights)) if args.weights else load_config(args.config))

    data_timer = SectionTimer()
    batch = to_device(load_batch(cfg, args.data, args.batch_size, data_timer), torch.device(args.device))
    results = {mode: profile_mode(cfg, batch, mode, args) for mode in args.modes}

    B = args.batch_size
    print(f"{args.config}, {args.device}, batch {B}, {args.threads} threads; ms per batch, median of {args.repeats} "
          f"runs after two warm-ups\n")
    print("| data (once) | ms |\n|---|---|")
    for name, seconds in data_timer.seconds.items():
        print(f"| {name} | {1e3 * seconds:.0f} |")
    print(f"\n| section | {' | '.join(args.modes)} |\n|---|{'---|' * len(args.modes)}")
    names = list(MODULES) + ["losses", "backward", "optimiser (Adam)", "zero_grad"]
    for name in names:
        cells = [results[mode][0].get(name) for mode in args.modes]
        if any(cells):
            print(f"| {name} | {' | '.join('' if c is None else f'{1e3 * c:.0f}' for c in cells)} |")
    print(f"| **total** | {' | '.join(f'**{1e3 * results[m][1]:.0f}**' for m in args.modes)} |")
    for mode in args.modes:
        if results[mode][2]:
            print(f"\n{mode}: top operators by self {args.device.upper()} time\n```\n{results[mode][2]}```")


if __name__ == "__main__":
    main()
