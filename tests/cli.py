"""Runs `lineage-guard` as users and CI do: a separate process, exit code and streams kept."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_cli(*args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from lineage_guard.cli.main import main; main()", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
