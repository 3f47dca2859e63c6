"""The native extension's allocator (mimalloc, `native/Cargo.toml`) when the extension is
loaded by a thread that then ends: a gateway server's thread when another server follows it
in the same process (as in the tests), a Beam worker's bundle thread.

With mimalloc 3.3 (the crate's default) the next thread's first allocation in the extension
(`mi_thread_init`) segfaulted, every time: a gateway test pair crashed pytest on an admit
after the server that had first decoded a body was gone. Each case runs in a child process,
so a crash fails the test instead of ending the test run."""

from __future__ import annotations

import textwrap

import pytest

from lineage_guard.lineage import hashes
from tests.child import run_scenario

needs_native = pytest.mark.skipif(
    hashes.native() is None, reason="the native extension is not built"
)

SCENARIO = textwrap.dedent(
    """
    import threading

    import pyarrow as pa

    values = pa.array([b"abc", None, b"x" * 100], pa.binary())


    def first():  # the extension is loaded here, in a thread that then ends
        from lineage_guard.lineage.hashes import native, sha256_hex_each

        assert native() is not None
        sha256_hex_each(values)


    def hash_in_a_new_thread():
        from lineage_guard.lineage.hashes import sha256_hex_each

        out = []
        thread = threading.Thread(target=lambda: out.append(sha256_hex_each(values)))
        thread.start()
        thread.join()
        assert len(out) == 1 and len(out[0]) == 3


    thread = threading.Thread(target=first)
    thread.start()
    thread.join()
    for _ in range(3):
        hash_in_a_new_thread()
    print("hashed")
    """
)


@needs_native
def test_threads_after_the_loading_thread_ended_can_allocate() -> None:
    done = run_scenario(SCENARIO, timeout=120)
    assert (done.returncode, done.stdout.strip()) == (0, "hashed"), done.stderr[-3000:]
