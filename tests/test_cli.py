"""The ``i2preg`` command: subcommands end to end, and bad input as one line on stderr with exit code 2."""

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from i2preg.cli import main
from i2preg.data.readers import read_calibration_file, read_point_cloud
from i2preg.demo import run_demo
from i2preg.geometry import transform_points
from i2preg.metrics import registration_errors
from i2preg.weights import bundled_weights


def test_synth_writes_the_kitti_layout(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--sequences", "1", "--first-sequence", "3", "--frames", "1", "--seed", "4"]) == 0
    sequence = tmp_path / "sequences" / "03"
    assert (sequence / "image_2" / "000000.png").is_file() and (sequence / "velodyne" / "000000.bin").is_file()
    assert (tmp_path / "poses" / "03.txt").read_text().count("\n") == 1


def test_version(capsys):
    import i2preg

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out == f"i2preg {i2preg.__version__}\n"


def test_bad_input_is_one_line_with_exit_code_2(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing.yaml" in err


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, list[Path]]:
    """``run_demo`` on one frame with a tiny model as the bundled one (so its evaluation runs whether or not
    the real one is installed): the demo's folder and the pictures it wrote."""
    import i2preg.demo
    from i2preg.assembly import full_config
    from i2preg.config import load_config
    from i2preg.model.icl import ICL
    from i2preg.weights import save_weights

    cfg = full_config(load_config("tiny"))
    weights = tmp_path_factory.mktemp("weights") / "bundled.safetensors"
    save_weights(ICL(cfg["model"]), weights, cfg)
    out = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(i2preg.demo, "bundled_weights", lambda: weights)
        return out, run_demo(out, frames=1)


def test_demo_writes_a_picture_per_protocol_pair(demo):
    out, written = demo
    assert [p.name for p in written] == ["pair_000.png", "pair_001.png"]  # two colour cameras
    picture = cv2.imread(str(written[0]))
    assert picture.shape == (320, 512, 3)  # registered above, unregistered below
    assert Path(out / "data" / "sequences" / "00").is_dir()


def test_demo_registers_with_the_bundled_model_when_installed(demo):
    summary = json.loads((demo[0] / "eval" / "summary.json").read_text())
    assert summary["pairs"] == 2 and (demo[0] / "eval" / "cumulative_rte.png").is_file()


def test_eval_and_compare_default_to_the_bundled_models_on_the_sequences_given(synthetic_root, tmp_path):
    common = ["--data", str(synthetic_root), "--sequences", "00", "--limit", "1", "--device", "cpu"]
    assert main(["eval", *common, "--out", str(tmp_path / "eval"), "--figure-pairs", ""]) == 0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["weights"]["path"] == str(bundled_weights().resolve()) and summary["pairs"] == 1
    assert summary["config"]["data"]["test_sequences"] == ["00"]  # the bundled model's own: 00-03
    assert main(["compare", *common, "--out", str(tmp_path / "compare")]) == 0
    with open(tmp_path / "compare" / "comparison.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [(r["method"], Path(r["weights"]).name) for r in rows] == [
        ("icl", "synthetic-small.safetensors"), ("matching", "matching-small.safetensors")]
    assert float(rows[0]["rte_mean"]) == pytest.approx(summary["final"]["rte_mean"])


def test_eval_refine_flag_sets_the_refinement_and_rejects_unknown_ones(synthetic_root, tmp_path, capsys):
    common = ["--data", str(synthetic_root), "--sequences", "00", "--limit", "1", "--device", "cpu", "--figure-pairs", ""]
    assert main(["eval", *common, "--refine", "edges", "--out", str(tmp_path / "edges")]) == 0
    assert json.loads((tmp_path / "edges" / "summary.json").read_text())["config"]["eval"]["refine"] == "edges"
    capsys.readouterr()
    assert main(["eval", *common, "--refine", "photometric", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "eval.refine must be one of none, edges" in err
    assert not (tmp_path / "bad" / "summary.json").exists()


def test_register_takes_a_lidar_frame_cloud_with_its_axes(synthetic_root, tmp_path, capsys):
    """A cloud in its LiDAR's frame (z up) gets the frame warning; with --cloud-axes flu it registers without one, and
    pose.txt holds the pose for the cloud as given (the bundled model: within 2 m and 5 deg of the extrinsic)."""
    sequence = synthetic_root / "sequences" / "00"
    common = ["register", "--image", str(sequence / "image_2" / "000000.png"), "--points",
              str(sequence / "velodyne" / "000000.bin"), "--calib", str(sequence / "calib.txt")]
    assert main(common) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"i2preg register: warning: {sequence / 'velodyne' / '000000.bin'}: the cloud spreads")
    assert "expects y pointing down" in err
    assert main([*common, "--cloud-axes", "flu", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().err == ""
    errors = registration_errors(np.loadtxt(tmp_path / "pose.txt")[None],
                                 read_calibration_file(sequence / "calib.txt", 2).T_cam_velo[None])
    assert errors["rte"][0] < 2 and errors["rre"][0] < 5
    # both sides of the street; 12 yaw sectors, line-aligned; the search about the sweep's origin: the same frame
    # registers
    for options in (["--traffic", "auto"], ["--yaw-sectors", "12", "--refine", "lines"], ["--single-sweep"]):
        assert main([*common, "--cloud-axes", "flu", *options, "--out", str(tmp_path)]) == 0
        errors = registration_errors(np.loadtxt(tmp_path / "pose.txt")[None],
                                     read_calibration_file(sequence / "calib.txt", 2).T_cam_velo[None])
        assert errors["rte"][0] < 2 and errors["rre"][0] < 5, options


def test_a_warning_is_one_line_on_stderr(synthetic_root, tmp_path, capsys):
    """A cloud with missing returns (NaN rows) registers, with one warning line that gives their count (the cloud in
    its camera's frame, as the 3-DoF model expects it: no other warning)."""
    sequence = synthetic_root / "sequences" / "00"
    xyz, intensity = read_point_cloud(sequence / "velodyne" / "000000.bin")
    cloud = np.c_[transform_points(read_calibration_file(sequence / "calib.txt", 2).T_cam_velo, xyz), intensity]
    cloud[[0, 10, 20]] = np.nan
    np.save(tmp_path / "holes.npy", cloud)
    assert main(["register", "--image", str(sequence / "image_2" / "000000.png"), "--points", str(tmp_path / "holes.npy"),
                 "--calib", str(sequence / "calib.txt")]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"i2preg register: warning: {tmp_path / 'holes.npy'}: left out 3 of {len(cloud)} points holding NaN or inf"]
    assert "pose (camera from points)" in captured.out


def test_register_takes_a_prior_pose_file(synthetic_root, tmp_path, capsys):
    """--prior reads a 4x4 pose file (as pose.txt) and --prior-yaw-deg its tolerance; a malformed one is refused in
    one line that names it."""
    sequence = synthetic_root / "sequences" / "00"
    args = ["register", "--image", str(sequence / "image_2" / "000000.png"), "--points",
            str(sequence / "velodyne" / "000000.bin"), "--calib", str(sequence / "calib.txt")]
    np.savetxt(tmp_path / "guess.txt", np.eye(4))
    assert main([*args, "--prior", str(tmp_path / "guess.txt"), "--prior-yaw-deg", "10"]) == 0
    assert "pose (camera from points)" in capsys.readouterr().out
    (tmp_path / "bad.txt").write_text("1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 2\n")
    assert main([*args, "--prior", str(tmp_path / "bad.txt")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"i2preg register: error: {tmp_path / 'bad.txt'}: prior pose's last row is not 0 0 0 1"]


def test_an_out_path_that_cannot_be_a_folder_is_refused_before_any_work(synthetic_root, tmp_path, capsys):
    """--out naming a file, or a folder under one: one line, exit code 2, nothing written (register and eval refuse it
    before the model runs, synth before a frame is rendered)."""
    (tmp_path / "taken").write_text("a file\n")
    sequence = synthetic_root / "sequences" / "00"
    register = ["register", "--image", str(sequence / "image_2" / "000000.png"), "--points",
                str(sequence / "velodyne" / "000000.bin"), "--calib", str(sequence / "calib.txt")]
    for out in (tmp_path / "taken", tmp_path / "taken" / "below"):
        for command in ([*register, "--out", str(out)],
                        ["eval", "--data", str(synthetic_root), "--sequences", "00", "--out", str(out)],
                        ["synth", "--out", str(out), "--frames", "1"]):
            assert main(command) == 2
            err = capsys.readouterr().err.splitlines()
            assert len(err) == 1 and err[0].startswith(f"i2preg {command[0]}: error: {out}: cannot write here:"), err
    assert main(["train", "--config", "tiny", "--data", str(synthetic_root), "--run-dir", str(tmp_path / "taken")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"i2preg train: error: {tmp_path / 'taken'}: cannot write here: exists and is not a folder"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_train_on_a_dataset_without_its_sequences_stops_before_the_run_starts(synthetic_root, tmp_path, capsys):
    """The tiny config trains on 00-08, of which the dataset holds 00: one line, and no run folder."""
    assert main(["train", "--config", "tiny", "--data", str(synthetic_root), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"i2preg train: error: {synthetic_root}: no sequence 01,02,"), err
    assert err[0].endswith("(it holds 00: eval and compare take --sequences, train --set data.SPLIT_sequences)")
    assert not (tmp_path / "run").exists()


def test_eval_names_the_sequences_a_dataset_holds(synthetic_root, tmp_path, capsys):
    assert main(["eval", "--data", str(synthetic_root), "--out", str(tmp_path / "eval")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"i2preg eval: error: {synthetic_root}: no sequence 01,02,03 of the 00,01,02,03 asked for (it holds 00: eval "
        "and compare take --sequences, train --set data.SPLIT_sequences)"]


def test_register_says_what_it_wrote_and_leaves_no_earlier_frames_files(synthetic_root, tmp_path, capsys):
    """A folder written with --protocol-seed, then without: the protocol's files of the first run are gone."""
    sequence = synthetic_root / "sequences" / "00"
    args = ["register", "--image", str(sequence / "image_2" / "000000.png"), "--points",
            str(sequence / "velodyne" / "000000.bin"), "--calib", str(sequence / "calib.txt"), "--out", str(tmp_path)]
    assert main([*args, "--protocol-seed", "0"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "overlay.png", "overlay_frustum.png", "overlay_gt.png", "pose.txt", "protocol.json"]
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"wrote pose.txt, overlay.png, overlay_frustum.png, overlay_gt.png, protocol.json in {tmp_path}")
    assert main([*args, "--cloud-axes", "flu"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overlay.png", "overlay_frustum.png", "pose.txt"]
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote pose.txt, overlay.png, overlay_frustum.png in {tmp_path}"


def test_eval_point_draws_flag_runs_the_draws_and_rejects_fewer_than_one(synthetic_root, tmp_path, capsys):
    common = ["--data", str(synthetic_root), "--sequences", "00", "--limit", "2", "--device", "cpu",
              "--figure-pairs", ""]
    assert main(["eval", *common, "--point-draws", "2", "--out", str(tmp_path / "draws")]) == 0
    summary = json.loads((tmp_path / "draws" / "summary.json").read_text())
    assert summary["config"]["eval"]["point_draws"] == 2 and summary["pairs"] == 2
    with open(tmp_path / "draws" / "pairs.csv") as file:
        assert [int(r["index"]) for r in csv.DictReader(file)] == [0, 1]
    capsys.readouterr()
    assert main(["eval", *common, "--point-draws", "0", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "point_draws (eval.point_draws) must be a whole number of at least 1, not 0" in err
    assert not (tmp_path / "bad").exists()
