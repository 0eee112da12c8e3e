"""``compare``: ICL, its ablations and the matching baseline on one tiny synthetic test set, in one table."""

from __future__ import annotations

import contextlib
import csv
import io
from pathlib import Path

import pytest
import torch

from i2preg.assembly import build_model, full_config
from i2preg.compare import CSV_COLUMNS, MethodSpec, compare, parse_method
from i2preg.config import load_config
from i2preg.errors import InputError
from i2preg.evaluate import evaluate
from i2preg.weights import save_weights

ON_SEQUENCE_00 = {"data": {"test_sequences": ["00"]}}


def tiny_weights(path: Path, overrides: dict | None = None, matching: bool = False) -> Path:
    torch.manual_seed(0)
    cfg = full_config({**load_config("tiny", overrides), **({"method": "matching"} if matching else {})})
    save_weights(build_model(cfg), path, cfg)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory, synthetic_root) -> dict:
    """Three test pairs; tiny ICL weights, ICL trained with other iteration and query counts, the matching
    baseline."""
    tmp = tmp_path_factory.mktemp("compare")
    root = synthetic_root
    icl = tiny_weights(tmp / "icl.safetensors")
    other = tiny_weights(tmp / "icl-2x4.safetensors", {"model": {"iclm": {"num_iterations": 2, "num_queries": 4}}})
    matching = tiny_weights(tmp / "matching.safetensors", matching=True)
    methods = [f"icl={icl}", f"icl+pnp={icl}:solver=pnp", f"icl-cls={icl}:mask=classifier", f"icl-2x4={other}",
               f"gpdm={icl}:solver=frustum", f"matching={matching}"]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rows = compare(methods, root, tmp / "out", limit=3, batch_size=2, device="cpu", overrides=ON_SEQUENCE_00,
                       progress=False)
    return {"root": root, "icl": icl, "out": tmp / "out", "rows": rows, "stdout": stdout.getvalue()}


def test_one_row_per_method_on_the_same_pairs(setup):
    with open(setup["out"] / "comparison.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == CSV_COLUMNS
    assert [r["method"] for r in rows] == ["icl", "icl+pnp", "icl-cls", "icl-2x4", "gpdm", "matching"]
    assert {r["point_draws"] for r in rows} == {"1"}
    assert [(r["solver"], r["mask"]) for r in rows] == [
        ("prm", "geometric"), ("pnp", "geometric"), ("prm", "classifier"), ("prm", "geometric"), ("frustum", "geometric"),
        ("pnp", "")]
    assert {r["pairs"] for r in rows} == {"3"}
    assert all(float(r["network_ms"]) > 0 and float(r["solver_ms"]) >= 0 and 0 <= float(r["acc"]) <= 1 for r in rows)
    assert all(0 <= int(r["failures"]) <= 3 for r in rows) and rows[0]["failures"] == "0"
    assert not list(setup["out"].glob(".*tmp"))


def test_markdown_has_the_table_and_the_published_block_apart(setup):
    text = (setup["out"] / "comparison.md").read_text()
    table, reference = text.split("## Reference: published KITTI figures (not measured here)")
    for r in setup["rows"]:
        assert f"| {r['method']} | {r['rte_mean']:.2f} +- {r['rte_std']:.2f} |" in table
    assert "| ICL (CVPR 2025) | 0.20 +- 0.21 | 1.24 +- 2.34 | 97.49 % |" in reference
    assert "| icl+pnp |" in setup["stdout"] and "published" not in setup["stdout"]


def test_pnp_solver_matches_evaluate(setup, tmp_path):
    summary = evaluate(setup["icl"], setup["root"], tmp_path, limit=3, batch_size=2, device="cpu",
                       figure_pairs=[], overrides=ON_SEQUENCE_00, progress=False, solver="pnp")
    row = next(r for r in setup["rows"] if r["method"] == "icl+pnp")
    assert summary["solver"] == "pnp" and summary["config"]["eval"]["pnp"]["iterations"] == 500
    assert summary["final"]["rte_mean"] == pytest.approx(row["rte_mean"])
    assert summary["final"]["rre_mean"] == pytest.approx(row["rre_mean"])
    with pytest.raises(InputError, match="solver"):
        evaluate(setup["icl"], setup["root"], tmp_path, solver="ransac")


def test_method_syntax():
    assert parse_method("icl=w/a.safetensors") == MethodSpec("icl", Path("w/a.safetensors"))
    assert parse_method("x=a.safetensors:solver=pnp:mask=classifier") == MethodSpec(
        "x", Path("a.safetensors"), "pnp", "classifier")
    assert parse_method("m=matching-small") == MethodSpec("m", Path("matching-small"))
    for bad in ("a.safetensors", "=a.safetensors", "x=a.safetensors:solver=ransac", "x=a.safetensors:seed=1",
                "x=a.safetensors:iterations=1", "x=a.safetensors:queries=16"):
        with pytest.raises(InputError):
            parse_method(bad)


def test_bad_combinations_are_refused(setup, tmp_path):
    matching = tiny_weights(tmp_path / "m.safetensors", matching=True)
    with pytest.raises(InputError, match="matching baseline"):
        compare([f"m={matching}:solver=prm"], setup["root"], tmp_path, overrides=ON_SEQUENCE_00, progress=False)
    with pytest.raises(InputError, match="matching baseline"):
        compare([f"m={matching}:mask=classifier"], setup["root"], tmp_path, overrides=ON_SEQUENCE_00, progress=False)
    with pytest.raises(InputError, match="nowhere.safetensors: no such weights file"):
        compare([f"a={tmp_path / 'nowhere.safetensors'}"], setup["root"], tmp_path, progress=False)
    with pytest.raises(InputError, match="distinct"):
        compare([f"a={setup['icl']}", f"a={setup['icl']}"], setup["root"], tmp_path, progress=False)
    with pytest.raises(InputError, match="i2preg compare"):
        evaluate(matching, setup["root"], tmp_path)
