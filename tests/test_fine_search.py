"""The fine search (``model.fine``): its pose offsets, its loss, what it learns, and how stage 2 trains it."""

from __future__ import annotations

import math

import pytest
import torch

from i2preg.assembly import full_config
from i2preg.config import load_config
from i2preg.errors import InputError
from i2preg.evaluate import evaluated_poses
from i2preg.geometry import frustum_params_to_pose, pose_to_frustum_params, transform_points
from i2preg.inference import infer
from i2preg.losses import fine_search_loss
from i2preg.model.fine_search import FineSearch, apply_offsets, offsets_to
from i2preg.model.icl import ICL
from i2preg.model.pose_search import RESIDUAL_BLOCK_ROWS, vector_yaws, yaw_vectors
from i2preg.train import icl_stage
from test_model import synthetic_batch

CONF = {**ICL.default_conf["fine"], "num_points": 48, "dim": 16}
H, W = 32, 64
K = torch.tensor([[[32.0, 0.0, 31.5], [0.0, 32.0, 15.5], [0.0, 0.0, 1.0]]])


def test_offsets_are_metres_along_the_cameras_axes_and_invert():
    """A camera looking along the cloud's +x (yaw -90 deg: d = (1, 0)) has its right along the cloud's -z: an offset
    of 1 m right and 2 m forward moves its centre by (+2, -1) in (x, z); offsets_to gives the offsets back."""
    centre, rotation = torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0]])
    moved, turned = apply_offsets(centre, rotation, torch.tensor([[1.0, 2.0, 0.1]]))
    torch.testing.assert_close(moved, torch.tensor([[5.0, 3.0]]))
    in_camera = transform_points(frustum_params_to_pose(centre, rotation)[0], torch.tensor([[5.0, 0.0, 3.0]]))
    torch.testing.assert_close(in_camera, torch.tensor([[1.0, 0.0, 2.0]]))  # the camera's x right, z forward
    torch.testing.assert_close(vector_yaws(turned) - vector_yaws(rotation), torch.tensor([0.1]))
    generator = torch.Generator().manual_seed(0)
    centres, yaws = torch.randn(5, 2, generator=generator) * 10, torch.rand(5, generator=generator) * 2 * math.pi
    offsets = torch.randn(5, 3, generator=generator) * torch.tensor([1.0, 1.0, 0.5])
    back = offsets_to(centres, yaw_vectors(yaws), *apply_offsets(centres, yaw_vectors(yaws), offsets))
    torch.testing.assert_close(back, offsets, atol=1e-5, rtol=0)


def test_loss_is_least_for_logits_that_peak_on_the_true_offset():
    search = FineSearch(8, 8, CONF)
    centre, rotation = torch.tensor([[1.0, -2.0]]), yaw_vectors(torch.tensor([0.3]))
    true_cell = 7
    T_gt = frustum_params_to_pose(*apply_offsets(centre, rotation, search.grid[true_cell][None]))
    centres, rotations = centre[:, None], rotation[:, None]  # one grid (I = 1)

    def loss(cell: int) -> float:
        logits = torch.zeros(1, 1, len(search.grid))
        logits[0, 0, cell] = 10.0
        return float(fine_search_loss(logits, centres, rotations, search.grid, search.steps, T_gt, torch.ones(1)))

    assert loss(true_cell) < min(loss(cell) for cell in range(len(search.grid)) if cell != true_cell)
    assert float(fine_search_loss(torch.zeros(1, 1, len(search.grid)), centres, rotations, search.grid, search.steps,
                                  T_gt, torch.zeros(1))) == 0.0  # no valid pair: no loss


def test_fine_search_learns_to_move_a_pose_onto_the_true_one():
    """Points in front of the true camera, whose image shows each point's feature where the true pose projects it:
    trained on poses a few grid steps off, the search moves held-out starting poses closer to the true one."""
    generator = torch.Generator().manual_seed(0)
    true_centre, true_rotation = torch.tensor([[0.0, 0.0]]), yaw_vectors(torch.tensor([0.0]))
    xyz = torch.rand(1, 200, 3, generator=generator) * torch.tensor([16.0, 2.0, 12.0]) + torch.tensor([-8.0, -1.0, 4.0])
    feats = torch.randn(1, 200, 8, generator=generator)
    uv = (xyz[..., :2] / xyz[..., 2:]) * 32 + torch.tensor([31.5, 15.5])
    image = torch.zeros(1, 8, H, W)
    cells = uv.round().long().clamp(torch.tensor(0), torch.tensor([W - 1, H - 1]))[0]
    image[0, :, cells[:, 1], cells[:, 0]] = feats[0].T
    search = FineSearch(8, 8, {**CONF, "train_jitter": (0.0, 0.0), "iterations": 1})
    T_gt = frustum_params_to_pose(true_centre, true_rotation)
    starts = torch.randn(40, 3, generator=generator) * torch.tensor([0.3, 0.15, math.radians(0.6)])
    optimizer = torch.optim.Adam(search.parameters(), lr=3e-2)

    def run(offsets):
        centre, rotation = apply_offsets(true_centre.expand(len(offsets), -1), true_rotation.expand(len(offsets), -1), offsets)
        B = len(offsets)
        return search(image.expand(B, -1, -1, -1), feats.expand(B, -1, -1), xyz.expand(B, -1, -1),
                      xyz[..., 1].expand(B, -1), centre, rotation, K.expand(B, -1, -1), (H, W))

    losses = []
    for _ in range(60):
        out = run(starts[:32])
        loss = fine_search_loss(out["fine_logits"], out["fine_grid_centres"], out["fine_grid_rotations"], out["fine_grid"],
                                out["fine_steps"], T_gt.expand(32, -1, -1), torch.ones(32))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(len(search.grid)), abs=0.05) and losses[-1] < losses[0] - 0.5
    search.eval()
    with torch.no_grad():
        out = run(starts[32:])
    left = offsets_to(true_centre, true_rotation, out["fine_centre"], out["fine_rotation"])
    in_steps = (left.abs() / search.steps).sum(-1).mean(), (starts[32:].abs() / search.steps).sum(-1).mean()
    assert in_steps[0] < 0.7 * in_steps[1]


def test_stage_two_with_frozen_modules_trains_the_fine_search_alone():
    """train.frozen keeps the named modules as init_weights has them: with the image decoder, ICLM and PRM frozen,
    a stage-2 step moves the fine search and nothing else; a frozen name that is no stage-2 module is an error."""
    cfg = full_config(load_config("tiny", {"model": {"fine": {"num_points": 64}},
                                           "train": {"frozen": ["image_decoder", "iclm", "prm"]}}))
    torch.manual_seed(0)
    module = icl_stage(cfg, stage=2)
    assert {name.split(".")[0] for name, p in module.model.named_parameters() if p.requires_grad} == {"fine"}
    batch = synthetic_batch(2, conf=cfg["model"], image_size=tuple(cfg["data"]["crop"]), num_points=cfg["data"]["num_points"])
    batch["T_gt"] = module.model.eval()(batch)["frustum_pose"].detach()  # a right frustum pose: the loss counts
    before = {name: p.detach().clone() for name, p in module.model.named_parameters()}
    optimizer = module.configure_optimizers()["optimizer"]
    losses = module.losses(module.model.train()(batch), batch)
    assert float(losses["fine"].detach()) > 0
    losses["total"].backward()
    optimizer.step()
    moved = {name.split(".")[0] for name, p in module.model.named_parameters() if not torch.equal(p, before[name])}
    assert moved == {"fine"}
    for name in ("gpdm", "nothing"):
        with pytest.raises(InputError, match="train.frozen"):
            icl_stage(deep_frozen(cfg, name), stage=2)


def deep_frozen(cfg: dict, name: str) -> dict:
    return {**cfg, "train": {**cfg["train"], "frozen": [name]}}


def test_fine_pose_is_a_pose_of_the_grids_span():
    """The refined pose stays within the grid's reach of the pose it starts from, iteration by iteration."""
    cfg = full_config(load_config("tiny", {"model": {"fine": {"num_points": 64}}}))
    model = ICL(cfg["model"]).eval()
    batch = synthetic_batch(2, conf=cfg["model"], image_size=tuple(cfg["data"]["crop"]), num_points=cfg["data"]["num_points"])
    with torch.no_grad():
        out = model(batch)
    start = pose_to_frustum_params(out["frustum_pose"])
    moved = offsets_to(*start, *pose_to_frustum_params(out["fine_pose"]))
    reach = model.fine.grid.abs().amax(0) * model.fine.iterations + model.fine.wide_grid.abs().amax(0)
    assert (moved.abs() <= reach + 1e-5).all()


def test_wide_grid_brings_a_far_yaw_within_reach_and_its_penalty_holds_the_pose_on_a_flat_score():
    """A score that peaks on the true pose: from 6 deg of yaw off, beyond the fine grid's reach, the wide grid
    brings the pose within 1 deg and the fine grid on; without the wide grid (radii [0, 0]) the pose stays 4.8 deg
    off. A flat score leaves the pose where it started (the penalty is symmetric about it)."""
    generator = torch.Generator().manual_seed(0)
    xyz = torch.rand(1, 200, 3, generator=generator) * torch.tensor([16.0, 2.0, 12.0]) + torch.tensor([-8.0, -1.0, 4.0])
    true_centre, true_rotation = torch.tensor([[0.0, 0.0]]), yaw_vectors(torch.tensor([0.0]))
    start = apply_offsets(true_centre, true_rotation, torch.tensor([[0.2, 0.0, math.radians(6.0)]]))

    def peaked(image, points, xyz, heights, centres, rotations, K, image_size):
        off = offsets_to(centres, rotations, true_centre[:, None], true_rotation[:, None])
        return -4 * ((off[..., 0] / 0.3) ** 2 + (off[..., 2] / math.radians(1.5)) ** 2)

    def flat(image, points, xyz, heights, centres, rotations, K, image_size):
        return centres.new_zeros(centres.shape[:2])

    def yaw_left(radii, score):
        search = FineSearch(8, 8, {**CONF, "iterations": 1, "wide_radii": radii}).eval()
        search.hypothesis_logits = score
        with torch.no_grad():
            out = search(torch.zeros(1, 8, H, W), torch.zeros(1, 200, 8), xyz, xyz[..., 1], *start, K, (H, W))
        return offsets_to(true_centre, true_rotation, out["fine_centre"], out["fine_rotation"])[0]

    assert math.degrees(yaw_left([2, 6], peaked)[2].abs()) < 0.5
    assert math.degrees(yaw_left([0, 0], peaked)[2].abs()) == pytest.approx(4.8, abs=0.01)
    torch.testing.assert_close(yaw_left([2, 6], flat), offsets_to(true_centre, true_rotation, *start)[0])


def test_solver_fine_returns_the_fine_pose_and_needs_weights_with_it():
    cfg = full_config(load_config("tiny", {"model": {"fine": {"num_points": 64}}}))
    batch = synthetic_batch(2, conf=cfg["model"], image_size=tuple(cfg["data"]["crop"]), num_points=cfg["data"]["num_points"])
    torch.manual_seed(0)
    model = ICL(cfg["model"])
    result = infer(model, batch, solver="fine")
    torch.testing.assert_close(result.pose, result.out["fine_pose"])
    assert {name for name, _, _ in evaluated_poses(model)} == {"final", "frustum", "fine"}
    plain = ICL(full_config(load_config("tiny"))["model"])
    assert {name for name, _, _ in evaluated_poses(plain)} == {"final", "frustum"}
    with pytest.raises(InputError, match="solver fine needs weights trained with the fine search"):
        infer(plain, batch, solver="fine")


def test_residual_layers_start_as_the_plain_score_and_then_learn():
    """model.fine.residual_layers: zero-initialised, so weights without them load into the same scores (a warm
    start), while their last layers still get gradients."""
    generator = torch.Generator().manual_seed(1)
    xyz = torch.rand(2, 60, 3, generator=generator) * torch.tensor([8.0, 2.0, 8.0]) + torch.tensor([-4.0, -1.0, 3.0])
    feats, image = torch.randn(2, 60, 8, generator=generator), torch.randn(2, 8, H, W, generator=generator)
    centre, rotation = torch.zeros(2, 2), yaw_vectors(torch.tensor([0.0, 0.05]))
    plain = FineSearch(8, 8, {**CONF, "iterations": 1}).eval()
    deeper = FineSearch(8, 8, {**CONF, "iterations": 1, "residual_layers": 2}).eval()
    missing = deeper.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(key.startswith("residuals.") for key in missing)
    args = image, feats, xyz, xyz[..., 1], centre, rotation, K.expand(2, -1, -1), (H, W)
    expected, out = plain(*args), deeper(*args)
    torch.testing.assert_close(out["fine_logits"], expected["fine_logits"], rtol=0, atol=0)
    out["fine_logits"].square().sum().backward()
    assert all(residual[-1].weight.grad.abs().sum() > 0 for residual in deeper.residuals)


def test_residual_layers_give_the_same_scores_and_gradients_in_blocks():
    """HypothesisScorer.deepen runs its residual layers on blocks of rows: values and gradients are those of the whole
    rows at once (HypothesisScorer.residual_rows, as in the exported graph), up to float rounding, across block
    edges; without gradients, in place, the same values bit for bit."""
    torch.manual_seed(0)
    scorer = FineSearch(8, 8, {**CONF, "residual_layers": 2})
    for residual in scorer.residuals:  # trained-like weights instead of the zero-initialised last layer
        torch.nn.init.normal_(residual[-1].weight, std=0.2)
    rows = torch.randn(2 * RESIDUAL_BLOCK_ROWS + 123, CONF["dim"]).relu().requires_grad_()
    whole, blocks = scorer.residual_rows(rows), scorer.deepen(rows)
    assert (whole - rows).abs().max() > 0.1  # the layers change the rows
    torch.testing.assert_close(blocks, whole, rtol=1e-6, atol=1e-6)
    wrt = (rows, *scorer.residuals.parameters())
    whole_grads = torch.autograd.grad(whole.square().sum(), wrt)
    block_grads = torch.autograd.grad(blocks.square().sum(), wrt)
    assert len(wrt) == 9 and all(grad.abs().max() > 0 for grad in block_grads)
    torch.testing.assert_close(block_grads[0], whole_grads[0], rtol=1e-5, atol=1e-5)
    for block_grad, whole_grad in zip(block_grads[1:], whole_grads[1:]):
        torch.testing.assert_close(block_grad, whole_grad, rtol=1e-4, atol=1e-3)
    with torch.no_grad():  # inference: written into the rows themselves, bit for bit the values with gradients
        copy = rows.detach().clone()
        in_place = scorer.deepen(copy)
    assert in_place.data_ptr() == copy.data_ptr()
    assert torch.equal(in_place, blocks.detach())
