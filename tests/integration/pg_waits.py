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
    many times the client waited for the server, each wait a turn of the server process:
    in the trace (`trace`), each message after which the client reads answers it needs
    before it goes on: a Flush (pipeline mode: a result read, the pipeline's end), a simple
    Query, a CopyDone, or a Sync that no Flush follows (a statement outside a pipeline).
    Counted from what was sent, not from where answers were read (in pipeline mode the
    client reads answers that came early while it sends, as the timing goes)."""
    counted: list[int] = []
    with trace.open("w") as out:
        conn.pgconn.trace(out.fileno())
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            yield counted
        finally:
            conn.pgconn.untrace()
    sent = [
        fields[2].split(" ")[0].strip()
        for fields in (line.split("\t") for line in trace.read_text().splitlines())
        if fields[0] == "F" and len(fields) > 2
    ]
    waits = sum(1 for kind in sent if kind in ("Flush", "Query", "CopyDone"))
    waits += sum(
        1 for kind, after in itertools.pairwise([*sent, ""]) if kind == "Sync" and after != "Flush"
    )
    counted.append(waits)
