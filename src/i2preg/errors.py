"""The one exception type for bad user input: always one line that names the file and the problem."""

from __future__ import annotations

import os


class InputError(ValueError):
    """Bad input data. ``str(err)`` is ``"<path>: <problem>"`` (or just the problem without a path)."""

    def __init__(self, problem: str, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        self.problem = " ".join(str(problem).split())
        super().__init__(self.problem if self.path is None else f"{self.path}: {self.problem}")
