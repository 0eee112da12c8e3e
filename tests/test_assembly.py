"""``assembly``: every section's defaults for a config's method, and the model the config describes."""

from __future__ import annotations

import pytest
import torch

from i2preg.assembly import build_model, full_config
from i2preg.baselines.matching import MatchingNet
from i2preg.config import available_configs, load_config
from i2preg.errors import InputError
from i2preg.model import ICL
from i2preg.train import icl_stage
from test_model import synthetic_batch


@pytest.mark.parametrize("name", available_configs())
def test_every_bundled_config_builds_its_model_and_states_the_input_size_once(name):
    raw = load_config(name)
    assert "image_size" not in raw.get("model", {}) and "num_points" not in raw.get("model", {})
    cfg = full_config(raw)
    assert full_config(cfg) == cfg  # a run's config.yaml and a weights header resolve to themselves
    model = build_model(cfg)
    assert isinstance(model, MatchingNet if raw.get("method") == "matching" else ICL)
    if isinstance(model, ICL):  # every bundled ICL config is 3 DoF: the pose search is its GPDM head
        assert model.gpdm.search is not None


def test_six_dof_keeps_the_papers_head_and_methods_are_checked():
    model = build_model(full_config(load_config("kitti", {"model": {"dof": 6}})))
    assert model.gpdm.search is None and model.gpdm.rotation_head.out_features == 6
    with pytest.raises(InputError, match="method must be one of icl, matching"):
        full_config({"method": "corri2p"})


def test_paper_size_config_trains_stage_two_on_generated_data():
    """configs/kitti.yaml at the reference code's sizes (encoders, ICLM with 64 queries and 3 iterations, 40,960
    points, batch 2): two stage-2 steps move ICLM and PRM, leave the frozen GPDM as it was, and stay finite."""
    cfg = full_config(load_config("kitti"))
    (H, W), N = cfg["data"]["crop"], cfg["data"]["num_points"]
    assert (N, cfg["model"]["image_encoder"]["widths"], cfg["model"]["iclm"]["num_iterations"]) == (40960, [128, 256, 512], 3)
    batch = synthetic_batch(2, conf=cfg["model"], image_size=(H, W), num_points=N)
    torch.manual_seed(0)
    module = icl_stage(cfg, stage=2)
    before = {name: p.detach().clone() for name, p in module.model.named_parameters()}
    optimizer = module.configure_optimizers()["optimizer"]
    for _ in range(2):
        losses = module.losses(module(batch), batch)
        assert torch.isfinite(losses["total"])
        optimizer.zero_grad()
        losses["total"].backward()
        optimizer.step()
    moved = {name.split(".")[0] for name, p in module.model.named_parameters() if not torch.equal(p, before[name])}
    assert moved == {"image_decoder", "iclm", "prm"}


@pytest.mark.parametrize("config, key, value", [
    ({"train": {"lr": "abc"}}, "train.lr", "abc"),
    ({"model": {"fine": {"num_points": "many"}}}, "model.fine.num_points", "many"),
    ({"method": "matching", "loss": {"temperature": "warm"}}, "loss.temperature", "warm"),
])
def test_text_where_a_number_belongs_is_one_error_naming_the_key(config, key, value):
    """``--set train.lr=abc`` is refused by name when the config is filled in, not as a TypeError in training
    (the baseline's loss against its own defaults); infinities and the text settings (devices: auto) pass."""
    with pytest.raises(InputError, match=f"{key} must be a number, not '{value}'"):
        full_config(config)
    cfg = full_config({"loss": {"corr_cap_px": float("inf")}, "train": {"devices": "auto"}})
    assert cfg["loss"]["corr_cap_px"] == float("inf") and cfg["train"]["devices"] == "auto"


@pytest.mark.parametrize("key", ["train.batch_size", "train.num_workers", "data.num_points"])
def test_counts_below_their_least_are_one_error_naming_the_key(key):
    section, name = key.split(".")
    least = {"batch_size": 1, "num_workers": 0, "num_points": 1}[name]
    assert full_config({section: {name: least}})[section][name] == least
    with pytest.raises(InputError, match=f"{key} must be at least {least}, not {least - 1}"):
        full_config({section: {name: least - 1}})
