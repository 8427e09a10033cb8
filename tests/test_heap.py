"""heap.keep_batch_buffers: a batch-sized block no longer gets a mapping of its own."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Never loads BPF: the kernel matrix leaves it to the host run.
pytestmark = pytest.mark.host_only

# Counts the mappings a 2 MiB block adds, in a fresh interpreter (glibc's
# thresholds move with what a process allocated before).
NEW_MAPPINGS = """
import sys
from tcpconnect.heap import keep_batch_buffers

def mappings():
    with open("/proc/self/maps") as maps:
        return sum(1 for _ in maps)

if sys.argv[1] == "kept":
    assert keep_batch_buffers()
before = mappings()
block = bytearray(2 << 20)
print(mappings() - before)
"""


def new_mappings(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", NEW_MAPPINGS, mode], capture_output=True,
                          text=True, check=True)
    return int(done.stdout)


def test_a_batch_sized_block_stays_on_the_heap():
    assert new_mappings("default") == 1  # glibc's own threshold: a mapping of its own
    assert new_mappings("kept") == 0
