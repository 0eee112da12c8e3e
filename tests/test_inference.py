"""``inference``: the config weights run with, the solvers, one batch through ``infer``, and the confidence."""

from __future__ import annotations

import math
import os

import cv2
import numpy as np
import pytest
import torch

from i2preg.assembly import full_config
from i2preg.baselines.pnp import pnp_poses
from i2preg.config import load_config
from i2preg.data.collate import Collate, first_draws
from i2preg.errors import InputError
from i2preg.geometry import consensus_pose, make_transform, project_points, transform_points
from i2preg.inference import (
    checked_draws,
    evaluation_config,
    infer,
    pair_loader,
    reprojection_confidence,
    with_sequences,
)
from i2preg.model import ICL
from test_model import TINY_CONF, synthetic_batch, synthetic_sample


def test_infer_solves_each_pose_and_scores_the_final_one():
    """prm: the network's pose; frustum: GPDM's; pnp: PnP-RANSAC on the keypoint pairs (as pnp_poses, with
    OpenCV's RNG seeded alike); the confidence is that of the solved pose; the network ran once per call."""
    torch.manual_seed(0)
    model, batch = ICL(TINY_CONF).eval(), synthetic_batch()
    with torch.no_grad():
        out = model(batch)
    eval_cfg = full_config({})["eval"]
    prm = infer(model, batch, "prm")
    torch.testing.assert_close(prm.pose, out["pose"])
    assert prm.solved.all() and prm.network_seconds > 0 and prm.solver_seconds >= 0
    assert prm.draws_agreeing.tolist() == [1, 1]  # one draw
    torch.testing.assert_close(prm.confidence, reprojection_confidence(out["kp_2d"], out["kp_3d"], out["pose"], batch["K"]))
    torch.testing.assert_close(infer(model, batch, "frustum").pose, out["frustum_pose"])
    cv2.setRNGSeed(0)
    pnp = infer(model, batch, "pnp", eval_cfg)
    cv2.setRNGSeed(0)
    poses, solved = pnp_poses(out["kp_2d"], out["kp_3d"], batch["K"], eval_cfg["pnp"])
    torch.testing.assert_close(pnp.pose, poses)
    assert torch.equal(pnp.solved, solved)
    with pytest.raises(InputError, match="solver must be one of prm, pnp, frustum"):
        infer(model, batch, "ransac")


def test_confidence_is_one_for_agreement_and_zero_for_disagreement():
    torch.manual_seed(0)
    B, Q = 3, 10
    angles = torch.rand(B) * 6.28
    R = torch.stack([torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]]) for c, s in zip(angles.cos(), angles.sin())])
    pose = make_transform(R, torch.randn(B, 3))
    K = torch.tensor([[100.0, 0, 64], [0, 100, 32], [0, 0, 1]]).expand(B, 3, 3)
    in_camera = torch.cat([torch.randn(B, Q, 2), torch.rand(B, Q, 1) * 20 + 2], dim=-1)
    kp_3d = transform_points(torch.linalg.inv(pose), in_camera)
    kp_2d = project_points(in_camera, K)[0]
    torch.testing.assert_close(reprojection_confidence(kp_2d, kp_3d, pose, K), torch.ones(B), atol=1e-4, rtol=0)
    assert reprojection_confidence(kp_2d + 100, kp_3d, pose, K).max() < 1e-6
    half = reprojection_confidence(kp_2d + torch.tensor([8.0, 0]), kp_3d, pose, K)  # d = sigma: exp(-1/2)
    torch.testing.assert_close(half, torch.full((B,), math.exp(-0.5)), atol=1e-4, rtol=0)
    behind = transform_points(torch.linalg.inv(pose), in_camera * torch.tensor([1.0, 1, -1]))
    assert reprojection_confidence(kp_2d, behind, pose, K).max() == 0


def test_overrides_may_change_only_inference_settings():
    weights_config = full_config(load_config("tiny"))
    cfg = evaluation_config(weights_config, overrides={"model": {"gpdm": {"mask_source": "classifier", "refine_iterations": 2,
                                                                      "refine_points": 64},
                                                             "fine": {"iterations": 3}}})
    gpdm, fine = cfg["model"]["gpdm"], cfg["model"]["fine"]  # num_points stays the weights': 0 is no fine search
    assert (gpdm["mask_source"], gpdm["refine_iterations"], gpdm["refine_points"]) == ("classifier", 2, 64)
    assert fine["iterations"] == 3
    for bad in ({"gpdm": {"hidden_dim": 8}}, {"num_points": 10}, {"iclm": {"num_queries": 4}}, {"fine": {"num_points": 8}}):
        with pytest.raises(InputError, match="may change only model.fine.iterations"):
            evaluation_config(weights_config, overrides={"model": bad})


def test_the_input_size_is_the_weights_and_stated_once():
    """Another data config must keep the weights' crop and point count; a header that also states them in the
    model section (as weights written before did) reads the same, and one whose two statements differ is an error."""
    weights_config = full_config(load_config("tiny"))
    assert "image_size" not in weights_config["model"] and "num_points" not in weights_config["model"]
    with pytest.raises(InputError, match=r"take \[64, 128\] images and 1024 points, the data config gives crop \[64, 64\]"):
        evaluation_config(weights_config, overrides={"data": {"crop": [64, 64]}})
    stated_twice = {**weights_config, "model": {**weights_config["model"], "image_size": [64, 128], "num_points": 1024}}
    assert evaluation_config(stated_twice) == evaluation_config(weights_config)
    stated_twice["model"]["num_points"] = 2048
    with pytest.raises(InputError, match="model.num_points 2048 differs from data.num_points 1024"):
        full_config(stated_twice)


def test_another_config_gives_the_data_and_eval_sections(tmp_path):
    config = tmp_path / "other.yaml"
    config.write_text("base: tiny\ndata: {test_sequences: ['05'], seed: 3}\neval: {thresholds: {rte_thresh: 1.0}}\n")
    cfg = evaluation_config(full_config(load_config("tiny")), config)
    assert cfg["data"]["test_sequences"] == ["05"] and cfg["data"]["seed"] == 3
    assert cfg["eval"]["thresholds"] == {"rte_thresh": 1.0, "rre_thresh": 5.0} and cfg["eval"]["pnp"]["iterations"] == 500
    assert with_sequences({"data": {"seed": 1}}, "val", ["00", 1]) == {"data": {"seed": 1, "val_sequences": ["00", "1"]}}
    assert with_sequences(None, "test", None) == {}


def test_the_bundled_model_loads_strictly():
    """The bundled weights (written when the network input was stated twice) build and load strictly."""
    from i2preg.assembly import load_model
    from i2preg.weights import resolve_weights

    model, cfg = load_model(resolve_weights(None))
    assert isinstance(model, ICL) and model.gpdm.search is not None
    assert (cfg["data"]["crop"], cfg["data"]["num_points"]) == ([160, 512], 8192)


@pytest.mark.parametrize("spare_cores", [0, 1])
def test_loader_workers_on_the_cpu_use_only_the_cores_torch_leaves(synthetic_root, spare_cores):
    cores, threads = os.cpu_count() or 1, torch.get_num_threads()
    if cores - spare_cores < 1:
        pytest.skip("one core")
    cfg = full_config({"data": {"test_sequences": ["00"]}, "train": {"num_workers": 2}})
    torch.set_num_threads(cores - spare_cores)
    try:
        loader = pair_loader(cfg, "test", synthetic_root, None, 2)
    finally:
        torch.set_num_threads(threads)
    assert loader.num_workers == spare_cores
    assert pair_loader(cfg, "test", synthetic_root, None, 2, torch.device("cuda")).num_workers == 2


def test_point_draws_run_each_image_once_and_give_the_consensus_of_their_poses():
    """A batch of 2 pairs x 3 point draws: the network's outputs on each draw are those of the draw run alone
    (the image encoded once a pair), each pair's pose is the consensus of its draws' poses, every other output and
    the batch are the first draw's, and the confidence is the mean over the draws' keypoint pairs."""
    torch.manual_seed(0)
    model = ICL(TINY_CONF).eval()
    rng = np.random.default_rng(3)
    pairs = [synthetic_sample(rng) for _ in range(2)]
    draws = [[pair, *({**pair, "points": pair["points"][rng.permutation(len(pair["points"]))]} for _ in range(2))]
             for pair in pairs]
    batch = Collate(TINY_CONF)(draws)
    assert batch["draws"] == 3 and batch["image"].shape[0] == 6
    with torch.no_grad():
        alone = [model(Collate(TINY_CONF)([d])) for pair in draws for d in pair]
    result = infer(model, batch, "prm")
    poses = torch.stack([a["pose"][0] for a in alone]).view(2, 3, 4, 4)
    consensus, agreeing = consensus_pose(poses)
    torch.testing.assert_close(result.pose, consensus, atol=1e-5, rtol=0)
    assert torch.equal(result.draws_agreeing, agreeing)
    torch.testing.assert_close(result.out["frustum_pose"],
                               consensus_pose(torch.stack([a["frustum_pose"][0] for a in alone]).view(2, 3, 4, 4))[0],
                               atol=1e-5, rtol=0)
    for key in ("kp_2d", "kp_3d", "mask"):
        torch.testing.assert_close(result.out[key], torch.cat([alone[0][key], alone[3][key]]), atol=1e-4, rtol=0)
    confidence = torch.stack([reprojection_confidence(a["kp_2d"], a["kp_3d"], result.pose[[i // 3]], batch["K"][:1])[0]
                              for i, a in enumerate(alone)])  # each draw's pairs under its pair's consensus pose
    torch.testing.assert_close(result.confidence, confidence.view(2, 3).mean(1), atol=1e-5, rtol=0)
    assert len(first_draws(batch)["meta"]) == 2 and first_draws(batch)["pyramid_xyz"][1].shape[0] == 2


def test_point_draws_count_is_a_whole_number_of_at_least_one():
    assert checked_draws(3) == 3 and checked_draws(np.int64(5)) == 5
    for bad in (0, -1, 2.5, "3", True, None):
        with pytest.raises(InputError, match=r"point_draws \(eval.point_draws\) must be a whole number of at least 1"):
            checked_draws(bad)
