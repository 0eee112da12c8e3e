"""The network's forward in PyTorch and in ONNX Runtime, side by side on the same batches.

    python benchmarks/onnx_speed.py [--weights synthetic-small] [--onnx FILE] [--data datasets/synthetic-test]
        [--pairs 16] [--batch-size 8] [--threads 2 1] [--rounds 3]

Exports the weights' network (``i2preg.export``; or reads ``--onnx``, a file ``i2preg export`` wrote), collates
the first ``--pairs`` test pairs of ``--data`` into batches, and for each thread count times the forward of every
batch in PyTorch (eval mode, inference_mode) and in ONNX Runtime (as many intra-op threads), alternating, for
``--rounds`` rounds after one warm-up round, in one process: both see the same machine load. Prints, per thread
count, the median ms a pair of each, their ratio (above 1: ONNX Runtime is faster), the largest difference of
their poses (max |entry| over the 4 x 4 matrices) and how many pairs differ by more than 1e-4 in any pass, for GPDM's
frustum pose, the fine search's pose (models with one) and the final pose; then the export time. Prints Markdown.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from i2preg.assembly import load_model
from i2preg.data.pairs import pair_config
from i2preg.export import OnnxNetwork, export_onnx
from i2preg.inference import evaluation_config, pair_loader
from i2preg.weights import resolve_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="synthetic-small", help="weights file or bundled model name")
    parser.add_argument("--onnx", help="an .onnx file i2preg export wrote from these weights (default: export now)")
    parser.add_argument("--data", default="datasets/synthetic-test", help="KITTI-layout test data")
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=8)
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds over the batches, after one warm-up")
    args = parser.parse_args()

    model, weights_config = load_model(resolve_weights(args.weights))
    model.eval()
    cfg = evaluation_config(weights_config)
    cfg["train"]["num_workers"] = 0
    batches = list(pair_loader(cfg, "test", args.data, args.pairs, args.batch_size))
    pairs = sum(len(batch["meta"]) for batch in batches)
    start = time.perf_counter()
    data = pair_config(weights_config)
    source = args.onnx or export_onnx(model, None, tuple(data["crop"]), int(data["num_points"]))
    export_seconds = None if args.onnx else time.perf_counter() - start

    print(f"{pairs} pairs of {args.data}, batches of {args.batch_size}; median over {args.rounds} rounds after one"
          f" warm-up, PyTorch and ONNX Runtime alternating batch by batch\n")
    poses = ["frustum_pose", *(["fine_pose"] if model.fine is not None else []), "pose"]  # ICL.forward's keys
    names = " / ".join({"frustum_pose": "frustum", "fine_pose": "fine", "pose": "final"}[key] for key in poses)
    print(f"| threads | PyTorch ms/pair | ONNX Runtime ms/pair | PyTorch / ONNX Runtime | max pose difference ({names}) |"
          f" pairs over 1e-4 ({names}) |")
    print("|---|---|---|---|---|---|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        network = OnnxNetwork(source, model, threads=threads)
        seconds = {"torch": [], "onnx": []}
        difference, apart = {key: 0.0 for key in poses}, {key: set() for key in poses}
        for round_ in range(args.rounds + 1):
            totals = {"torch": 0.0, "onnx": 0.0}
            for index, batch in enumerate(batches):
                for name, run in (("torch", model), ("onnx", network)):
                    start = time.perf_counter()
                    with torch.inference_mode():
                        out = run(batch)
                    totals[name] += time.perf_counter() - start
                    if name == "torch":
                        reference = out
                        continue
                    for key in poses:
                        per_pair = (out[key] - reference[key]).abs().flatten(1).amax(1)
                        difference[key] = max(difference[key], per_pair.max().item())
                        apart[key] |= {(index, i) for i in (per_pair > 1e-4).nonzero()[:, 0].tolist()}
            if round_:
                for name, total in totals.items():
                    seconds[name].append(total)
        ms = {name: 1e3 * statistics.median(values) / pairs for name, values in seconds.items()}
        print(f"| {threads} | {ms['torch']:.0f} | {ms['onnx']:.0f} | {ms['torch'] / ms['onnx']:.2f} | "
              + " / ".join(f"{difference[key]:.1e}" for key in poses) + " | "
              + " / ".join(str(len(apart[key])) for key in poses) + f" of {pairs} |", flush=True)
    if export_seconds is not None:
        print(f"\nexport: {export_seconds:.0f} s")


if __name__ == "__main__":
    main()
