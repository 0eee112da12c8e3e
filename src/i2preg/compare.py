"""``i2preg compare``: several methods on ONE test set in one run, and one table in the paper's format.

A method is ``NAME=WEIGHTS[:OPTION=VALUE]...``, WEIGHTS a file or a bundled model's name (the weights' header
says which model to build)::

    icl=synthetic-small                               ICL (the bundled model), final pose from PRM
    icl+pnp=runs/a/model.safetensors:solver=pnp       ICL, PnP-RANSAC on its own pairs kp_2d <-> kp_3d
    icl-cls=runs/a/model.safetensors:mask=classifier  ICL, ICLM's point mask from the classifier alone
    gpdm=runs/a/model.safetensors:solver=frustum      GPDM's frustum pose alone (no ICLM, no PRM)
    matching=matching-small                           the explicit-matching baseline (method: matching), bundled

Options (ICL only): ``solver`` = prm | pnp | frustum | fine, ``mask`` = geometric | classifier (default: the weights' own);
for every method ``refine`` = none | edges | lines (default: the shared ``eval.refine``; ``refine.py``,
``lines.py``).
Without methods, ``DEFAULT_METHODS``: the two bundled models. The forward pass and the solvers are ``inference``'s.
Every method reads the same pairs (the data is seeded per pair) with the same ``data`` and ``eval`` settings:
those of ``config`` when given, else of the first method's weights.

Written atomically into ``out_dir``: ``comparison.md`` (the table, what its columns measure, and the published
KITTI figures as a separate reference block) and ``comparison.csv`` (one row per method, ``CSV_COLUMNS``).

- Errors: the protocol (``metrics``) over ALL pairs; a failed PnP solve gives the identity pose and counts.
- network ms: the model's forward per pair (calls of ``batch_size`` pairs, CUDA synchronised, on CUDA after
  ``run``'s untimed warm-up, without which the first method was charged CUDA's start-up); solver ms:
  everything after it (PnP-RANSAC; for the baseline also the overlap selection and mutual-NN matching; 0 for
  PRM, which is part of the network). Data loading and the point pyramid are not timed.
- peak MiB: on CUDA, ``torch.cuda.max_memory_allocated`` during the method minus the allocation before it
  (tensors only: weights, batch, activations); on the CPU, the peak resident set size of the process during the
  method (``/proc/self/statm`` polled every 5 ms) minus its size before, with the free memory that malloc keeps for
  reuse (``memory``) handed back to the system first: a lower bound where the C library keeps memory otherwise.
"""

from __future__ import annotations

import csv
import io
import os
import threading
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from .assembly import load_model
from .errors import InputError, require_output_folder
from .files import write_text
from .inference import REFINEMENTS, SOLVERS, evaluation_config, pair_loader, resolve_device, run, with_sequences
from .memory import release_freed_memory
from .metrics import registration_errors, summarize
from .weights import DEFAULT_MODEL, MATCHING_MODEL, read_weights_config, resolve_weights

OPTIONS = {"solver": SOLVERS, "mask": ("geometric", "classifier"), "refine": REFINEMENTS}
OPTIONS_HELP = ", ".join(f"{key}={'|'.join(values)}" for key, values in OPTIONS.items())

DEFAULT_METHODS = (f"icl={DEFAULT_MODEL}", f"matching={MATCHING_MODEL}")
"""The methods compared when none are named: the bundled ICL model and the bundled matching baseline."""

CSV_COLUMNS = ["method", "weights", "solver", "mask", "refine", "point_draws", "pairs", "rte_mean", "rte_std",
               "rte_median", "rre_mean", "rre_std", "rre_median", "rre_geodesic_mean", "rre_geodesic_median", "acc",
               "failures", "network_ms", "solver_ms", "peak_mib", "device", "batch_size"]

PUBLISHED_KITTI = """\
## Reference: published KITTI figures (not measured here)

The papers' own numbers on KITTI Odometry (sequences 09-10, the protocol of METHOD section 3), copied from
METHOD section 4 for orientation. They are not comparable with the table above unless it was measured on KITTI.

| method | RTE (m) | RRE (deg) | Acc |
|---|---|---|---|
| DeepI2P (2D) | 3.59 +- 3.21 | 11.66 +- 18.16 | 25.95 % |
| CorrI2P | 3.78 +- 65.16 | 5.89 +- 20.34 | 72.42 % |
| VP2P-Match | 0.75 +- 1.13 | 3.29 +- 7.99 | 83.04 % |
| ICL (CVPR 2025) | 0.20 +- 0.21 | 1.24 +- 2.34 | 97.49 % |
| later: DPA-I2P | 0.11 +- 0.12 | 0.55 +- 0.67 | 99.70 % |
| later: RayI2P (ICLR 2026) | 0.09 +- 0.08 | 0.63 +- 0.71 | 99.75 % |

ICL's ablations (KITTI Acc): without GPDM (classification-only overlap) 91.89 %; without ICLM (explicit
matching) 72.64 %. Inference per pair on an RTX 4090 at batch 4 (third-party): ICL 35 ms and 10.7 GB,
VP2P-Match 31 ms, CorrI2P 14 ms + PnP-RANSAC, DeepI2P 8 ms + optimisation.
"""


@dataclass(frozen=True)
class MethodSpec:
    name: str
    weights: Path  # a file, or a bundled model's name
    solver: str | None = None  # None: "prm" for ICL, "pnp" for the matching baseline
    mask: str | None = None  # None: the weights' own gpdm.mask_source ("" for the matching baseline)
    refine: str | None = None  # None: the shared eval.refine


def parse_method(text: str) -> MethodSpec:
    """``"NAME=WEIGHTS[:solver=prm|pnp|frustum|fine][:mask=geometric|classifier][:refine=none|edges|lines]"`` -> MethodSpec
    (module docstring)."""
    name, _, rest = text.partition("=")
    weights, *options = rest.split(":")
    if not name.strip() or not weights:
        raise InputError(f"method {text!r} must look like NAME=WEIGHTS[:solver=pnp][:mask=classifier]")
    values: dict[str, Any] = {}
    for option in options:
        key, _, value = option.partition("=")
        if value not in OPTIONS.get(key, ()):
            raise InputError(f"method {text!r}: unknown option {option!r} (options: {OPTIONS_HELP})")
        values[key] = value
    return MethodSpec(name.strip(), Path(weights), **values)


def method_config(spec: MethodSpec, reference: dict) -> tuple[MethodSpec, dict]:
    """One method resolved: the spec with its weights file, solver, mask and refinement filled in, and its config
    (the weights' model with the shared ``data`` and ``eval`` sections of ``reference``)."""
    spec = replace(spec, weights=resolve_weights(spec.weights))
    weights_config = read_weights_config(spec.weights)
    refine = {} if spec.refine is None else {"eval": {"refine": spec.refine}}
    if weights_config.get("method", "icl") == "matching":
        if spec.solver not in (None, "pnp") or spec.mask:
            raise InputError(f"method {spec.name}: the matching baseline takes no solver=prm|frustum|fine or mask option",
                             spec.weights)
        cfg = evaluation_config(weights_config, reference, refine)
        return replace(spec, solver="pnp", mask="", refine=cfg["eval"]["refine"]), cfg
    overrides = {} if spec.mask is None else {"model": {"gpdm": {"mask_source": spec.mask}}}
    cfg = evaluation_config(weights_config, reference, {**overrides, **refine})
    return replace(spec, solver=spec.solver or "prm", mask=cfg["model"]["gpdm"]["mask_source"],
                   refine=cfg["eval"]["refine"]), cfg


class PeakMemory:
    """Context manager: ``.mib`` is the peak memory of the block above its start (module docstring), nan where
    neither CUDA nor ``/proc/self/statm`` is available."""

    def __init__(self, device: torch.device, interval_s: float = 0.005):
        self.device, self.interval_s, self.mib = device, interval_s, float("nan")

    @staticmethod
    def resident_bytes() -> int | None:
        try:
            with open("/proc/self/statm") as file:
                return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def _poll(self) -> None:
        while not self._done.wait(self.interval_s):
            self._peak = max(self._peak, self.resident_bytes() or 0)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            release_freed_memory()
            self._start = self._peak = self.resident_bytes()
            self._done = threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            if self._start is not None:
                self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mib = (torch.cuda.max_memory_allocated(self.device) - self._start) / 2**20
        elif self._start is not None:
            self._done.set()
            self._thread.join()
            self.mib = (max(self._peak, self.resident_bytes() or 0) - self._start) / 2**20


def run_method(spec: MethodSpec, cfg: dict, loader: Callable[[dict], DataLoader], device: torch.device,
               progress: bool) -> dict[str, Any]:
    """One method (resolved by ``method_config``) over the pairs of ``loader(cfg)`` (collated for its model): its
    CSV row (``CSV_COLUMNS``)."""
    model, cfg = load_model(spec.weights, cfg)
    loader = loader(cfg)
    poses, truths, successes, network_s, solver_s = [], [], [], 0.0, 0.0
    with PeakMemory(device) as memory:
        for batch, result in run(model, loader, device, spec.solver, cfg["eval"], progress, desc=spec.name):
            network_s, solver_s = network_s + result.network_seconds, solver_s + result.solver_seconds
            poses.append(result.pose.double().cpu().numpy())
            truths.append(batch["T_gt"].double().cpu().numpy())
            successes.append(result.solved.cpu().numpy())
    pairs = len(loader.dataset)
    stats = summarize(registration_errors(np.concatenate(poses), np.concatenate(truths)), **cfg["eval"]["thresholds"])
    return {
        "method": spec.name, "weights": str(spec.weights), "solver": spec.solver, "mask": spec.mask,
        "refine": spec.refine, "point_draws": cfg["eval"]["point_draws"],
        **{key: stats[key] for key in CSV_COLUMNS if key in stats},
        "failures": int((~np.concatenate(successes)).sum()),
        "network_ms": 1000 * network_s / pairs, "solver_ms": 1000 * solver_s / pairs,
        "peak_mib": memory.mib, "device": str(device), "batch_size": loader.batch_size,
    }


def format_comparison(rows: list[dict[str, Any]]) -> str:
    """Markdown table: RTE, RRE mean +- std over all pairs, Acc, medians, failures, time and memory."""
    lines = [
        ("| method | RTE (m) | RRE (deg) | Acc | RTE / RRE median | RRE geodesic (deg) | failures | pairs "
         "| network ms/pair | solver ms/pair | peak MiB |"),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['rte_mean']:.2f} +- {r['rte_std']:.2f} | {r['rre_mean']:.2f} +- {r['rre_std']:.2f} "
            f"| {100 * r['acc']:.2f} % | {r['rte_median']:.2f} / {r['rre_median']:.2f} | {r['rre_geodesic_mean']:.2f} "
            f"| {r['failures']} | {r['pairs']} | {r['network_ms']:.1f} | {r['solver_ms']:.1f} | {r['peak_mib']:.0f} |"
        )
    return "\n".join(lines)


NOTES = """\
{pairs} pairs of {source}, the same for every method (seeded per pair); device {device}, batch size {batch_size}.
Acc: RTE < {rte_thresh} m and RRE < {rre_thresh} deg. Means, standard deviations and medians over ALL pairs.
Point draws: {point_draws} a pair (above 1, each pose the consensus of every method's network on that many draws of
the cloud's point sample, the first draw's pose where no two agree).

{table}

PnP-RANSAC (ICL solver=pnp and the matching baseline): OpenCV EPnP, {iterations} iterations, inlier threshold
{reprojection_error} px at scale {scale} (= {input_px:g} input px), confidence {confidence}; fewer than {min_matches}
matches or a failed solve gives the identity pose, counted under failures and in every statistic. network ms: the
forward pass; solver ms: everything after it (0 for PRM, part of the network); data loading is not timed.
peak MiB: {memory}.
"""

MEMORY = {"cuda": "CUDA max_memory_allocated during the method, above its start",
          "cpu": "growth of the process's resident set during the method (a lower bound)"}


def comparison_markdown(table: str, source: str, pairs: int, device: torch.device, batch_size: int,
                        eval_cfg: dict) -> str:
    """comparison.md: the table and what it measures, then the published KITTI figures."""
    pnp = eval_cfg["pnp"]
    notes = NOTES.format(
        pairs=pairs, source=source, device=device, batch_size=batch_size, table=table, **eval_cfg["thresholds"],
        point_draws=eval_cfg["point_draws"],
        **pnp, input_px=pnp["reprojection_error"] / pnp["scale"], memory=MEMORY[device.type],
    )
    return f"# Comparison on one test set\n\n{notes}\n{PUBLISHED_KITTI}"


def compare(
    methods: list[str | MethodSpec] | None,
    data_root: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    config: str | os.PathLike | None = None,
    split: str = "test",
    limit: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
    overrides: dict | None = None,
    progress: bool = True,
    sequences: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Run ``methods`` (specs or their text, module docstring; None: ``DEFAULT_METHODS``) on the same pairs of
    ``split`` under ``data_root``; write comparison.md and comparison.csv into ``out_dir``, print the table, return
    the CSV rows.

    config: a YAML path or bundled name whose ``data`` and ``eval`` sections all methods use (default: the first
    method's weights'); overrides: nested dict merged into them; sequences: the split's sequences (in place of the
    config's). limit: the first N pairs.
    """
    require_output_folder(out_dir)
    specs = [m if isinstance(m, MethodSpec) else parse_method(m) for m in (methods or DEFAULT_METHODS)]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise InputError(f"need distinct method names, got {names}")
    overrides = with_sequences(overrides, split, sequences)
    reference = evaluation_config(read_weights_config(resolve_weights(specs[0].weights)), config, overrides)
    resolved = [method_config(spec, reference) for spec in specs]
    torch_device = resolve_device(device)
    loader = partial(pair_loader, split=split, data_root=data_root, limit=limit, batch_size=batch_size,
                     device=torch_device)
    pairs = len(loader(reference).dataset)
    rows = [run_method(spec, cfg, loader, torch_device, progress) for spec, cfg in resolved]

    table = format_comparison(rows)
    source = f"the {split} split of `{data_root or reference['data']['root']}`"
    text = comparison_markdown(table, source, pairs, torch_device, batch_size, reference["eval"])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "comparison.md", text)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(out_dir / "comparison.csv", buffer.getvalue())
    print(table)
    return rows
