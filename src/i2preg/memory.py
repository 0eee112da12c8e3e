"""Freed memory kept for reuse: glibc's malloc set so that PyTorch's large CPU tensors do not go back to the system.

PyTorch allocates its CPU tensors with the C library's malloc, and a forward pass of the model allocates and frees
several hundred MB of tensors of a few MB to a few tens of MB each. glibc serves the largest of them with their own
``mmap`` and returns them on free, and trims the top of its heap once more than 128 KB lies free there; either way
the next batch touches fresh pages, and the kernel faults in and zeroes every one (on 2 cores 150,000-190,000 page
faults a batch of 8, 0.3-0.4 s in the kernel against 1.9 s in PyTorch). With both thresholds at ``KEEP_BYTES`` the
freed memory is reused instead: the bundled model's inference 1.18 times and its stage-2 training step 1.12 times
faster, for a process whose resident memory no longer shrinks after its peak (BENCHMARKS.md, Speed). ``import
i2preg`` applies it on Linux with glibc unless the environment sets ``I2PREG_KEEP_FREED_MEMORY=0``; elsewhere nothing
changes. ``release_freed_memory`` hands what is kept back to the system, e.g. before measuring a block's peak memory.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameters (malloc.h)."""

KEEP_BYTES = 1 << 30
"""Free memory kept at the top of the heap before it is trimmed, and the smallest request served by its own mmap."""


def keep_freed_memory() -> bool:
    """Set glibc's trim and mmap thresholds to ``KEEP_BYTES`` (module docstring); True if it did, False on other
    platforms, C libraries without ``mallopt``, or with ``I2PREG_KEEP_FREED_MEMORY=0`` in the environment."""
    mallopt = _malloc_function("mallopt", [ctypes.c_int, ctypes.c_int])
    if mallopt is None or os.environ.get("I2PREG_KEEP_FREED_MEMORY", "1") == "0":
        return False
    return mallopt(M_MMAP_THRESHOLD, KEEP_BYTES) == 1 and mallopt(M_TRIM_THRESHOLD, KEEP_BYTES) == 1


def release_freed_memory() -> bool:
    """Return the free memory malloc keeps to the system (glibc's ``malloc_trim(0)``); True if any was returned, False
    also where there is no glibc."""
    trim = _malloc_function("malloc_trim", [ctypes.c_size_t])
    return trim is not None and trim(0) == 1


def _malloc_function(name: str, argtypes: list):
    """The C library's function ``name`` (returning int) on Linux, None elsewhere or where it has none."""
    if not sys.platform.startswith("linux"):
        return None
    function = getattr(ctypes.CDLL(None), name, None)  # the process's C library
    if function is not None:
        function.argtypes, function.restype = argtypes, ctypes.c_int
    return function
