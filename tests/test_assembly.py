"""``assembly``: every section's defaults for a config's method, and the model the config describes."""

from __future__ import annotations

import pytest

from i2preg.assembly import build_model, full_config
from i2preg.baselines.matching import MatchingNet
from i2preg.config import available_configs, load_config
from i2preg.errors import InputError
from i2preg.model import ICL


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
