"""What one micro-batch's append costs as a lineage store grows, with random record ids.

    python bench/store_append.py sqlite:///bench/out/append.db            # to 10,000,000 hops
    python bench/store_append.py URL --hops 1000000 --window 100000
    python bench/store_append.py postgresql://postgres@127.0.0.1:15432/lineage_guard

Appends hops the way the columnar chain hands them to a store (`HopBatch` with its rows as
columns, `LineageStore.append` then `confirm`, BATCH hops per call) with random UUIDv4 record
ids, as CRM records carry (a time-ordered id would keep the `record_id` index's inserts at its
right edge; random ids spread them over the whole index, which is what outgrows a cache). For
each window of WINDOW hops it prints the hops stored so far and the append + confirm cost per
hop: this process's CPU time and the wall clock (which includes SQLite's fsync at each commit,
and PostgreSQL's own work). The last line compares the last window with the first.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

from lineage_guard.lineage.hops import HopBatch, HopRows
from lineage_guard.lineage.store import open_store

BASE = datetime(2026, 11, 1, tzinfo=UTC)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--hops", type=int, default=10_000_000)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--window", type=int, default=500_000)
    args = parser.parse_args()
    store = open_store(args.url)
    rng = random.Random(17)
    done, cpu, wall, first = 0, 0.0, 0.0, None
    print("hops stored  append+confirm CPU µs/hop  wall µs/hop", flush=True)
    while done < args.hops:
        table = rows(rng, done, min(args.batch, args.hops - done))
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
        if done % args.window == 0 or done == args.hops:
            n = args.window if done % args.window == 0 else done % args.window
            figures = (cpu / n * 1e6, wall / n * 1e6)
            first = first or figures
            print(f"{done:11,d}  {figures[0]:24.2f}  {figures[1]:11.2f}", flush=True)
            cpu = wall = 0.0
    store.close()
    if first is not None:
        print(
            f"last window / first: CPU {figures[0] / first[0]:.2f}, "
            f"wall {figures[1] / first[1]:.2f}",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
