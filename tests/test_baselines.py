"""The explicit-matching baseline: PnP-RANSAC, mutual nearest neighbours, its loss, overfitting, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from i2preg.assembly import full_config
from i2preg.baselines.matching import MatchingNet, estimate_poses, match, mutual_nearest_neighbors
from i2preg.baselines.matching_loss import info_nce, matching_loss, token_index
from i2preg.baselines.pnp import pnp_poses, solve_pnp_ransac
from i2preg.config import load_config
from i2preg.geometry import invert_transform, project_points, sample_perturbation, transform_points
from i2preg.metrics import registration_errors
from i2preg.weights import read_weights_config, save_weights
from test_model import TINY_CONF, synthetic_batch

K_PROTOCOL = np.array([[359.0, 0.0, 255.5], [0.0, 359.0, 79.5], [0.0, 0.0, 1.0]])  # KITTI at 0.5, 160 x 512 crop
H, W = 160, 512


def correspondences(num: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels (num, 2) of points (num, 3) in front of the camera, the points moved into a perturbed cloud frame,
    and T_gt (4, 4), cloud -> camera."""
    rng = np.random.default_rng(seed)
    uv = rng.uniform([0, 0], [W - 1, H - 1], size=(num, 2))
    depth = rng.uniform(5, 40, size=num)
    rays = np.concatenate([(uv - K_PROTOCOL[:2, 2]) / K_PROTOCOL[0, 0], np.ones((num, 1))], axis=1)
    points_cam = rays * depth[:, None]
    P = sample_perturbation(rng)
    return uv, transform_points(P, points_cam), invert_transform(P)


def test_pnp_recovers_exact_pose():
    pixels, points, T_gt = correspondences(100, seed=0)
    result = solve_pnp_ransac(pixels, points, K_PROTOCOL)
    errors = registration_errors(result.pose, T_gt)
    assert result.success and result.inliers == 100
    assert errors["rte"][0] < 1e-3 and errors["rre"][0] < 0.01 and errors["rre_geodesic"][0] < 0.01


def test_pnp_with_half_outliers_is_within_the_protocol_thresholds():
    pixels, points, T_gt = correspondences(200, seed=1)
    rng = np.random.default_rng(2)
    pixels = pixels + rng.normal(0, 0.5, pixels.shape)
    outliers = rng.permutation(200)[:100]
    pixels[outliers] = rng.uniform([0, 0], [W - 1, H - 1], size=(100, 2))
    result = solve_pnp_ransac(pixels, points, K_PROTOCOL)
    errors = registration_errors(result.pose, T_gt)
    assert result.success and 90 <= result.inliers <= 120
    assert errors["rte"][0] < 2.0 and errors["rre"][0] < 5.0


def test_pnp_failure_is_the_identity_and_batches_keep_their_order():
    pixels, points, T_gt = correspondences(20, seed=3)
    few = solve_pnp_ransac(pixels[:3], points[:3], K_PROTOCOL)
    assert not few.success and few.inliers == 0 and np.array_equal(few.pose, np.eye(4))
    kp_2d = torch.tensor(np.stack([pixels, pixels[::-1].copy()]))
    kp_3d = torch.tensor(np.stack([points, points]), dtype=torch.float32)
    poses, ok = pnp_poses(kp_2d, kp_3d, torch.tensor(np.stack([K_PROTOCOL] * 2)))
    assert poses.shape == (2, 4, 4) and poses.dtype == torch.float32 and ok.tolist() == [True, False]
    assert registration_errors(poses[0].double().numpy(), T_gt)["rte"][0] < 1e-2
    assert torch.equal(poses[1], torch.eye(4))


def test_mutual_nearest_neighbours_are_exactly_the_mutual_pairs():
    e = torch.eye(4)
    desc_a = torch.stack([e[0], 0.8 * e[1] + 0.1 * e[2], e[2], e[3]])
    desc_b = torch.stack([e[3], 0.5 * e[0], e[0], e[1] + e[2], 0.2 * e[1]])
    # a0 <-> b2 mutual; a1 -> b3 but b3 -> a2; a2 <-> b3 mutual; a3 <-> b0 mutual; b1 -> a0, b4 -> a1: not mutual.
    i, j = mutual_nearest_neighbors(desc_a, desc_b)
    assert list(zip(i.tolist(), j.tolist())) == [(0, 2), (2, 3), (3, 0)]
    empty = mutual_nearest_neighbors(desc_a[:0], desc_b)
    assert [len(x) for x in empty] == [0, 0]


def test_token_index_follows_the_pixel_convention():
    uv = torch.tensor([[-0.5, -0.5], [3.49, 0.0], [3.5, 0.0], [0.0, 4.0], [1000.0, 1000.0]])
    assert token_index(uv, 4, (2, 3)).tolist() == [0, 0, 1, 3, 5]


def test_info_nce_is_the_softmax_over_the_positive_and_its_negatives():
    torch.manual_seed(0)
    similarity = torch.randn(2, 5, 7, requires_grad=True)
    positive = torch.randint(0, 7, (2, 5))
    negative = torch.rand(2, 5, 7) > 0.5
    negative[0, 0] = False  # a row without negatives: loss 0, finite gradient
    negative[1, 1, positive[1, 1]] = True  # the positive's own column is not counted twice
    loss = info_nce(similarity, positive, negative)
    for b in range(2):
        for a in range(5):
            columns = [c for c in range(7) if negative[b, a, c] and c != positive[b, a]] + [int(positive[b, a])]
            expected = -torch.log_softmax(similarity[b, a, columns], dim=0)[-1]
            torch.testing.assert_close(loss[b, a], expected)
    assert loss[0, 0].abs() < 1e-6
    loss.sum().backward()
    assert torch.isfinite(similarity.grad).all()


def tiny_matching_conf() -> dict:
    encoders = {k: v for k, v in TINY_CONF.items() if k in MatchingNet.default_conf}
    return {**encoders, "matching": {"dim": 16, "hidden_dim": 16}}


def test_forward_shapes_and_loss_terms():
    torch.manual_seed(0)
    batch = synthetic_batch()
    model = MatchingNet(tiny_matching_conf())
    out = model(batch)
    T, M = (32 // 4) * (64 // 4), 128
    expected = {"pixel_uv": (T, 2), "pixel_desc": (2, T, 16), "pixel_logits": (2, T), "coarse_xyz": (2, M, 3),
                "point_desc": (2, M, 16), "point_logits": (2, M)}
    assert {k: tuple(v.shape) for k, v in out.items()} == expected
    torch.testing.assert_close(out["pixel_desc"].norm(dim=-1), torch.ones(2, T))
    losses = matching_loss(out, batch, model.token_stride)
    assert set(losses) == {"desc", "overlap_pixel", "overlap_point", "total"}
    assert all(torch.isfinite(v) for v in losses.values())
    losses["total"].backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.slow
def test_matching_baseline_overfits_one_batch():
    """Loss / 20 within 120 steps, then mutual matching finds correct pairs: at least 8 a sample, at least 75 % of
    them within one token stride of where the true pose projects their point, and PnP-RANSAC solves on them.
    (The pose itself is not held to the protocol thresholds here: on the 32 x 64 px test image the matches'
    quantisation to 4 px tokens moves PnP's rotation by several degrees from one platform's floats to another's;
    PnP's accuracy is tested on exact and on outlier-ridden correspondences above.)"""
    torch.manual_seed(0)
    batch = synthetic_batch()
    model = MatchingNet(tiny_matching_conf())
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(120):
        losses = matching_loss(model(batch), batch, model.token_stride)
        optimizer.zero_grad()
        losses["total"].backward()
        optimizer.step()
        history.append(losses["total"].item())
    assert np.mean(history[-10:]) < history[0] / 20
    with torch.no_grad():
        out = model.eval()(batch)
    for (pixels, points), T_gt, K in zip(match(out), batch["T_gt"], batch["K"]):
        distance = (project_points(transform_points(T_gt, points), K)[0] - pixels).norm(dim=-1)
        assert len(distance) >= 8 and (distance < model.token_stride).float().mean() >= 0.75
    ok = estimate_poses(out, batch["K"])[1]
    assert ok.all()


def test_matching_config_and_weights_header(tmp_path):
    """``full_config`` of ``method: matching``: the baseline's own model and loss sections, eval.pnp and
    eval.matching; a weights file keeps the method in its header."""
    cfg = full_config(load_config("matching-small"))
    assert cfg["method"] == "matching"
    assert set(cfg["model"]) == set(MatchingNet.default_conf)
    assert cfg["model"]["image_encoder"] == full_config(load_config("synthetic-small"))["model"]["image_encoder"]
    assert set(cfg["loss"]) == {"desc", "overlap", "temperature", "negative_margin_px"}
    assert cfg["eval"]["pnp"] == {"iterations": 500, "reprojection_error": 1.0, "scale": 0.25, "confidence": 0.99,
                                  "min_matches": 4}
    assert cfg["eval"]["matching"]["max_points"] == 1024
    tiny = full_config({**load_config("tiny"), "method": "matching"})
    save_weights(MatchingNet(tiny["model"]), tmp_path / "m.safetensors", tiny)
    assert read_weights_config(tmp_path / "m.safetensors")["method"] == "matching"


@pytest.mark.slow
def test_train_matching_runs_end_to_end(synthetic_root, tmp_path):
    from i2preg.train import train

    cfg = load_config("tiny", {
        "method": "matching",
        "data": {"root": str(synthetic_root), "train_sequences": ["00"], "val_sequences": ["00"]},
        "train": {"stage1_max_steps": 1, "stage2_max_steps": 1, "limit_val_batches": 1, "val_pairs": 2},
    })
    weights = train(cfg, tmp_path / "run")
    assert weights == tmp_path / "run" / "model.safetensors" and (tmp_path / "run" / "stage1" / "last.ckpt").exists()
    header = read_weights_config(weights)
    assert header["method"] == "matching" and header["train"]["stage1_epochs"] == 1
    assert train(cfg, tmp_path / "run", resume=True) == weights
