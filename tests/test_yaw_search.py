"""The pose search of GPDM (``model.pose_search``, ``gpdm.yaw_bins``): hypothesis geometry, its losses, warm starts
into it, and the default head of each DoF."""

from __future__ import annotations

import math

import pytest
import torch

from i2preg.geometry import frustum_params_to_pose, invert_transform, pose_to_frustum_params, transform_points
from i2preg.losses import compute_losses, refine_search_loss, yaw_search_loss
from i2preg.model import ICL
from i2preg.model.pose_search import (
    VIEW_BANDS,
    VIEW_TIE_BREAK,
    PoseSearch,
    points_near_view,
    restrict_to_prior,
    vector_yaws,
    yaw_bin_vectors,
)
from i2preg.weights import load_weights, save_weights
from test_model import TINY_CONF, synthetic_batch

H, W = 32, 64
K = torch.tensor([[[32.0, 0, (W - 1) / 2], [0, 32, (H - 1) / 2], [0, 0, 1]]])
SEARCH_CONF = {**TINY_CONF, "gpdm": {"hidden_dim": 16, "yaw_bins": 12, "refine_centre_step": 1.0, "refine_radius": 1,
                                     "refine_iterations": 1}}


def search_conf(**changes) -> dict:
    conf = {"yaw_bins": 36, "yaw_search_dim": 1, "yaw_window": 2, "refine_centre_step": 0.5,
            "refine_yaw_step_deg": 2.0, "refine_radius": 2, "refine_iterations": 1, "refine_shrink": 0.5,
            "refine_points": 0}
    return {**conf, **changes}


def yaw_pose(centre: tuple[float, float], yaw_deg: float) -> torch.Tensor:
    yaw = math.radians(yaw_deg)
    return frustum_params_to_pose(torch.tensor([centre]), torch.tensor([[-math.sin(yaw), math.cos(yaw)]]))


def test_yaw_search_peaks_at_the_yaw_that_centres_the_points():
    """A search whose score is the image feature where a point lands, over a map lit only in its two middle
    columns: a cluster 10 m straight ahead of a camera at yaw 130 deg is centred only by the 130 deg bin."""
    search = PoseSearch(image_dim=1, point_dim=4, conf=search_conf(refine_centre_step=0.0))
    with torch.no_grad():
        for parameter in search.parameters():
            parameter.zero_()
        search.image_proj.weight.fill_(1.0)
        search.score.weight.fill_(1.0)
    image_map = torch.zeros(1, 1, H // 8, W // 8)
    image_map[..., 3:5] = 1.0
    centre = (2.0, -3.0)
    points_cam = torch.tensor([[[dx, dy, 10.0] for dx in (-0.2, 0.0, 0.2) for dy in (-0.2, 0.0, 0.2)]])
    points = transform_points(invert_transform(yaw_pose(centre, 130.0)), points_cam)

    out = search(image_map, torch.randn(1, 9, 4), points, points[..., 1], torch.tensor([centre]), K, (H, W))
    logits, d = out["yaw_logits"], out["rotation"]

    assert logits.shape == (1, 36) and logits.argmax().item() == 13
    assert logits[0, 13] > logits[0, 12] > logits[0, 11] and logits[0, 13] > logits[0, 14] > logits[0, 15]
    assert logits[0, 30] == 0  # the opposite yaw sees no point
    d = torch.nn.functional.normalize(d, dim=-1)
    torch.testing.assert_close(d, pose_to_frustum_params(yaw_pose(centre, 130.0))[1], atol=1e-5, rtol=0)


def test_yaw_bins_match_the_frustum_parameterisation():
    bins = yaw_bin_vectors(8)
    for k in range(8):
        torch.testing.assert_close(bins[k : k + 1], pose_to_frustum_params(yaw_pose((0.0, 0.0), 45.0 * k))[1])


def test_yaw_search_loss_is_smallest_at_the_soft_target():
    """At logits = log(target) the cross-entropy is at its minimum (the target's entropy); a peak at the GT
    bin beats a peak at the opposite bin; a GT yaw between bins splits the target evenly."""
    T_gt = torch.cat([yaw_pose((1.0, 2.0), 100.0), yaw_pose((0.0, 0.0), -35.0)])
    logits = torch.zeros(2, 36, requires_grad=True)
    yaw_search_loss(logits, T_gt, 1.0).backward()
    target = -logits.grad * 2  # d loss / d logits = (softmax - target) / B with softmax uniform
    target = target + 1 / 36
    assert target[0].argmax() == 10 and target[1].argmax() == 32  # -35 deg = 325 deg: between bins 32 and 33
    torch.testing.assert_close(target[1, 32], target[1, 33])
    best = yaw_search_loss(target.clamp_min(1e-12).log(), T_gt, 1.0)
    for noise_seed in range(3):
        noise = torch.randn(2, 36, generator=torch.Generator().manual_seed(noise_seed))
        assert yaw_search_loss(target.clamp_min(1e-12).log() + noise, T_gt, 1.0) > best
    at_gt = torch.zeros(2, 36)
    at_gt[0, 10], at_gt[1, 32] = 10, 10
    assert yaw_search_loss(at_gt, T_gt, 1.0) < yaw_search_loss(at_gt.roll(18, dims=1), T_gt, 1.0)


def test_refinement_grid_and_window():
    """The grid is ordered (x, z, yaw) about the estimate, which is its middle hypothesis; the window mean of
    a sharp peak is that hypothesis; at a grid corner the missing neighbours get no weight; the refinement
    loss prefers the hypothesis at the GT."""
    search = PoseSearch(image_dim=1, point_dim=4, conf=search_conf())
    centre, yaw = torch.tensor([[1.0, -2.0]]), torch.tensor([0.3])
    centres, rotations = search.refinement_grid(centre, yaw)
    assert centres.shape == rotations.shape == (1, 125, 2)
    torch.testing.assert_close(centres[0, 62], centre[0])
    torch.testing.assert_close(rotations[0, 62], yaw_bin_vectors(1)[0].new_tensor([-math.sin(0.3), math.cos(0.3)]))
    torch.testing.assert_close(centres[0, 0], centre[0] - 1.0)  # (-2, -2, -2) steps
    torch.testing.assert_close(centres[0, 1], centre[0] - 1.0)  # only the yaw moves first
    torch.testing.assert_close(rotations[0, 1], torch.tensor([-math.sin(0.3 - math.radians(2)), math.cos(0.3 - math.radians(2))]))
    torch.testing.assert_close(centres[0, 25], centre[0] + torch.tensor([-0.5, -1.0]))

    for peak, neighbours in ((62, 27), (0, 8), (124, 8)):
        logits = torch.zeros(1, 125)
        logits[0, peak] = 50.0
        weights, index = search.grid_window(logits)
        assert (weights > 0).sum() == neighbours and index[0, weights[0].argmax()] == peak
        torch.testing.assert_close(weights.sum(), torch.tensor(1.0))

    T_gt = frustum_params_to_pose(centres[:, 37], rotations[:, 37])
    at = torch.full((1, 125), -10.0)
    at[0, 37] = 10.0
    assert refine_search_loss(at, centres, rotations, T_gt, 0.5, math.radians(2)) < \
        refine_search_loss(at.roll(1, dims=1), centres, rotations, T_gt, 0.5, math.radians(2))


def test_refine_points_keeps_the_points_near_the_view_and_the_same_logits():
    """20 points ahead of the camera and 30 behind it: refine_points = 20 picks the 20 ahead, and since the
    grid's small offsets never bring the others into view, its logits equal those of a grid over all 50."""
    torch.manual_seed(0)
    pose = yaw_pose((1.0, -2.0), 40.0)
    ahead = torch.rand(1, 20, 3) * torch.tensor([8.0, 2.0, 10.0]) + torch.tensor([-4.0, -1.0, 15.0])
    behind = torch.rand(1, 30, 3) * torch.tensor([30.0, 2.0, 10.0]) + torch.tensor([-15.0, -1.0, -20.0])
    order = torch.randperm(50)
    xyz = transform_points(invert_transform(pose), torch.cat([ahead, behind], dim=1)[:, order])
    search = PoseSearch(image_dim=3, point_dim=4, conf=search_conf(refine_points=20, yaw_search_dim=8))
    picked = points_near_view(xyz, *pose_to_frustum_params(pose), K, (H, W), 20)
    assert sorted(picked[0].tolist()) == sorted((order < 20).nonzero()[:, 0].tolist())
    inputs = (torch.randn(1, 8, H // 8, W // 8), torch.randn(1, 50, 8), xyz, xyz[..., 1],
              *pose_to_frustum_params(pose), K, (H, W), 1.0)
    subset = search.refine(*inputs)[2]
    search.refine_points = 0
    torch.testing.assert_close(subset, search.refine(*inputs)[2])


def test_points_in_view_are_kept_by_a_fixed_order_not_the_topk_ties():
    """300 points all in view tie at 0 outside the image: the 100 kept are those first in the fixed scramble of
    their index (what ONNX Runtime keeps too), and the same wherever the cloud is viewed from inside the image."""
    torch.manual_seed(0)
    pose = yaw_pose((0.0, 0.0), 0.0)
    camera = torch.rand(1, 300, 3) * torch.tensor([4.0, 2.0, 10.0]) + torch.tensor([-2.0, -1.0, 20.0])
    xyz = transform_points(invert_transform(pose), camera)
    picked = points_near_view(xyz, *pose_to_frustum_params(pose), K, (H, W), 100)
    expected = torch.argsort(torch.arange(300) * VIEW_TIE_BREAK % 65536)[:100]
    assert sorted(picked[0].tolist()) == sorted(expected.tolist())
    moved = points_near_view(xyz, *pose_to_frustum_params(yaw_pose((0.2, 0.5), 1.0)), K, (H, W), 100)
    assert sorted(moved[0].tolist()) == sorted(expected.tolist())


def test_a_point_at_the_border_is_kept_or_not_by_its_band_not_by_a_rounding_error():
    """300 points in view, 100 kept, and point 0 (first in the scramble) moved just outside the right border: within
    the first band (1/64 of the width) it is kept by its place in the scramble, whether it lies 1e-4 px inside or
    outside the border or half a pixel out; two bands out, it is not."""
    torch.manual_seed(0)
    pose = yaw_pose((0.0, 0.0), 0.0)
    camera = torch.rand(1, 300, 3) * torch.tensor([4.0, 2.0, 10.0]) + torch.tensor([-2.0, -1.0, 20.0])

    def kept(u: float) -> bool:
        moved = camera.clone()
        moved[0, 0, 0] = (u - K[0, 0, 2]) / K[0, 0, 0] * moved[0, 0, 2]  # point 0 projects at column u
        xyz = transform_points(invert_transform(pose), moved)
        return 0 in points_near_view(xyz, *pose_to_frustum_params(pose), K, (H, W), 100)[0].tolist()

    assert kept(W - 1e-4) and kept(W + 1e-4) and kept(W + 0.5)
    assert not kept(W + 2.5 * W / VIEW_BANDS)


def test_refinement_iterations_shrink_about_the_last_estimate():
    torch.manual_seed(0)
    search = PoseSearch(image_dim=3, point_dim=4, conf=search_conf(refine_iterations=2, yaw_search_dim=8))
    xyz = torch.randn(2, 50, 3) * 10
    out = search(torch.randn(2, 3, H // 8, W // 8), torch.randn(2, 50, 4), xyz, xyz[..., 1], torch.zeros(2, 2),
                 K.expand(2, -1, -1), (H, W))
    assert out["refine_logits"].shape == (2, 2, 125) and out["refine_centres"].shape == (2, 2, 125, 2)
    torch.testing.assert_close(out["refine_steps"], torch.tensor([[0.5, math.radians(2)], [0.25, math.radians(1)]]).expand(2, -1, -1))
    first = (out["refine_logits"][:, 0].softmax(-1)[..., None] * out["refine_centres"][:, 0]).sum(1)
    torch.testing.assert_close(out["refine_centres"][:, 1, 62], first)  # the middle of the second grid
    second = out["refine_centres"][:, 1]
    torch.testing.assert_close(second.amax(1) - second.amin(1), torch.full((2, 2), 1.0))  # half the first's 2 m


def test_model_with_yaw_search_outputs_logits_and_trains_them_in_stage_1():
    torch.manual_seed(0)
    batch = synthetic_batch()
    model = ICL(SEARCH_CONF)
    out = model.forward_gpdm(batch)
    assert out["yaw_logits"].shape == (2, 12) and out["frustum_rotation"].shape == (2, 2)
    assert out["refine_logits"].shape == (2, 1, 27) and out["coarse_centre"].shape == (2, 2)
    assert all(v.shape[0] == 2 for v in out.values())  # batched: eval and the API index every output by pair
    losses = compute_losses(out, batch, stage=1)
    assert set(losses) == {"cls", "fru", "yaw", "coarse_centre", "refine", "total"}
    losses["total"].backward()
    assert model.gpdm.search.image_proj.weight.grad.abs().sum() > 0
    assert model.image_encoder.stem[0].weight.grad.abs().sum() > 0
    assert not hasattr(model.gpdm, "rotation_head")


def test_the_default_head_is_the_pose_search_for_3_dof_and_the_papers_for_6():
    """ICL.default_conf: 3 DoF has the pose search, with the shipped design's two refinements; 6 DoF (and
    yaw_bins 0) the paper's regression head, whatever the search settings."""
    conf = {key: TINY_CONF[key] for key in ("image_encoder", "point_encoder", "iclm", "prm")}
    search = ICL(conf).gpdm
    assert search.search is not None and not hasattr(search, "rotation_head")
    assert (search.search.num_bins, search.search.iterations, search.search.centre_step) == (36, 2, 0.75)
    for paper in (ICL({**conf, "dof": 6}).gpdm, ICL({**conf, "gpdm": {"yaw_bins": 0}}).gpdm):
        assert paper.search is None and isinstance(paper.rotation_head, torch.nn.Linear)
    out = ICL({**conf, "dof": 6}).forward_gpdm(synthetic_batch())
    assert out["frustum_rotation"].shape == (2, 6) and "yaw_logits" not in out


def test_warm_start_loads_the_shared_tensors(tmp_path):
    """Weights of the paper's head warm-start a model with the yaw search (strict=False) and name the
    tensors that differ; a strict load of the same file is a one-line error naming it."""
    torch.manual_seed(0)
    paper = ICL(TINY_CONF)
    path = tmp_path / "paper.safetensors"
    save_weights(paper, path, {"model": TINY_CONF})
    model = ICL(SEARCH_CONF)
    unmatched = load_weights(model, path, strict=False)
    assert "gpdm.rotation_head.weight" in unmatched and "gpdm.search.score.weight" in unmatched
    torch.testing.assert_close(model.point_encoder.state_dict(), paper.point_encoder.state_dict())
    with pytest.raises(Exception, match="paper.safetensors"):
        load_weights(model, path)


@pytest.mark.parametrize("prior_deg, tolerance_deg, kept_deg", [
    (5.0, 12.0, [0, 10]),  # 350 and 20 lie 15 deg away
    (355.0, 12.0, [350, 0]),  # across the wrap
    (-5.0, 22.0, [340, 350, 0, 10]),
    (5.0, 0.0, [0, 10]),  # no bin within: the nearest ones stay
    (2.0, 0.0, [0]),
])
def test_a_yaw_prior_leaves_out_the_bins_beyond_its_tolerance(prior_deg, tolerance_deg, kept_deg):
    bins = vector_yaws(yaw_bin_vectors(36))[None]  # (1, 36), 10 deg apart from 0
    logits = torch.arange(36.0)[None]
    prior = torch.tensor([[math.radians(prior_deg), math.radians(tolerance_deg)]])
    restricted = restrict_to_prior(logits, bins, prior)
    kept = torch.isfinite(restricted[0]).nonzero()[:, 0]
    assert sorted((kept * 10).tolist()) == sorted(kept_deg)
    assert torch.equal(restricted[0, kept], logits[0, kept])


def test_a_centre_prior_is_where_the_pose_search_looks():
    """GPDM's pose search scores its yaws about a batch's ``centre_prior`` in place of the centre it regresses
    (``Registrator``'s ``single_sweep``): without the grid refinement the frustum pose's centre is the prior."""
    torch.manual_seed(0)
    batch = synthetic_batch()
    model = ICL({**SEARCH_CONF, "gpdm": {**SEARCH_CONF["gpdm"], "refine_centre_step": 0}}).eval()
    with torch.no_grad():
        free = model.forward_gpdm(batch)
        prior = free["coarse_centre"] + torch.tensor([[3.0, -2.0], [-4.0, 1.5]])
        held = model.forward_gpdm({**batch, "centre_prior": prior})
    torch.testing.assert_close(free["frustum_centre"], free["coarse_centre"])
    torch.testing.assert_close(held["frustum_centre"], prior)
    torch.testing.assert_close(held["coarse_centre"], free["coarse_centre"])  # the regression itself is unchanged
    assert not torch.allclose(held["yaw_logits"], free["yaw_logits"])  # the yaws are scored from the prior
