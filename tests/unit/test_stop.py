"""Each run has its own stop: two runs in one process never share one flag, and a stop
reaches the worker processes that carry it."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import threading
import time

from lineage_guard.stop import RunStop, new_stop, stop_on_signals


def _requested_in_child(run_stop: RunStop, answer: multiprocessing.SimpleQueue) -> None:
    answer.put(run_stop.requested())


def test_two_runs_in_one_process_stop_apart() -> None:
    with new_stop() as first, new_stop() as second:
        assert not first.requested() and not second.requested()
        first.request("SIGTERM")
        assert first.requested() and first.by == "SIGTERM" and first.since is not None
        assert not second.requested() and second.by is None and second.since is None
    assert not RunStop().requested()  # no path: never stops
    RunStop().request()  # asking it is harmless
    assert not RunStop().requested()


def test_a_stop_reaches_another_process_through_its_file() -> None:
    with new_stop() as run_stop:
        carried = pickle.loads(pickle.dumps(run_stop))
        context = multiprocessing.get_context("spawn")
        for asked in (False, True):
            if asked:
                run_stop.request("SIGTERM")
            answer = context.SimpleQueue()
            child = context.Process(target=_requested_in_child, args=(carried, answer))
            child.start()
            child.join(60)
            assert answer.get() is asked
    assert not os.path.exists(run_stop.path or "")  # its folder is gone with the run


def test_a_signal_asks_the_innermost_run_to_stop() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals() as outer, stop_on_signals() as inner:
        os.kill(os.getpid(), signal.SIGTERM)
        assert inner.by == "SIGTERM"
        assert outer.by is None
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is given back


def test_after_a_stop_the_launcher_waits_for_the_deliveries_in_hand() -> None:
    """The streaming job's cancel returns while a worker thread still delivers a batch (seen
    in the endless guard: a batch flushed after the cancel, while the counts were being
    read). `wait_written` waits for it; a delivery that starts after the stop delivers
    nothing."""
    with new_stop() as run_stop:
        inside, release, done = threading.Event(), threading.Event(), []

        def deliver() -> None:
            with run_stop.writing() as go:
                assert go
                inside.set()
                release.wait(30)
                done.append(time.monotonic())

        worker = threading.Thread(target=deliver)
        worker.start()
        assert inside.wait(30)
        run_stop.request("SIGTERM")
        assert not run_stop.wait_written(0.2)  # still delivering
        threading.Timer(0.3, release.set).start()
        assert run_stop.wait_written(30)
        assert len(done) == 1 and done[0] <= time.monotonic()
        worker.join(30)
        with run_stop.writing() as go:
            assert not go  # after the stop: deliver nothing more
        assert run_stop.wait_written(0)
    with RunStop().writing() as go:
        assert go
    assert RunStop().wait_written(0)
