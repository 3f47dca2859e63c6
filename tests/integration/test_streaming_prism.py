"""The endless guard's job on Prism leaves the machine's cores to the guard's worker.

Prism 2.77 waits for a bundle's end on the bundle's output and timer streams; for a stage
with neither it waits in a busy loop (`stage.Execute` selects on a closed channel) for as long
as the bundle runs. The write step (`DeliverAndCommit`) writes only to Kafka: every write
bundle kept one core spinning in Prism beside the worker. Drains of 300,000 records took
11-15 CPU seconds of Prism's beside 12-14 of the worker's; with the write step's declared
timer family (`BUNDLE_END`), 2.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

from tests.integration.kafka_helpers import new_topics
from tests.integration.test_streaming_guard import (
    PARTITIONS,
    _delivered,
    _guard,
    _produce,
    _values,
    _wait_for,
    prism,  # noqa: F401  (the fixture)
)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
HELD_S = 6.0  # how long the measured write bundle waits for the lineage store


def _descendants(pid: int) -> dict[int, str]:
    """The processes below `pid`, with their command names."""
    parents: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue  # ended meanwhile
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            parents[int(entry)] = (int(stat[stat.rindex(")") + 2 :].split()[1]), name)
    found: dict[int, str] = {}
    frontier = {pid}
    while frontier:
        frontier = {p for p, (parent, _) in parents.items() if parent in frontier} - found.keys()
        found.update({p: parents[p][1] for p in frontier})
    return found


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds `pid` used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def test_prism_does_not_spin_while_a_write_bundle_waits(
    kafka_bootstrap: str,
    prism: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    src, out, q = new_topics(kafka_bootstrap, "src", "out", "q", partitions=PARTITIONS)
    first, second = _values(30, seed=31), _values(30, seed=32)
    _produce(kafka_bootstrap, src, first)
    guard = _guard(kafka_bootstrap, src, out, q, prism, tmp_path, tmp_path / "guard.log")
    try:
        wanted = {v for _, v in first}
        _wait_for(lambda: wanted <= _delivered(kafka_bootstrap, out, q), 120, "the first records")
        [prism_pid] = [p for p, name in _descendants(guard.pid).items() if name == "prism"]

        # The lineage store's write lock, held: the next write bundle waits inside the worker
        # (SQLite's busy wait, up to 30 s) while Prism waits for that bundle's end.
        store = sqlite3.connect(tmp_path / "lineage.db", isolation_level=None)
        store.execute("BEGIN IMMEDIATE")
        try:
            _produce(kafka_bootstrap, src, second)
            time.sleep(3.0)  # read, checked and handed to the write step, which now waits
            before = _cpu_s(prism_pid)
            time.sleep(HELD_S)
            spent = _cpu_s(prism_pid) - before
            assert not (wanted | {v for _, v in second}) <= _delivered(kafka_bootstrap, out, q), (
                "the second records must still wait for the lineage store"
            )
        finally:
            store.execute("ROLLBACK")
            store.close()
        print(f"Prism CPU while a write bundle waited {HELD_S} s: {spent:.2f} s")
        # Idle, Prism takes ~0.05 CPU s a second (the reader's polls); spinning, a core.
        assert spent < 0.2 * HELD_S, f"Prism used {spent:.2f} CPU s in {HELD_S} s"

        everything = wanted | {v for _, v in second}
        _wait_for(
            lambda: everything <= _delivered(kafka_bootstrap, out, q), 120, "the second records"
        )
        assert guard.poll() is None, "the guard must keep running"
    finally:
        if guard.poll() is None:
            os.killpg(guard.pid, signal.SIGTERM)
            try:
                guard.wait(timeout=60)
            except Exception:
                os.killpg(guard.pid, signal.SIGKILL)
                guard.wait(timeout=30)
