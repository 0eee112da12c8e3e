"""The ICL network: shapes, masking, parameterisations, training stages, and the overfitting acceptance test."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from i2preg.config import deep_update
from i2preg.data.collate import Collate
from i2preg.geometry import (
    invert_transform,
    make_transform,
    project_points,
    rotation_6d_to_matrix,
    sample_perturbation,
    transform_points,
)
from i2preg.losses import compute_losses, residual_target
from i2preg.model import ICL
from i2preg.model.gpdm import params_from_pose, pose_from_params
from i2preg.model.iclm import ICLM, anchor_grid, sample_window, window_offsets
from i2preg.model.image_encoder import token_centres
from i2preg.model.prm import PRM, RESIDUAL_SCALE, compose_residual, reprojection_features

H, W, N = 32, 64, 1024
TINY_CONF = {  # with the paper's GPDM head (the pose search: test_yaw_search.py)
    "image_encoder": {"widths": (8, 16, 32), "token_stride": 4, "token_dim": 16},
    "point_encoder": {"widths": (8, 16, 32, 32), "voxel_size": 0.5, "subsample_sizes": (256, 128, 64), "num_neighbors": 8},
    "gpdm": {"hidden_dim": 16, "yaw_bins": 0},
    "iclm": {"dim": 16, "num_queries": 8, "num_iterations": 2},
    "prm": {"dim": 32},
}


def synthetic_sample(rng: np.random.Generator, image_size: tuple[int, int] = (H, W), num_points: int = N) -> dict:
    """A random image of image_size (focal length half its width) and num_points around the camera (about a
    quarter of them in view), moved by the protocol perturbation; T_gt maps them back into the camera frame."""
    (height, width), points_cam = image_size, rng.uniform([-20, -2, -20], [20, 2, 20], size=(num_points, 3))
    P = sample_perturbation(rng)
    return {
        "image": rng.random((3, height, width), dtype=np.float32),
        "K": np.array([[width / 2, 0, (width - 1) / 2], [0, width / 2, (height - 1) / 2], [0, 0, 1]], dtype=np.float32),
        "points": (points_cam @ P[:3, :3].T + P[:3, 3]).astype(np.float32),
        "intensity": rng.random(num_points, dtype=np.float32),
        "T_gt": invert_transform(P).astype(np.float32),
        "resampled": False,
        "meta": {},
    }


def synthetic_batch(batch_size: int = 2, seed: int = 0, conf: dict = TINY_CONF, image_size: tuple[int, int] = (H, W),
                    num_points: int = N) -> dict:
    rng = np.random.default_rng(seed)
    return Collate(conf)([synthetic_sample(rng, image_size, num_points) for _ in range(batch_size)])


def test_collate_shapes_and_true_neighbours():
    batch = synthetic_batch()
    sizes, k = [N, 256, 128, 64], 8
    assert batch["image"].shape == (2, 3, H, W) and batch["T_gt"].shape == (2, 4, 4)
    assert batch["resampled"].dtype == torch.bool and len(batch["meta"]) == 2
    for level, size in enumerate(sizes):
        assert batch["pyramid_xyz"][level].shape == (2, size, 3)
        assert batch["pyramid_neighbors"][level].shape == (2, size, k)
    for level in range(1, len(sizes)):
        assert batch["pyramid_pools"][level - 1].shape == (2, sizes[level], k)
        assert batch["pyramid_upsamples"][level - 1].shape == (2, sizes[level - 1])
    assert torch.equal(batch["pyramid_xyz"][0], batch["points"])

    def check_knn(queries, support, index):  # distances to the returned points = the k smallest distances
        dist = torch.cdist(queries.double(), support.double())
        found = dist.gather(-1, index.view(*index.shape[:2], -1))
        expected = dist.topk(found.shape[-1], dim=-1, largest=False).values
        torch.testing.assert_close(found, expected)

    xyz = batch["pyramid_xyz"]
    for level in range(len(sizes)):
        check_knn(xyz[level], xyz[level], batch["pyramid_neighbors"][level])
        if level:
            check_knn(xyz[level], xyz[level - 1], batch["pyramid_pools"][level - 1])
            check_knn(xyz[level - 1], xyz[level], batch["pyramid_upsamples"][level - 1])


@pytest.mark.parametrize("dof", [3, 6])
def test_forward_shapes(dof):
    torch.manual_seed(0)
    batch = synthetic_batch()
    out = ICL({**TINY_CONF, "dof": dof})(batch)
    B, M, Q, T = 2, 128, 8, (H // 4) * (W // 4)
    centre_dim, rotation_dim = (2, 2) if dof == 3 else (3, 6)
    expected = {
        "pose": (B, 4, 4), "frustum_pose": (B, 4, 4), "frustum_centre": (B, centre_dim),
        "frustum_rotation": (B, rotation_dim), "cls_logits": (B, M), "mask": (B, M), "coarse_xyz": (B, M, 3),
        "kp_2d": (B, Q, 2), "kp_3d": (B, Q, 3), "heatmap_2d": (B, Q, T), "heatmap_3d": (B, Q, M),
        "residual_rotation": (B, 3, 3), "residual_translation": (B, 3),
        "residual_rotation_params": (B, rotation_dim), "residual_translation_params": (B, 3 if dof == 6 else 2),
    }  # fmt: skip
    for key, shape in expected.items():
        assert tuple(out[key].shape) == shape, key
        assert torch.isfinite(out[key].float()).all(), key
    assert out["mask"].dtype == torch.bool and out["mask"].any(dim=1).all()
    R = out["pose"][:, :3, :3]
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3).expand(B, 3, 3), atol=1e-5, rtol=0)


def test_masked_points_get_zero_weight_and_never_move_keypoints():
    torch.manual_seed(0)
    B, M, C = 2, 40, 8
    iclm = ICLM(C, C, {"dim": 16, "num_queries": 8, "num_iterations": 2, "num_heads": 4})
    args = dict(token_map=torch.randn(B, C, 4, 6), image_size=(16, 24))  # T = 24 tokens at stride 4
    point_feats, xyz = torch.randn(B, M, C), torch.randn(B, M, 3) * 10
    mask = torch.rand(B, M) < 0.5
    out = iclm(**args, point_feats=point_feats, point_xyz=xyz, point_xyz_frustum=xyz, mask=mask, K=torch.eye(3).expand(B, 3, 3))
    assert (out["heatmap_3d"][~mask[:, None].expand_as(out["heatmap_3d"])] == 0).all()
    torch.testing.assert_close(out["heatmap_3d"].sum(-1), torch.ones(B, 8))

    moved_feats, moved_xyz = point_feats.clone(), xyz.clone()
    moved_feats[~mask] = torch.randn_like(moved_feats[~mask]) * 100
    moved_xyz[~mask] = torch.randn_like(moved_xyz[~mask]) * 1000
    moved = iclm(**args, point_feats=moved_feats, point_xyz=moved_xyz, point_xyz_frustum=moved_xyz, mask=mask,
                 K=torch.eye(3).expand(B, 3, 3))
    torch.testing.assert_close(moved["kp_3d"], out["kp_3d"], atol=1e-7, rtol=0)
    torch.testing.assert_close(moved["kp_2d"], out["kp_2d"], atol=1e-7, rtol=0)


def test_anchored_queries_start_at_their_anchors_in_both_modalities():
    """anchor_sigma > 0: with a tight prior an untrained ICLM's 2D keypoints sit on the grid of anchors and its 3D
    keypoints at the points whose frustum-pose projections are nearest them (one point a cell here)."""
    torch.manual_seed(0)
    B, C, H, W = 2, 8, 32, 64
    iclm = ICLM(C, C, {"dim": 16, "num_queries": 8, "num_iterations": 2, "num_heads": 4, "anchor_sigma": 0.01})
    anchors = anchor_grid(8, H, W)
    assert anchors.tolist() == [[8, 8], [24, 8], [40, 8], [56, 8], [8, 24], [24, 24], [40, 24], [56, 24]]
    point_uv = (anchors + torch.rand(8, 2) * 4 - 2).expand(B, -1, -1)  # each point within 2 px of an anchor
    depth = torch.rand(B, 8, 1) * 10 + 2
    xyz_frustum, K = torch.cat([point_uv, torch.ones(B, 8, 1)], -1) * depth, torch.eye(3).expand(B, 3, 3)  # K = I
    xyz, everything = torch.randn(B, 8, 3), torch.ones(B, 8, dtype=torch.bool)
    out = iclm(torch.randn(B, C, H, W), (H, W), torch.randn(B, 8, C), xyz, xyz_frustum, everything, K)
    torch.testing.assert_close(out["kp_2d"], anchors.expand(B, -1, -1), atol=0.5, rtol=0)
    torch.testing.assert_close(out["kp_3d"], xyz, atol=1e-3, rtol=0)
    paper = ICLM(C, C, {"dim": 16, "num_queries": 8, "num_iterations": 2, "num_heads": 4})
    free = paper(torch.randn(B, C, H, W), (H, W), torch.randn(B, 8, C), xyz, xyz_frustum, everything, K)
    assert (free["kp_2d"] - anchors).norm(dim=-1).mean() > 5  # without anchors they gather near the centre


def test_window_samples_equal_the_tokens_on_their_centres_and_flag_those_outside_the_image():
    """A window about a token centre samples the map's tokens themselves; half a stride off, the mean of two
    neighbours; samples beyond the image are flagged."""
    torch.manual_seed(0)
    token_map, stride = torch.randn(2, 3, 5, 12), 4  # a 20 x 48 image
    uv = token_centres(5, 12, stride)
    centre = torch.stack([uv[12 * 2 + 5], uv[12 * 2 + 6]])[:, None]  # tokens (v 2, u 5) and (2, 6): (B, 1, 2)
    samples, sample_uv, inside = sample_window(token_map, centre, window_offsets(3, stride), stride, (20, 48))
    assert samples.shape == (2, 1, 9, 3) and inside.all()
    for b, u in enumerate((5, 6)):
        expected = token_map[b, :, 1:4, u - 1 : u + 2].flatten(1).T  # the 3 x 3 tokens about it, row-major
        torch.testing.assert_close(samples[b, 0], expected)
        torch.testing.assert_close(sample_uv[b, 0], uv.view(5, 12, 2)[1:4, u - 1 : u + 2].reshape(9, 2))
    half = sample_window(token_map, centre + torch.tensor([stride / 2, 0]), window_offsets(1, stride), stride, (20, 48))[0]
    torch.testing.assert_close(half[0, 0, 0], token_map[0, :, 2, 5:7].mean(-1))
    corner = sample_window(token_map, torch.zeros(2, 1, 2), window_offsets(2, stride), stride, (20, 48))[2]
    assert corner.tolist() == [[[False, False, False, True]]] * 2  # only the sample at (+2, +2) px is inside


@pytest.mark.parametrize("shape", [(2, 3, 5, 12), (1, 2, 1, 7), (1, 2, 6, 1)])
def test_window_samples_and_their_gradient_equal_grid_samples_with_border_padding(shape):
    """sample_window reads what grid_sample reads (bilinear, align_corners False, border padding), inside the map
    and beyond its border, on maps one pixel wide or high too, and gives the map grid_sample's gradient."""
    generator = torch.Generator().manual_seed(5)
    B, C, h, w = shape
    stride = 4
    token_map = torch.randn(shape, generator=generator, requires_grad=True)
    centre = torch.rand(B, 7, 2, generator=generator) * torch.tensor([w * stride + 16.0, h * stride + 16.0]) - 8
    offsets = window_offsets(3, stride) * 1.37  # samples at other fractions than the centre's
    samples = sample_window(token_map, centre, offsets, stride, (h * stride, w * stride))[0]
    uv = centre[:, :, None] + offsets
    grid = ((uv - (stride - 1) / 2) / stride + 0.5) / uv.new_tensor([w, h]) * 2 - 1
    reference = F.grid_sample(token_map, grid, mode="bilinear", padding_mode="border", align_corners=False)
    reference = reference.permute(0, 2, 3, 1)
    torch.testing.assert_close(samples, reference, atol=1e-5, rtol=1e-5)
    weights = torch.randn(samples.shape, generator=generator)
    torch.testing.assert_close(torch.autograd.grad((samples * weights).sum(), token_map)[0],
                               torch.autograd.grad((reference * weights).sum(), token_map)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window_centre", ["keypoint", "frustum"])
def test_coarse_to_fine_refines_within_windows(window_centre):
    """global_stride 8 and a window [4, 8]: the global stage's heatmap covers the stride-8 tokens, the final one
    4 x 4 stride-4 samples about the global 2D keypoint (or the 3D keypoint's frustum projection), and the final
    2D keypoint is their heatmap's mean; the 3D keypoint is the global stage's; stage 2 trains the window stage."""
    torch.manual_seed(0)
    batch = synthetic_batch()
    conf = {**TINY_CONF, "iclm": {**TINY_CONF["iclm"], "global_stride": 8, "windows": [[4, 8]],
                                  "window_centre": window_centre}}
    model = ICL(conf)
    out = model(batch)
    (coarse,) = out["coarse_stages"]
    B, Q = 2, 8
    assert coarse["heatmap_2d"].shape == (B, Q, (H // 8) * (W // 8))
    torch.testing.assert_close(coarse["heatmap_2d_uv"], token_centres(H // 8, W // 8, 8))
    torch.testing.assert_close(coarse["kp_2d"], coarse["heatmap_2d"] @ coarse["heatmap_2d_uv"])
    assert out["heatmap_2d"].shape == (B, Q, 16) and out["heatmap_2d_uv"].shape == (B, Q, 16, 2)
    centre = coarse["kp_2d"]
    if window_centre == "frustum":
        centre = project_points(transform_points(out["frustum_pose"], out["kp_3d"]), batch["K"])[0]
    torch.testing.assert_close(out["heatmap_2d_uv"].mean(-2), centre)
    torch.testing.assert_close(out["kp_2d"], (out["heatmap_2d"][..., None] * out["heatmap_2d_uv"]).sum(-2))
    torch.testing.assert_close(out["kp_3d"], out["heatmap_3d"] @ out["coarse_xyz"])
    model.freeze_gpdm()
    trained = stage_gradients(model, stage=2)[1]
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trained
    with pytest.raises(ValueError, match="no multiple of the token stride"):
        ICL({**TINY_CONF, "iclm": {**TINY_CONF["iclm"], "windows": [[2, 8]]}})(batch)


def test_window_heatmap_equals_the_key_projection_of_every_sample():
    """The window stage's logits put heat_key_2d's weight on the query instead of projecting each sample; its
    heatmap (and the gradient into the window's samples) equals the direct form: every sample's token (its
    bilinear sample + its position's and its offset's encodings) through heat_key_2d, dotted with the query."""
    torch.manual_seed(0)
    B, C, H, W, M = 2, 8, 32, 64, 8
    iclm = ICLM(C, C, {"dim": 16, "num_queries": 8, "num_iterations": 1, "num_heads": 4, "global_stride": 8,
                       "windows": [[4, 8]]})
    token_map = torch.randn(B, C, H // 4, W // 4, requires_grad=True)
    xyz, everything = torch.randn(B, M, 3), torch.ones(B, M, dtype=torch.bool)
    out = iclm(token_map, (H, W), torch.randn(B, M, C), xyz, xyz, everything, torch.eye(3).expand(B, 3, 3))
    stage = iclm.window_stages[0]
    centre = out["coarse_stages"][0]["kp_2d"].detach()
    offsets = window_offsets(4, 4)
    samples, uv, inside = sample_window(iclm._pixel_map(token_map, 4, 4)[0], centre, offsets, 4, (H, W))
    window = samples + iclm.pixel_pos(uv / torch.tensor([W, H])) + stage.offset_pos(offsets / 8)
    logits = (stage.heat_key_2d(window) @ stage.heat_query_2d(out["desc_2d"])[..., None])[..., 0]
    expected = torch.softmax(logits.masked_fill(~inside, -1e9) / 4, dim=-1)  # scale 1 / sqrt(16)
    torch.testing.assert_close(out["heatmap_2d"], expected, atol=1e-6, rtol=1e-5)
    (grad,) = torch.autograd.grad(out["heatmap_2d"].square().sum(), token_map, retain_graph=True)
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), token_map)
    torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=1e-4)


def test_keypoints_inside_image_and_masked_bounding_box():
    torch.manual_seed(0)
    batch = synthetic_batch()
    out = ICL(TINY_CONF)(batch)
    assert (out["kp_2d"] >= 0).all() and (out["kp_2d"][..., 0] <= W - 1).all() and (out["kp_2d"][..., 1] <= H - 1).all()
    for xyz, mask, kp in zip(out["coarse_xyz"], out["mask"], out["kp_3d"]):
        inside = xyz[mask]
        assert (kp >= inside.min(0).values - 1e-5).all() and (kp <= inside.max(0).values + 1e-5).all()


def test_empty_geometric_mask_falls_back_to_top_logits():
    torch.manual_seed(0)
    batch = synthetic_batch()
    batch["K"][:, 0, 2] = 1e6  # principal point far outside the image: nothing projects into it
    model = ICL(TINY_CONF)
    out = model(batch)
    assert (out["mask"].sum(1) == model.conf["gpdm"]["fallback_topk"]).all()
    top = out["cls_logits"].topk(model.conf["gpdm"]["fallback_topk"], dim=1).indices
    assert out["mask"].gather(1, top).all()
    assert torch.isfinite(out["kp_3d"]).all()


def test_mask_source_switch_takes_iclm_mask_from_the_classifier():
    torch.manual_seed(0)
    batch = synthetic_batch()
    geometric = ICL(TINY_CONF)
    classifier = ICL({**TINY_CONF, "gpdm": {**TINY_CONF["gpdm"], "mask_source": "classifier"}})
    classifier.load_state_dict(geometric.state_dict())
    out_geometric, out_classifier = geometric(batch), classifier(batch)
    torch.testing.assert_close(out_classifier["cls_logits"], out_geometric["cls_logits"])
    above = out_classifier["cls_logits"] > 0
    assert above.any(dim=1).all() and torch.equal(out_classifier["mask"], above)
    assert not torch.equal(out_classifier["mask"], out_geometric["mask"])
    with pytest.raises(ValueError, match="mask_source"):
        ICL({**TINY_CONF, "gpdm": {"mask_source": "both"}})


def test_parameterisation_round_trips():
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    T_yaw = torch.tensor(np.stack([sample_perturbation(rng) for _ in range(4)]), dtype=torch.float64)
    centre, d = params_from_pose(T_yaw, dof=3)
    torch.testing.assert_close(pose_from_params(centre, d), T_yaw)
    R = rotation_6d_to_matrix(torch.randn(4, 6, dtype=torch.float64))
    T_general = make_transform(R, torch.randn(4, 3, dtype=torch.float64) * 10)
    centre, rot6d = params_from_pose(T_general, dof=6)
    torch.testing.assert_close(pose_from_params(centre, rot6d), T_general)
    frustum = make_transform(rotation_6d_to_matrix(torch.randn(4, 6, dtype=torch.float64)), torch.randn(4, 3, dtype=torch.float64))
    torch.testing.assert_close(compose_residual(*residual_target(frustum, T_general), frustum), T_general)


def test_reprojection_features_measure_the_pixel_shift_from_the_frustum_projection():
    """Exact pairs under T_f give a zero residual; a shift of s pixels gives RESIDUAL_SCALE s / f; a keypoint
    behind the frustum camera gives none."""
    torch.manual_seed(0)
    frustum = make_transform(rotation_6d_to_matrix(torch.randn(2, 6, dtype=torch.float64)), torch.randn(2, 3, dtype=torch.float64))
    K = torch.tensor([[300.0, 0, 250], [0, 300, 80], [0, 0, 1]], dtype=torch.float64).expand(2, 3, 3)
    in_camera = torch.cat([torch.randn(2, 5, 2) * 3, torch.rand(2, 5, 1) * 30 + 2], -1).double()
    in_camera[1, 4, 2] = -5.0  # behind the camera
    kp_3d = transform_points(invert_transform(frustum), in_camera)
    kp_2d = project_points(in_camera, K)[0] + torch.tensor([6.0, -3.0], dtype=torch.float64)
    normalized = (torch.cat([kp_2d, torch.ones_like(kp_2d[..., :1])], -1) @ torch.linalg.inv(K).transpose(-1, -2))[..., :2]
    features = reprojection_features(normalized, transform_points(frustum, kp_3d))
    in_front = torch.ones(2, 5, dtype=torch.float64)
    in_front[1, 4] = 0
    expected = RESIDUAL_SCALE * torch.tensor([6.0, -3.0], dtype=torch.float64) / 300 * in_front[..., None]
    torch.testing.assert_close(features[..., :2], expected)
    torch.testing.assert_close(features[..., 5], in_front)
    torch.testing.assert_close(features[0, :, 2:4], in_camera[0, :, :2] / in_camera[0, :, 2:])


def test_prm_reprojection_residual_is_an_added_branch():
    """PRM weights without the residual branch load into a PRM with it (only residual_net is fresh); the branch
    changes the pose, and zeroed it gives the plain PRM's pose."""
    torch.manual_seed(0)
    plain, residual = PRM(16, {"dim": 32}, 3), PRM(16, {"dim": 32, "reprojection_residual": True}, 3)
    missing = residual.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(name.startswith("residual_net.") for name in missing)
    B, Q = 2, 8
    frustum = make_transform(torch.eye(3).expand(B, 3, 3), torch.zeros(B, 3))
    K = torch.tensor([[32.0, 0, 31.5], [0, 32, 15.5], [0, 0, 1]]).expand(B, 3, 3)
    kp_3d = torch.cat([torch.randn(B, Q, 2), torch.rand(B, Q, 1) * 10 + 2], -1)
    kp_2d = project_points(kp_3d, K)[0]
    args = (torch.randn(B, Q, 16), torch.randn(B, Q, 16), K, frustum)
    out, out_plain = residual(kp_2d, kp_3d, *args), plain(kp_2d, kp_3d, *args)
    assert out["pose"].shape == (B, 4, 4) and not torch.allclose(out["pose"], out_plain["pose"])
    with torch.no_grad():
        residual.residual_net[-2].weight.zero_()
        residual.residual_net[-2].bias.zero_()
    torch.testing.assert_close(residual(kp_2d, kp_3d, *args)["pose"], out_plain["pose"])


def stage_gradients(model: ICL, stage: int) -> tuple[set[str], set[str]]:
    """Names of the (GPDM, other) trainable parameters that receive a non-zero gradient."""
    batch = synthetic_batch()
    compute_losses(model(batch), batch, stage=stage)["total"].backward()
    gpdm = {id(p) for p in model.gpdm_parameters()}
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    names = {n: id(p) in gpdm for n, p in model.named_parameters()}
    return {n for n in with_grad if names[n]}, {n for n in with_grad if not names[n]}


def test_stage_1_trains_only_gpdm():
    torch.manual_seed(0)
    model = ICL(TINY_CONF)
    gpdm_names = {n for n, p in model.named_parameters() if any(p is q for q in model.gpdm_parameters())}
    gpdm_grads, other_grads = stage_gradients(model, stage=1)
    assert gpdm_grads == gpdm_names and not other_grads
    assert {n.split(".")[0] for n in gpdm_names} == {"image_encoder", "point_encoder", "gpdm"}


def test_stage_2_trains_everything_but_gpdm():
    torch.manual_seed(0)
    model = ICL(TINY_CONF)
    model.freeze_gpdm()
    others = {n for n, p in model.named_parameters() if p.requires_grad}
    gpdm_grads, other_grads = stage_gradients(model, stage=2)
    assert not gpdm_grads and other_grads == others
    assert {n.split(".")[0] for n in others} == {"image_decoder", "iclm", "prm"}


def test_own_encoders_feed_iclm_alone_and_train_in_stage_2():
    """iclm.own_encoders: ICLM's tokens come from its own encoders, which stage 2 trains; the shared image decoder
    (which then feeds only the fine search, absent here) no longer reaches ICLM's keypoints."""
    torch.manual_seed(0)
    model = ICL(deep_update(TINY_CONF, {"iclm": {"own_encoders": True}})).eval()
    batch = synthetic_batch()
    with torch.no_grad():
        before = model(batch)["kp_2d"]
        for parameter in model.image_decoder.parameters():
            parameter.add_(1.0)
        torch.testing.assert_close(model(batch)["kp_2d"], before)
        for parameter in model.iclm_encoders.image_decoder.parameters():
            parameter.add_(1.0)
        assert not torch.allclose(model(batch)["kp_2d"], before)
    model.train().freeze_gpdm()
    gpdm_grads, other_grads = stage_gradients(model, stage=2)
    assert not gpdm_grads
    assert {n.split(".")[0] for n in other_grads} == {"iclm_encoders", "iclm", "prm"}
    assert {n.split(".")[1] for n in other_grads if n.startswith("iclm_encoders")} == {
        "image_encoder", "image_decoder", "point_encoder"}


@pytest.mark.slow
def test_tiny_model_overfits_one_batch():
    """Acceptance test of the issue: both training stages on one batch; stage 2 (200 steps) cuts L_cam by 80 %."""
    torch.manual_seed(0)
    batch = synthetic_batch()
    model = ICL(TINY_CONF)
    optimizer = torch.optim.Adam(model.gpdm_parameters(), lr=3e-3)
    for _ in range(100):
        losses = compute_losses(model.forward_gpdm(batch), batch, stage=1)
        optimizer.zero_grad()
        losses["total"].backward()
        optimizer.step()

    model.freeze_gpdm()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=200)
    history = []
    for _ in range(200):
        losses = compute_losses(model(batch), batch, stage=2)
        optimizer.zero_grad()
        losses["total"].backward()
        optimizer.step()
        schedule.step()
        history.append(losses["cam"].item())
    assert history[-1] < 0.2 * history[0], (history[0], history[-1])


@pytest.mark.parametrize("stage", [1, 2])
def test_a_training_step_runs_under_mixed_precision(stage):
    """``train.precision: bf16-mixed`` (autocast): the pose search, the fine search and KPConv's grouped matmuls,
    whose in-place and ``out=`` forms autocast does not reach, run in float32; the loss is the float32 step's to
    bf16's precision, and the same parameters get a gradient."""
    conf = deep_update(copy.deepcopy(ICL.default_conf), {
        **TINY_CONF, "gpdm": {"hidden_dim": 16},  # the pose search
        "fine": {"num_points": 48, "dim": 16, "residual_layers": 1},
        "iclm": {"dim": 16, "num_queries": 8, "num_iterations": 1, "global_stride": 8, "windows": [[4, 8]],
                 "window_centre": "frustum", "anchor_sigma": 0.125},
    })  # fmt: skip
    losses, with_grad = [], []
    for mixed in (False, True):
        torch.manual_seed(0)
        model, batch = ICL(conf), synthetic_batch(conf=conf)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed):
            total = compute_losses(model.forward_gpdm(batch) if stage == 1 else model(batch), batch, stage=stage)["total"]
        total.backward()
        losses.append(total.item())
        with_grad.append({n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0})
    assert losses[1] == pytest.approx(losses[0], rel=1e-2)
    assert with_grad[1] == with_grad[0]
