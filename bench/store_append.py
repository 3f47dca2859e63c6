"""What one micro-batch's append costs as a lineage store grows, with random record ids.

    python bench/store_append.py sqlite:///bench/out/append.db URL2 …   # each to 10,000,000 hops
    python bench/store_append.py URL --hops 1000000 --report-at 100000 500000 1000000
    python bench/store_append.py postgresql://postgres@127.0.0.1:15432/lineage_guard

Each store must be empty (a new SQLite file; a PostgreSQL database without lineage). Appends
hops the way the columnar chain hands them to a store (`HopBatch` with its rows as columns,
`LineageStore.append` then `confirm`, BATCH hops per call) with random UUIDv4 record ids, as
CRM records carry (a time-ordered id would keep an index's inserts at its right edge; random
ids spread them over the whole index, which is what outgrows a cache). At each size of
`--report-at` it prints, for the hops appended since the previous size: the append + confirm
cost per hop, this process's CPU time and the wall clock (which includes SQLite's fsync at each
commit, and PostgreSQL's own work); then the store's bytes per hop (every lineage table and
index: SQLite's pages, PostgreSQL's relation sizes) and the p95 of `lineage trace` (the
`queries.trace` the command runs, batch verification on) over TRACES ids drawn from all
written so far. The last line per store compares the last size's CPU with the first's.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from lineage_guard.lineage import queries
from lineage_guard.lineage.hops import HopBatch, HopRows
from lineage_guard.lineage.store import LineageStore, open_store

BASE = datetime(2026, 11, 1, tzinfo=UTC)
SIZES = (100_000, 1_000_000, 2_000_000, 5_000_000, 10_000_000)
KEEP_EVERY = 997  # one id in this many is kept to trace later


def rows(rng: random.Random, first_offset: int, count: int) -> HopRows:
    ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(count)]
    quarantined = {i for i in range(count) if rng.random() < 0.07}
    return HopRows(
        {
            "record_id": ids,
            "source_offset": list(range(first_offset, first_offset + count)),
            "outcome": ["quarantined" if i in quarantined else "delivered" for i in range(count)],
            "stopped_at": ["validate" if i in quarantined else None for i in range(count)],
            "reasons": [
                (("generator_required", f"Record `{ids[i]}`: no generator."),)
                if i in quarantined
                else ()
                for i in range(count)
            ],
            "content_class": [rng.choice(("HUMAN", "AI_ASSISTED", "SYNTHETIC")) for _ in ids],
            "origin_env": ["PRODUCTION"] * count,
            "tenant_id": ["acme"] * count,
            "source_system": ["salesforce-sync"] * count,
            "generator": [None] * count,
            "parent_record_ids": [()] * count,
            "digest": [f"{rng.getrandbits(256):064x}" for _ in ids],
        }
    )


def stored_bytes(url: str) -> int:
    """The store's size: SQLite's pages in use (the WAL's included), or PostgreSQL's lineage
    tables with their indexes and TOAST."""
    if url.startswith("sqlite:"):
        path = Path(url.removeprefix("sqlite:///"))
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            pages, free, size = (
                conn.execute(f"PRAGMA {name}").fetchone()[0]
                for name in ("page_count", "freelist_count", "page_size")
            )
        finally:
            conn.close()
        return int((pages - free) * size)
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c"
            " WHERE c.relkind = 'r' AND c.relname LIKE 'lineage\\_%'"
            " AND c.relnamespace = to_regnamespace(current_schema())"
        ).fetchone()
    return int(row[0]) if row is not None and row[0] is not None else 0


def trace_p95(store: LineageStore, ids: list[str], rng: random.Random, count: int) -> float:
    """The p95 of `queries.trace` in milliseconds over `count` of `ids`."""
    times = []
    for record_id in rng.sample(ids, min(count, len(ids))):
        start = time.perf_counter()
        found = queries.trace(store, record_id)
        times.append(time.perf_counter() - start)
        assert found.events, f"no events for `{record_id}`"
    times.sort()
    return times[max(0, -(-len(times) * 95 // 100) - 1)] * 1e3


def fill(url: str, args: argparse.Namespace) -> None:
    store = open_store(url)
    if store.heads():
        sys.exit(f"store_append: `{url}` already holds lineage: give it an empty store.")
    rng = random.Random(17)
    sizes = sorted({s for s in args.report_at if s <= args.hops} | {args.hops})
    kept: list[str] = []
    done, since, cpu, wall, first = 0, 0, 0.0, 0.0, None
    print(f"\n{store.url}", flush=True)
    print(
        "hops stored  append+confirm CPU µs/hop  wall µs/hop  bytes/hop  trace p95 ms",
        flush=True,
    )
    for size in sizes:
        while done < size:
            table = rows(rng, done, min(args.batch, size - done))
            kept.extend(table.columns["record_id"][::KEEP_EVERY])
            batch = HopBatch(
                pipeline="bench-append",
                run_id="append",
                at=BASE + timedelta(milliseconds=done),
                source_topic="crm.contacts",
                source_partition=0,
                allowed_to="out",
                quarantined_to="dlq",
                rows=table,
            )
            c, w = time.process_time(), time.perf_counter()
            entry = store.append(batch)
            store.confirm([(entry, len(table), [])], at=batch.at)
            cpu += time.process_time() - c
            wall += time.perf_counter() - w
            done += len(table)
        n = done - since
        figures = (cpu / n * 1e6, wall / n * 1e6)
        first = first or figures
        p95 = trace_p95(store, kept, rng, args.traces)
        print(
            f"{done:11,d}  {figures[0]:24.2f}  {figures[1]:11.2f}"
            f"  {stored_bytes(url) / done:9.1f}  {p95:12.1f}",
            flush=True,
        )
        since, cpu, wall = done, 0.0, 0.0
    store.close()
    if first is not None:
        print(
            f"last size / first: CPU {figures[0] / first[0]:.2f}, wall {figures[1] / first[1]:.2f}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("urls", nargs="+", metavar="url")
    parser.add_argument("--hops", type=int, default=10_000_000)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--report-at", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--traces", type=int, default=100)
    args = parser.parse_args()
    for url in args.urls:
        fill(url, args)


if __name__ == "__main__":
    main()
