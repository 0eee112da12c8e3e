"""i2preg keeps freed memory for reuse on Linux (memory.keep_freed_memory): tensors allocated where a larger one
was freed touch no fresh pages; memory.release_freed_memory hands that memory back."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")

ROUNDS = """
import resource, torch
import i2preg
faults = []
for mib in (64, 32, 16):  # 32 MiB and 16 MiB: 8,192 and 4,096 pages of 4 KiB
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tensor = torch.empty(mib << 20, dtype=torch.uint8).fill_(1)
    del tensor
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[1:]))
"""


def faults_of_tensors_allocated_after_a_larger_one(keep: str) -> int:
    env = {**os.environ, "I2PREG_KEEP_FREED_MEMORY": keep}
    return int(subprocess.run([sys.executable, "-c", ROUNDS], env=env, capture_output=True, text=True,
                              check=True).stdout)


def test_freed_memory_is_reused_without_page_faults_and_the_setting_can_be_turned_off():
    assert faults_of_tensors_allocated_after_a_larger_one("1") < 1_000
    assert faults_of_tensors_allocated_after_a_larger_one("0") > 10_000


RELEASE = """
import torch
from i2preg.compare import PeakMemory
from i2preg.memory import release_freed_memory

tensor = torch.empty(256 << 20, dtype=torch.uint8).fill_(1)
del tensor
kept = PeakMemory.resident_bytes()
release_freed_memory()
print((kept - PeakMemory.resident_bytes()) / 2**20)
"""


def test_the_kept_memory_is_handed_back_on_request():
    returned_mib = float(subprocess.run([sys.executable, "-c", RELEASE], capture_output=True, text=True,
                                        check=True).stdout)
    assert returned_mib > 200
