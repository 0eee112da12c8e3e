"""The one exception type for bad user input (always one line that names the file and the problem), and the checks
of the paths a user gives that raise it."""

from __future__ import annotations

import os
from pathlib import Path


class InputError(ValueError):
    """Bad input data. ``str(err)`` is ``"<path>: <problem>"`` (or just the problem without a path)."""

    def __init__(self, problem: str, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        self.problem = " ".join(str(problem).split())
        super().__init__(self.problem if self.path is None else f"{self.path}: {self.problem}")


def require_file(path: str | os.PathLike, what: str = "") -> Path:
    """``path`` as a Path if it is a file; else ``InputError`` "no such file" or "is a folder, not a file", with
    ``what`` (e.g. "a nuScenes table") in brackets after it."""
    path = Path(path)
    if not path.is_file():
        problem = "is a folder, not a file" if path.is_dir() else "no such file"
        raise InputError(f"{problem} ({what})" if what else problem, path)
    return path


def require_folder(path: str | os.PathLike) -> Path:
    """``path`` as a Path if it is a folder; else ``InputError`` "no such folder" or "is a file, not a folder"."""
    path = Path(path)
    if not path.is_dir():
        raise InputError("is a file, not a folder" if path.exists() else "no such folder", path)
    return path


def require_output_folder(path: str | os.PathLike) -> Path:
    """``path`` as a Path if it is a folder or can be made one (it and every missing parent would be created
    under an existing folder); else ``InputError``. Checked before any work, so that a run does not fail only at
    its end, when it writes."""
    path = Path(path)
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                where = "exists and is not a folder" if folder == path else f"{folder} is a file, not a folder"
                raise InputError(f"cannot write here: {where}", path)
            if not os.access(folder, os.W_OK | os.X_OK):
                raise InputError(f"cannot write here: {folder} is not writable", path)
            break
    return path
