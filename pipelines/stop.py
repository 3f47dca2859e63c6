"""One clean stop path: SIGTERM or SIGINT asks the run's stop (`RunStop`), which its stages
check between batches.

No exception is thrown into Beam's code: the read stages stop reading at the next batch, the
write stage delivers nothing it had not started before the signal, the Kafka sink still waits
for what it already produced and commits offsets only behind delivered records, and the run
returns its summary. A second signal stops the process at once (exit 130), as `kill -9`
would: offsets never run ahead of delivered records, so nothing is lost either way.

Each run has its own stop, passed to its stages (no process-wide flag): worker processes of
the in-process runner (`--direct_running_mode=multi_processing`, which a bounded run over
several partitions uses) see it through a file whose path the stop carries, which the signal
creates. Ctrl-C reaches the workers too (one process
group) and ends them at once; SIGTERM to the guard stops them cleanly.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType


@dataclass(frozen=True)
class RunStop:
    """One run's stop signal. Picklable: the stages carry it to every worker, in this process
    or another (`--direct_running_mode=multi_processing`, a bounded run spread over the
    cores), where a stop shows as the file at `path` existing. `RunStop()` (no path) never
    stops: what the library's transforms get unless a caller gives them one. Two runs in one
    process (a test, a server) have two stops, never one flag."""

    path: str | None = None

    def requested(self) -> bool:
        """True once this run was asked to stop: stages check it between batches."""
        if self.path is None:
            return False
        return self.path in _requests or os.path.exists(self.path)

    def request(self, name: str = "request") -> None:
        """Asks this run to stop (`name`: why, e.g. the signal's name)."""
        if self.path is None or self.path in _requests:
            return
        _requests[self.path] = (name, datetime.now(UTC))
        with contextlib.suppress(OSError):  # for the worker processes
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))

    @contextmanager
    def writing(self) -> Iterator[bool]:
        """Around one batch's delivery in a worker: yields False once this run was asked to
        stop (deliver nothing more); until the block ends, `wait_written` waits for it."""
        if self.path is None:
            yield True
            return
        marker = f"{self.path}{_WRITING}{os.getpid()}-{threading.get_ident()}"
        with contextlib.suppress(OSError):
            os.close(os.open(marker, os.O_CREAT | os.O_WRONLY, 0o600))
        try:
            yield not self.requested()  # asked after the marker exists: never missed
        finally:
            with contextlib.suppress(OSError):
                os.unlink(marker)

    def wait_written(self, timeout_s: float) -> bool:
        """After a stop: waits until no worker of this machine is inside `writing()` (the
        streaming job's cancel returns while its workers still deliver, so counting before
        would miss them). False if some still were after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while self.path is not None and glob.glob(glob.escape(self.path) + _WRITING + "*"):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    @property
    def by(self) -> str | None:
        """The name of the signal that asked to stop (`SIGTERM`, `SIGINT`), or None."""
        request = _requests.get(self.path or "")
        return request[0] if request else None

    @property
    def since(self) -> datetime | None:
        """When the stop was asked for (UTC), or None."""
        request = _requests.get(self.path or "")
        return request[1] if request else None


_WRITING = ".writing-"  # `RunStop.writing`'s marker files: the stop's path, this, pid-thread
# Stops asked for in this process, by path: (why, when).
_requests: dict[str, tuple[str, datetime]] = {}
# The runs whose stop a signal asks for (innermost last): signals reach a process, not a run.
_active: list[RunStop] = []


def _on_signal(signum: int, frame: FrameType | None) -> None:
    current = _active[-1]
    if current.by is not None:
        exit_at_once()
    current.request(signal.Signals(signum).name)


def exit_at_once() -> None:
    """A second stop signal: the process ends now (offsets never run ahead of delivered
    records, so nothing is lost)."""
    os.write(sys.stderr.fileno(), b"lineage-guard: second stop signal: exiting at once.\n")
    os._exit(130)


@contextmanager
def new_stop() -> Iterator[RunStop]:
    """A fresh run's stop (its file in a private folder, removed afterwards)."""
    folder = tempfile.mkdtemp(prefix="lineage-guard-stop-")
    run_stop = RunStop(os.path.join(folder, "stop"))
    try:
        yield run_stop
    finally:
        _requests.pop(run_stop.path or "", None)
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def stop_on_signals(
    handler: Callable[[int, FrameType | None], None] = _on_signal,
) -> Iterator[RunStop]:
    """Within this block SIGTERM and SIGINT ask the run's stop (yielded) to stop instead of
    killing the process; a second signal exits at once. `handler`: what a signal does
    instead (it finds the run's stop as `active()`)."""
    with new_stop() as run_stop:
        _active.append(run_stop)
        previous = {n: signal.signal(n, handler) for n in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield run_stop
        finally:
            for number, old in previous.items():
                signal.signal(number, old)
            _active.remove(run_stop)


def active() -> RunStop:
    """The stop of the innermost `stop_on_signals` block (the run a signal is for)."""
    return _active[-1]
