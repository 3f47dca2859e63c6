"""The garbage collector's and the allocator's settings for a guard process, applied just before
its pipeline runs.

CPython's cyclic collector runs a young collection every 700 new container objects and, now
and then, a full one over every object the process holds. A guard process holds a large,
long-lived heap (Beam, Great Expectations, pandas, the compiled contract: some 200,000
objects) and creates several objects per record, so full collections kept rescanning that heap:
measured on 300,000 records, 41 full collections took 4.6 s of about 15 s of CPU.

`settle()` moves everything alive at that moment into the permanent generation (`gc.freeze`),
which no collection scans again, and lets the young generation grow to 10,000 objects before it
is collected. Reference counting still frees every acyclic object at once; only cyclic garbage
waits a little longer.

It also fixes glibc's mmap threshold at 1 MiB. glibc raises that threshold (128 KiB at first) to
the size of each large block freed (up to 32 MiB); blocks below it then come from the heap, and
a freed block in the middle of the heap stays in the process's memory. A guard frees large
blocks all the time: a micro-batch's message bytes, and Beam's copies of the parent-index side
input at the start of each pass. Measured on 1,000,000 records (one partition, SQLite): the
resident memory stayed at about 380 MiB through the second pass, 350 MiB with the threshold
fixed, 310 MiB with the index left out. Blocks above the threshold are mapped and returned
when freed. At glibc's 128 KiB every micro-batch's buffers were mapped and faulted in again:
the run took 1.1 s more system CPU (4.0 against 2.9 s); at 1 MiB, 0.1 to 0.2 s more, and the
same peak within 3 MiB (364 to 367 against 363 to 364 MiB; 389 to 390 without the setting).

The command-line runs call it (`guard.run_once`, the endless job, the
in-process runner's worker processes); a library user's own pipeline keeps its settings.
"""

from __future__ import annotations

import ctypes
import gc
import sys

YOUNG_THRESHOLD = 10_000  # CPython's default is 700
M_MMAP_THRESHOLD = -3  # glibc's `mallopt` parameter
MMAP_THRESHOLD = 1024 * 1024  # fixed (see the module); glibc's starts at 128 KiB


def settle() -> None:
    """Freezes the heap built so far and makes young collections rarer (see the module)."""
    gc.collect()  # what is garbage now is not frozen with the rest
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
    fix_mmap_threshold()


def fix_mmap_threshold() -> None:
    """Fixes glibc's mmap threshold at `MMAP_THRESHOLD` (see the module); elsewhere, nothing."""
    if not sys.platform.startswith("linux"):
        return
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:  # glibc (musl's `mallopt` does nothing)
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
