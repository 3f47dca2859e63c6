"""How many times a PostgreSQL client waited for the server: libpq's trace of its connection."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from psycopg import pq


@contextmanager
def server_waits(conn: Any, trace: Path) -> Iterator[list[int]]:
    """Traces `conn` (a psycopg connection) in the block; the list it yields then holds how
    many times the client waited for the server, each wait a turn of the server process: in
    the trace (`trace`), each message sent that the next line shows an answer received after."""
    counted: list[int] = []
    with trace.open("w") as out:
        conn.pgconn.trace(out.fileno())
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            yield counted
        finally:
            conn.pgconn.untrace()
    sides = [line.split("\t")[0] for line in trace.read_text().splitlines()]
    counted.append(sum(1 for a, b in itertools.pairwise(sides) if (a, b) == ("F", "B")))
