"""One clean stop path: SIGTERM or SIGINT sets a flag that the guard's stages check.

No exception is thrown into Beam's code: the read stages stop reading at the next batch, the
write stage delivers nothing it had not started before the signal, the Kafka sink still waits
for what it already produced and commits offsets only behind delivered records, and the run
returns its summary. A second signal stops the process at once (exit 130), as `kill -9`
would: offsets never run ahead of delivered records, so nothing is lost either way.

The flag lives in this process: it stops in-process runners (`FnApiRunner`, the default).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

_requested = threading.Event()
_signal_name: list[str] = []


def stop_requested() -> bool:
    """True once a stop signal arrived: stages check it between batches."""
    return _requested.is_set()


def stopped_by() -> str | None:
    """The name of the signal that asked to stop (`SIGTERM`, `SIGINT`), or None."""
    return _signal_name[0] if _signal_name else None


def wait(seconds: float) -> bool:
    """Sleep up to `seconds`, waking early on a stop signal; True when stopped."""
    return _requested.wait(seconds)


def request_stop(name: str = "request") -> None:
    if not _requested.is_set():
        _signal_name.append(name)
        _requested.set()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _requested.is_set():  # a second signal: stop now
        os.write(sys.stderr.fileno(), b"lineage-guard: second stop signal: exiting at once.\n")
        os._exit(130)
    request_stop(signal.Signals(signum).name)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within this block SIGTERM and SIGINT request a clean stop instead of killing."""
    _requested.clear()  # a new run: an earlier run's stop is not this one's
    _signal_name.clear()
    previous: dict[int, Any] = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.signal(signum, _on_signal)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
