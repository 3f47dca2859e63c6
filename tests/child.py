"""Runs a test's scenario in a child Python, so a crash (a segfault, an abort) fails the test
instead of ending the test run."""

from __future__ import annotations

import subprocess
import sys


def run_scenario(scenario: str, *, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`scenario` run by `python -X faulthandler -c` (a crash prints every thread's stack)."""
    return subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", scenario],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
