"""``evaluate``: the protocol on a tiny untrained model over a tiny synthetic set; every promised file and number."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from i2preg.assembly import full_config
from i2preg.config import load_config
from i2preg.errors import InputError
from i2preg.evaluate import evaluate, pair_list, roc_auc
from i2preg.metrics import format_table, success, summarize
from i2preg.model.icl import ICL
from i2preg.weights import save_weights

ON_SEQUENCE_00 = {"data": {"test_sequences": ["00"]}}
OFFSETS = ["centre_dx", "centre_dy", "centre_dz", "yaw_offset"]
COLUMNS = ["index", "sequence", "frame", "camera", "rte", "rre", "rre_geodesic", "success", *OFFSETS, "frustum_rte",
           "frustum_rre", "frustum_rre_geodesic", "frustum_success", *(f"frustum_{k}" for k in OFFSETS), "confidence",
           "draws_agreeing", "forward_ms"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, synthetic_root) -> dict:
    """Four test pairs (two frames, two cameras), tiny weights, and one evaluation of the first three."""
    tmp = tmp_path_factory.mktemp("evaluate")
    root = synthetic_root
    cfg = full_config(load_config("tiny"))
    torch.manual_seed(0)
    weights = tmp / "tiny.safetensors"
    save_weights(ICL(cfg["model"]), weights, cfg)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        summary = evaluate(weights, root, tmp / "out", limit=3, batch_size=2, device="cpu",
                           overrides=ON_SEQUENCE_00, progress=False)
    return {"root": root, "weights": weights, "out": tmp / "out", "summary": summary, "stdout": stdout.getvalue()}


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def errors_of(rows: list[dict], prefix: str = "") -> dict[str, np.ndarray]:
    return {k: np.array([float(r[prefix + k]) for r in rows]) for k in ("rte", "rre", "rre_geodesic")}


def test_writes_every_promised_file(setup):
    out = setup["out"]
    rows = read_rows(out / "pairs.csv")
    assert len(rows) == 3 and list(rows[0]) == COLUMNS
    assert [int(r["index"]) for r in rows] == [0, 1, 2]
    assert [(r["sequence"], r["frame"], r["camera"]) for r in rows] == [("00", "0", "2"), ("00", "0", "3"), ("00", "1", "2")]
    assert all(0 <= float(r["confidence"]) <= 1 and float(r["forward_ms"]) > 0 for r in rows)
    assert all(r["draws_agreeing"] == "1" for r in rows)  # one draw

    summary = json.loads((out / "summary.json").read_text())
    for key in ("final", "frustum", "table", "thresholds", "confidence", "centre_offset_by_camera",
                "yaw_offset_by_camera", "pairs", "weights", "device", "seconds_per_pair", "wall_seconds_per_pair",
                "config", "figures"):
        assert key in summary
    assert summary["pairs"] == 3 and summary["device"] == "cpu"
    assert summary["weights"]["path"] == str(setup["weights"].resolve()) and len(summary["weights"]["sha256"]) == 64
    assert summary["config"]["data"]["test_sequences"] == ["00"]
    assert summary["confidence"]["roc_auc_success"] is None or 0 <= summary["confidence"]["roc_auc_success"] <= 1

    sizes = {}
    for name in ["cumulative_rte.png", "cumulative_rre.png", "acc_vs_thresholds.png"] + [
        f"pair_{i:04d}_{kind}.png" for i in range(3) for kind in ("projection", "keypoints", "overlap")
    ]:
        image = cv2.imread(str(out / name))
        assert image is not None, name
        sizes[name] = image.shape[:2]
    assert sorted(sizes) == summary["figures"]
    assert sizes["pair_0000_projection.png"] == (2 * (64 + 16), 128)  # predicted over true, captioned
    assert sizes["pair_0000_keypoints.png"] == (64 + 16, 128)
    assert all(h >= 200 and w >= 300 for name, (h, w) in sizes.items() if not name.startswith("pair_") or "overlap" in name)
    assert not list(out.glob(".*tmp"))


def test_table_is_the_protocol_over_the_csv_rows(setup):
    rows, summary = read_rows(setup["out"] / "pairs.csv"), setup["summary"]
    for name, prefix in (("final", ""), ("frustum", "frustum_")):
        errors = errors_of(rows, prefix)
        assert summary[name] == summarize(errors)
        np.testing.assert_array_equal([r[prefix + "success"] == "True" for r in rows], success(errors))
        for camera in ("2", "3"):  # the mean centre offset of each camera's pairs, from the CSV
            mine = [r for r in rows if r["camera"] == camera]
            expected = [np.mean([float(r[prefix + k]) for r in mine]) for k in OFFSETS]
            np.testing.assert_allclose(summary["centre_offset_by_camera"][name][camera], expected[:3], rtol=1e-12)
            np.testing.assert_allclose(summary["yaw_offset_by_camera"][name][camera], expected[3:], rtol=1e-12)
    table = format_table({"final": summary["final"], "frustum": summary["frustum"]})
    assert summary["table"] == table and table in setup["stdout"]


def test_sequences_choose_the_pairs(setup, tmp_path):
    """sequences= replaces the split's sequences: sequence 00 of the tiny config's 09, 10 (absent here)."""
    summary = evaluate(setup["weights"], setup["root"], tmp_path / "out", sequences=["00"], limit=2, device="cpu",
                       figure_pairs=[], progress=False)
    assert summary["config"]["data"]["test_sequences"] == ["00"] and summary["pairs"] == 2
    first = read_rows(setup["out"] / "pairs.csv")[:2]
    assert [r["rte"] for r in read_rows(tmp_path / "out" / "pairs.csv")] == [r["rte"] for r in first]
    with pytest.raises(InputError, match="09"):
        evaluate(setup["weights"], setup["root"], tmp_path / "out2", device="cpu", progress=False)


def test_limit_batch_size_and_another_config(setup, tmp_path):
    config = tmp_path / "sequence00.yaml"
    config.write_text("base: tiny\ndata: {test_sequences: ['00']}\n")
    summary = evaluate(setup["weights"], setup["root"], tmp_path / "out", config=config, batch_size=3,
                       device="cpu", figure_pairs=[3], progress=False)
    rows = read_rows(tmp_path / "out" / "pairs.csv")
    assert summary["pairs"] == len(rows) == 4 and summary["batch_size"] == 3
    first = read_rows(setup["out"] / "pairs.csv")
    for key in ("rte", "rre", "frustum_rte", "confidence"):  # batching does not change a pair's result
        np.testing.assert_allclose([float(r[key]) for r in rows[:3]], [float(r[key]) for r in first], rtol=1e-4, atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "out").glob("pair_*")) == [
        "pair_0003_keypoints.png", "pair_0003_overlap.png", "pair_0003_projection.png"]


def test_bad_inputs_name_the_culprit(setup, tmp_path):
    with pytest.raises(InputError, match="missing.safetensors: no such weights file"):
        evaluate(tmp_path / "missing.safetensors", setup["root"], tmp_path / "out", progress=False)
    with pytest.raises(InputError, match="nowhere: no such folder"):
        evaluate(setup["weights"], tmp_path / "nowhere", tmp_path / "out", progress=False)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="junk.safetensors: not a safetensors file"):
        evaluate(tmp_path / "junk.safetensors", setup["root"], tmp_path / "out", progress=False)
    with pytest.raises(InputError, match=r"the weights take \[64, 128\] images and 1024 points"):  # kitti's data: 160 x 512, 40,960 points
        evaluate(setup["weights"], setup["root"], tmp_path / "out", config="kitti", progress=False)
    with pytest.raises(InputError, match="come from the weights"):
        evaluate(setup["weights"], setup["root"], tmp_path / "out", overrides={"model": {"dof": 6}}, progress=False)
    with pytest.raises(InputError, match=r"figure pairs \[4\]"):
        evaluate(setup["weights"], setup["root"], tmp_path / "out", figure_pairs=[4], overrides=ON_SEQUENCE_00,
                 progress=False)
    assert not (tmp_path / "out").exists()
    assert pair_list("0,5, 9") == [0, 5, 9] and pair_list("") == []


def test_roc_auc():
    labels = np.array([True, True, False, False])
    assert roc_auc(np.array([0.9, 0.8, 0.1, 0.2]), labels) == 1.0
    assert roc_auc(np.array([0.1, 0.2, 0.9, 0.8]), labels) == 0.0
    assert roc_auc(np.array([0.5, 0.5, 0.5, 0.5]), labels) == 0.5
    assert roc_auc(np.array([0.9, 0.3, 0.5, 0.2]), labels) == 0.75
    assert math.isnan(roc_auc(np.array([0.3, 0.4]), np.array([True, True])))
