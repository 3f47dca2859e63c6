"""`web.gateway._Grouped`, the thread that runs the requests' items in groups: every request
gets an answer, whatever its group's function does."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from lineage_guard.web.gateway import _Grouped, _passes


def test_items_waiting_while_a_group_runs_go_together_in_order() -> None:
    release, groups = threading.Event(), []

    def run_group(items: list[int]) -> list[int | BaseException]:
        groups.append(items)
        release.wait(10)
        return [i * 10 for i in items]

    grouped: _Grouped[int, int] = _Grouped(run_group, name="t", max_size=100)
    with ThreadPoolExecutor(6) as pool:
        first = pool.submit(grouped.run, 0)
        _until(lambda: bool(groups))
        rest = [pool.submit(grouped.run, i) for i in range(1, 6)]
        _until(lambda: len(grouped._waiting) == 5)
        release.set()
        assert [f.result(10) for f in [first, *rest]] == [0, 10, 20, 30, 40, 50]
    assert groups == [[0], [1, 2, 3, 4, 5]]
    grouped.close()


def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "not within 10 s"
        time.sleep(0.001)


def test_a_group_that_fails_or_answers_wrongly_fails_its_items_and_the_next_is_served() -> None:
    """A function that raises, or answers a group with the wrong number of results, fails
    that group's requests only; the thread goes on (before, a wrong count ended the thread
    and every later request waited for ever)."""
    calls = []

    def run_group(items: list[str]) -> list[str | BaseException]:
        calls.append(items)
        if items == ["raise"]:
            raise ValueError("broken")
        if items == ["short"]:
            return []
        return [item.upper() for item in items]

    grouped: _Grouped[str, str] = _Grouped(run_group, name="t", max_size=1)
    answers = [_answer(grouped, item) for item in ("raise", "short", "next")]
    assert [type(a).__name__ for a in answers] == ["ValueError", "RuntimeError", "str"]
    assert [str(a) for a in answers] == ["broken", "0 answers to 1 items", "NEXT"]
    grouped.close()
    assert calls == [["raise"], ["short"], ["next"]]


def _answer(grouped: _Grouped[str, str], item: str) -> str | BaseException:
    """`grouped.run(item)`'s result or exception, from a thread of its own, given 10 s."""
    out: list[str | BaseException] = []

    def run() -> None:
        try:
            out.append(grouped.run(item))
        except Exception as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)
    assert out, f"no answer to {item!r} after 10 s"
    return out[0]


def test_the_requests_taken_are_judged_in_passes_of_at_most_10000_records() -> None:
    """The chain's thread takes the waiting requests by their bodies' bytes (4 MiB), then
    judges their batches in passes of at most `JUDGED_RECORDS` records (a request's batch is
    never cut): compressed container bodies hold many records in few bytes."""
    assert _passes([10_000, 1, 9_999, 5_000, 20_000, 1], 10_000) == [
        (0, 1),
        (1, 3),
        (3, 4),
        (4, 5),
        (5, 6),
    ]
    assert _passes([1, 1, 1], 2) == [(0, 2), (2, 3)]
    assert _passes([], 5) == []
