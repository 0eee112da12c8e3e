"""The pose search scores only the points each hypothesis sees, and that equals the dense formulation it replaced
(reference below: every point under every hypothesis, the unseen ones multiplied by zero)."""

import math
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from i2preg.geometry import frustum_params_to_pose, project_points, transform_points, view_weight
from i2preg.model.icl import ICL
from i2preg.model.layers import BilinearRows
from i2preg.model.pose_search import PoseSearch, add_bilinear_samples, yaw_bin_vectors

H, W = 64, 160


def dense_logits(search, image, points, xyz, heights, centres, rotations, K, image_size):
    """PoseSearch.hypothesis_logits over every (hypothesis, point) pair."""
    (B, M), Hy = xyz.shape[:2], centres.shape[1]
    height, width = image_size
    points_cam = transform_points(frustum_params_to_pose(centres, rotations), xyz[:, None])
    uv, depth = project_points(points_cam, K[:, None])
    valid = view_weight(uv, depth, height, width)
    grid = torch.stack([(2 * uv[..., 0] + 1) / width - 1, (2 * uv[..., 1] + 1) / height - 1], dim=-1)
    sampled = F.grid_sample(image, grid.clamp(-1.5, 1.5).reshape(B, Hy * M, 1, 2), align_corners=False)[..., 0]
    sampled = sampled.transpose(1, 2).reshape(B, Hy, M, -1)
    geometry = torch.stack([heights[:, None].expand(-1, Hy, -1) / 2, depth.clamp_min(0.5).log()], dim=-1)
    scores = search.score(F.relu(sampled + points[:, None] + search.geometry_proj(geometry)))[..., 0]
    return (scores * valid).sum(-1) / valid.sum(-1).clamp_min(1)


def inputs(seed, B=3, M=200, bins=12):
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the weights too: unseeded, about 1 draw in 100 put a score's input within rounding of
    # ReLU's kink, where the two formulations' gradients part
    search = PoseSearch(16, 24, {**ICL.default_conf["gpdm"], "yaw_bins": bins})
    image = torch.randn(B, search.image_proj.out_channels, H // 8, W // 8, generator=generator, requires_grad=True)
    points = torch.randn(B, M, search.point_proj.out_features, generator=generator, requires_grad=True)
    xyz = torch.rand(B, M, 3, generator=generator) * torch.tensor([40.0, 3.0, 40.0]) - torch.tensor([20.0, 2.0, 20.0])
    heights = xyz[..., 1] + 0.02 * xyz[..., 2]  # a ground leaning 1.1 deg: not the frame's y
    centres = (torch.rand(B, 1, 2, generator=generator) * 4 - 2).expand(-1, bins, -1)
    rotations = yaw_bin_vectors(bins).expand(B, -1, -1)
    f = W / 2
    K = torch.tensor([[f, 0, (W - 1) / 2], [0, f, (H - 1) / 2], [0, 0, 1]]).expand(B, -1, -1)
    return search, image, points, xyz, heights, centres, rotations, K


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_logits_and_gradients_equal_the_dense_formulation(seed):
    search, image, points, *rest = inputs(seed)
    sparse = search.hypothesis_logits(image, points, *rest, (H, W))
    dense = dense_logits(search, image, points, *rest, (H, W))
    torch.testing.assert_close(sparse, dense, atol=1e-5, rtol=1e-5)
    weights = torch.randn_like(dense)
    wrt = [image, points, *search.geometry_proj.parameters(), *search.score.parameters()]
    for a, b in zip(torch.autograd.grad((sparse * weights).sum(), wrt), torch.autograd.grad((dense * weights).sum(), wrt)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_a_hypothesis_that_sees_no_point_scores_zero():
    search, image, points, xyz, heights, centres, rotations, K = inputs(0)
    xyz = xyz.clone()
    xyz[0] = xyz[0] * 0.01 + torch.tensor([0.0, 0.0, -30.0])  # sample 0: every point 30 m behind the centre...
    rotations = rotations.clone()
    rotations[0] = torch.tensor([-math.sin(0.0), math.cos(0.0)])  # ...and every hypothesis looking forward
    centres = torch.zeros_like(centres)
    logits = search.hypothesis_logits(image, points, xyz, heights, centres, rotations, K, (H, W))
    assert torch.equal(logits[0], torch.zeros_like(logits[0]))
    torch.testing.assert_close(logits, dense_logits(search, image, points, xyz, heights, centres, rotations, K, (H, W)))


@pytest.mark.parametrize("B", [3, 1])
def test_bilinear_samples_equal_grid_sample_on_each_map(B):
    """add_bilinear_samples adds what grid_sample reads on each sample's own map (border pixels reading the zeros
    beyond it), and its gradient to the maps is grid_sample's; the ONNX export's form (corners gathered, then
    summed) gives the same rows. With one sample the flattened map is a transposed view (read through a copy)."""
    generator = torch.Generator().manual_seed(3)
    C, h, w = 5, H // 4, W // 4
    image = torch.randn(B, C, h, w, generator=generator, requires_grad=True)
    sample = torch.randint(0, B, (1001,), generator=generator).sort().values
    uv = torch.rand(1001, 2, generator=generator) * torch.tensor([W, H]) - 0.5  # in view, as the scores sample
    uv[:4] = torch.tensor([[-0.4999, -0.4999], [W - 0.5001, H - 0.5001], [-0.4999, H - 0.5001], [W / 2, -0.4999]])
    rows = torch.randn(1001, C, generator=generator)
    grid = torch.stack([(2 * uv[:, 0] + 1) / W - 1, (2 * uv[:, 1] + 1) / H - 1], dim=-1)
    own = torch.cat([F.grid_sample(image[b:b + 1], grid[sample == b].view(1, -1, 1, 2), align_corners=False)[0, :, :, 0].T
                     for b in range(B)])
    added = add_bilinear_samples(rows.clone(), image, sample, uv, (H, W))
    torch.testing.assert_close(added, rows + own, atol=1e-5, rtol=1e-5)
    with mock.patch.object(torch.onnx, "is_in_onnx_export", return_value=True):
        exported_form = add_bilinear_samples(rows.clone(), image, sample, uv, (H, W))
    torch.testing.assert_close(exported_form, added, atol=1e-6, rtol=1e-6)
    weights = torch.randn(added.shape, generator=generator)
    torch.testing.assert_close(torch.autograd.grad((added * weights).sum(), image)[0],
                               torch.autograd.grad((own * weights).sum(), image)[0], atol=1e-5, rtol=1e-5)


def test_bilinear_rows_gradients_equal_the_embedding_bags():
    """BilinearRows's own backward gives the table and the weights the gradients of F.embedding_bag's."""
    generator = torch.Generator().manual_seed(4)
    table = torch.randn(50, 6, generator=generator, requires_grad=True)
    corners = torch.randint(0, 50, (300, 4), generator=generator)
    weights = torch.rand(300, 4, generator=generator, requires_grad=True)
    grad = torch.randn(300, 6, generator=generator)
    rows = BilinearRows.apply(table, corners, weights)
    reference = F.embedding_bag(corners, table, per_sample_weights=weights, mode="sum")
    torch.testing.assert_close(rows, reference)
    ours, embedding_bags = (torch.autograd.grad(out, [table, weights], grad) for out in (rows, reference))
    for a, b in zip(ours, embedding_bags):
        torch.testing.assert_close(a, b)
