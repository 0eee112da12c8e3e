"""Fixtures shared by several test files."""

from pathlib import Path

import pytest

from i2preg.data.synthetic import generate_dataset


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """Sequence 00 of the synthetic world seed 3, two frames (four test pairs: two colour cameras), in the
    KITTI layout; written once per session, read only."""
    return generate_dataset(tmp_path_factory.mktemp("synthetic-seed3"), sequences=[0], frames=2, seed=3, progress=False)
