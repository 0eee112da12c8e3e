"""``make demo``: generate a small synthetic test set, show its benchmark pairs, and register them with
the bundled model when one is installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data.pairs import build_dataset
from .data.synthetic import generate_dataset
from .errors import require_output_folder
from .visualize import draw_projection, save_image
from .weights import bundled_weights

DEMO_SEED = 90210
"""World seed of the demo's test set; training data never uses it."""


def run_demo(out_dir: Path, frames: int = 4) -> list[Path]:
    """Write a synthetic sequence under ``out_dir/data`` and, per protocol pair, a picture of the cloud
    projected with the ground-truth pose (top) and with the identity, i.e. unregistered (bottom). With the
    bundled model installed, also ``i2preg eval`` on these pairs: the table, and its files in ``out_dir/eval``."""
    out_dir = require_output_folder(out_dir)
    root = generate_dataset(out_dir / "data", sequences=1, frames=frames, seed=DEMO_SEED)
    data = {"data": {"test_sequences": ["00"]}}
    pairs = build_dataset(data, "test", root)
    written = []
    for index in range(len(pairs)):
        sample = pairs[index]
        registered = draw_projection(sample["image"], sample["points"], sample["T_gt"], sample["K"])
        unregistered = draw_projection(sample["image"], sample["points"], np.eye(4), sample["K"])
        path = out_dir / f"pair_{index:03d}.png"
        save_image(path, np.concatenate([registered, unregistered], axis=0))
        written.append(path)
    print(f"{len(pairs)} protocol pairs from {root}; pictures in {out_dir}")
    weights = bundled_weights()
    if weights.is_file():
        from .evaluate import evaluate

        evaluate(weights, root, out_dir / "eval", overrides=data)
    else:
        print(f"no bundled model at {weights} yet: train one with `i2preg train --config synthetic-small`")
    return written
