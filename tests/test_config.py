"""Config files and command-line overrides: YAML values as a user writes them."""

from __future__ import annotations

import pytest
import yaml

from i2preg.config import load_config, load_yaml, parse_override
from i2preg.errors import InputError


def test_scientific_notation_is_a_float_in_overrides_and_files(tmp_path):
    """PyYAML's safe loader reads ``5e-4`` as a string (YAML 1.1); Adam then fails deep inside torch."""
    assert yaml.safe_load("5e-4") == "5e-4"
    assert parse_override("train.lr=5e-4") == {"train": {"lr": 0.0005}}
    assert load_yaml("[1e3, -2E-2, 1.5e+1, 3, 0.5, 5e, e5, '1e-4']") == [1000.0, -0.02, 15.0, 3, 0.5, "5e", "e5", "1e-4"]
    path = tmp_path / "mine.yaml"
    path.write_text("base: synthetic-small\ntrain: {lr: 2e-4}\n")
    cfg = load_config(path)
    assert cfg["train"]["lr"] == pytest.approx(2e-4) and cfg["train"]["batch_size"] == 8


def test_bad_override_is_a_one_line_error():
    with pytest.raises(InputError, match="section.key=value"):
        parse_override("train.lr")
