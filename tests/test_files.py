"""Atomic writes leave either the new file or the old one, never a partial or a stray temporary file."""

import pytest

from i2preg.files import atomic_path, write_text


def test_write_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "pose.txt"
    write_text(path, "old")
    write_text(path, "new")
    assert path.read_text() == "new"
    assert [p.name for p in path.parent.iterdir()] == ["pose.txt"]


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "weights.safetensors"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as temp:
            assert temp.suffix == ".safetensors" and temp.parent == tmp_path
            temp.write_text("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["weights.safetensors"]
