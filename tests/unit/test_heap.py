"""The allocator setting of `heap.settle`: large blocks freed are given back to the system."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Frees one 8 MiB block (glibc then raises its mmap threshold to 8 MiB), then makes 40 blocks of
# 3 MiB, each followed by a small block that stays, frees the 40 and prints how many MiB of
# resident memory they left behind.
_PROBE = """
import sys
from lineage_guard import heap

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

if sys.argv[1] == "settled":
    heap.fix_mmap_threshold()
big = bytes(8 << 20)
del big
before = rss_mib()
blocks, pins = [], []
for _ in range(40):
    blocks.append(b"x" * (3 << 20))
    pins.append(bytearray(64 << 10))
blocks.clear()
print(rss_mib() - before)
"""


def _left_behind(mode: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True
    )
    return float(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_large_blocks_freed_leave_the_process_once_settled() -> None:
    # Without the setting, glibc keeps the 120 MiB freed (the behaviour the setting is for).
    assert _left_behind("default") > 100
    # With it, every 3 MiB block was mapped on its own and returned when freed.
    assert _left_behind("settled") < 10
