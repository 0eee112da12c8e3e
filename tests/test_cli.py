"""The ``i2preg`` command: subcommands end to end, and bad input as one line on stderr with exit code 2."""

import json
from pathlib import Path

import cv2

from i2preg.cli import main
from i2preg.demo import run_demo


def test_synth_writes_the_kitti_layout(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--sequences", "1", "--first-sequence", "3", "--frames", "1", "--seed", "4"]) == 0
    sequence = tmp_path / "sequences" / "03"
    assert (sequence / "image_2" / "000000.png").is_file() and (sequence / "velodyne" / "000000.bin").is_file()
    assert (tmp_path / "poses" / "03.txt").read_text().count("\n") == 1


def test_bad_input_is_one_line_with_exit_code_2(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing.yaml" in err


def test_demo_writes_a_picture_per_protocol_pair(tmp_path):
    written = run_demo(tmp_path, frames=1)
    assert [p.name for p in written] == ["pair_000.png", "pair_001.png"]  # two colour cameras
    picture = cv2.imread(str(written[0]))
    assert picture.shape == (320, 512, 3)  # registered above, unregistered below
    assert Path(tmp_path / "data" / "sequences" / "00").is_dir()


def test_demo_registers_with_the_bundled_model_when_installed(tmp_path, monkeypatch):
    import i2preg.demo
    from i2preg.config import full_config, load_config
    from i2preg.model.icl import ICL
    from i2preg.weights import save_weights

    cfg = full_config(load_config("tiny"))
    weights = tmp_path / "bundled.safetensors"
    save_weights(ICL(cfg["model"]), weights, cfg)
    monkeypatch.setattr(i2preg.demo, "bundled_weights", lambda: weights)
    run_demo(tmp_path / "demo", frames=1)
    summary = json.loads((tmp_path / "demo" / "eval" / "summary.json").read_text())
    assert summary["pairs"] == 2 and (tmp_path / "demo" / "eval" / "cumulative_rte.png").is_file()
