"""README's table of bundled weights matches the files that ship: every file under src/i2preg/weights is listed
with its sha256 and rounded size, so a retrained model cannot land with a stale hash in the README."""

from __future__ import annotations

import re
from pathlib import Path

import i2preg
from i2preg.files import sha256

WEIGHTS_DIR = Path(i2preg.__file__).resolve().parent / "weights"
README = WEIGHTS_DIR.parents[2] / "README.md"


def readme_weights() -> dict[str, tuple[float, str]]:
    """File name -> (size in MB as the README writes it, to one decimal, sha256) from its weights table's rows."""
    rows = re.findall(r"^\| `src/i2preg/weights/([\w.-]+)` \((\d+\.\d) MB\) \|.*\| `([0-9a-f]{64})` \|$", README.read_text(),
                      flags=re.MULTILINE)
    return {name: (float(size), sha) for name, size, sha in rows}


def test_readme_lists_every_bundled_weights_file_with_its_hash_and_size():
    listed = readme_weights()
    shipped = sorted(p.name for p in WEIGHTS_DIR.glob("*.safetensors"))
    assert sorted(listed) == shipped
    for name, (megabytes, sha) in listed.items():
        path = WEIGHTS_DIR / name
        assert sha256(path) == sha, f"README's sha256 of {name} is stale"
        assert round(path.stat().st_size / 1e6, 1) == megabytes, f"README's size of {name} is stale"
