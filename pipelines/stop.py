"""One clean stop path: SIGTERM or SIGINT sets a flag that the guard's stages check.

No exception is thrown into Beam's code: the read stages stop reading at the next batch, the
write stage delivers nothing it had not started before the signal, the Kafka sink still waits
for what it already produced and commits offsets only behind delivered records, and the run
returns its summary. A second signal stops the process at once (exit 130), as `kill -9`
would: offsets never run ahead of delivered records, so nothing is lost either way.

The flag lives in this process; worker processes of the in-process runner
(`--direct_running_mode=multi_processing`, which a bounded run over several partitions uses)
see it through a file: `stop_on_signals` names one in `LINEAGE_GUARD_STOP_FILE`, which the
workers inherit, and the signal creates it. Ctrl-C reaches the workers too (one process
group) and ends them at once; SIGTERM to the guard stops them cleanly.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from types import FrameType
from typing import Any

_requested = threading.Event()
_signal_name: list[str] = []
_signal_at: list[datetime] = []


STOP_FILE = "LINEAGE_GUARD_STOP_FILE"


def stop_requested() -> bool:
    """True once a stop signal arrived, here or in the launcher: stages check it between
    batches."""
    if _requested.is_set():
        return True
    path = os.environ.get(STOP_FILE)
    return path is not None and os.path.exists(path)


def stopped_by() -> str | None:
    """The name of the signal that asked to stop (`SIGTERM`, `SIGINT`), or None."""
    return _signal_name[0] if _signal_name else None


def stopped_since() -> datetime | None:
    """When the stop signal arrived (UTC), or None."""
    return _signal_at[0] if _signal_at else None


def wait(seconds: float) -> bool:
    """Sleep up to `seconds`, waking early on a stop signal; True when stopped."""
    return _requested.wait(seconds)


def request_stop(name: str = "request") -> None:
    if not _requested.is_set():
        _signal_name.append(name)
        _signal_at.append(datetime.now(UTC))
        _requested.set()
        path = os.environ.get(STOP_FILE)
        if path is not None:  # for the worker processes
            with contextlib.suppress(OSError):
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _requested.is_set():
        exit_at_once()
    request_stop(signal.Signals(signum).name)


def exit_at_once() -> None:
    """A second stop signal: the process ends now (offsets never run ahead of delivered
    records, so nothing is lost)."""
    os.write(sys.stderr.fileno(), b"lineage-guard: second stop signal: exiting at once.\n")
    os._exit(130)


def reset() -> None:
    """A new run: an earlier run's stop is not this one's."""
    _requested.clear()
    _signal_name.clear()
    _signal_at.clear()


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within this block SIGTERM and SIGINT request a clean stop instead of killing."""
    reset()
    previous: dict[int, Any] = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.signal(signum, _on_signal)
    folder = tempfile.mkdtemp(prefix="lineage-guard-stop-")
    outer = os.environ.get(STOP_FILE)
    os.environ[STOP_FILE] = os.path.join(folder, "stop")
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if outer is None:
            os.environ.pop(STOP_FILE, None)
        else:
            os.environ[STOP_FILE] = outer
        shutil.rmtree(folder, ignore_errors=True)
