"""What each of the guard's stages costs per record, on the throughput benchmark's messages.

    python bench/stage_costs.py                  # 100,000 messages, µs per record per stage
    python bench/stage_costs.py --records 20000 --json
    python bench/stage_costs.py --pg-store "postgresql://…?options=-csearch_path%3Dbench"

The stages are the functions the pipeline's stages call (`lineage_guard.stages`), timed one
after the other on each 2000-message batch in this one process, lineage in a fresh SQLite
store: items built from the messages, the parent index's head read, decode, validate, enforce,
hops, the store's append and its confirm. Then the same on the columnar chain
(`lineage_guard.guard_chain`, `columnar: …`): the Arrow batch, decode (the Rust reader),
validate, enforce, the hop rows, append (leaves, root and rows from the hop rows) and confirm.
Beside them: fastavro's `schemaless_reader` alone on the same messages (the decode floor) and
the hop rows' bare `executemany` into the store's table with and without their record keys
in the first level of its key index (the insert floor). Every figure is this process's CPU
time (`time.process_time`), so a busy shared machine disturbs it less than the wall clock;
waiting for the disk (SQLite's fsync at each commit) is not in it.
"""

from __future__ import annotations

import argparse
import io
import json
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # tests.reference_chain

from throughput import read_messages, write_messages


def measure(path: Path, batch_size: int, workdir: Path) -> dict[str, float]:
    import fastavro

    from lineage_guard.contract.policies import parse_policy
    from lineage_guard.contract.schemas import load_schema
    from lineage_guard.contract.validate import SuiteValidator
    from lineage_guard.io.decode import Decoder, known_fingerprints
    from lineage_guard.items import Batch, Item, Source
    from lineage_guard.lineage.store import open_store
    from lineage_guard.lineage.stores import sqlite as sqlite_store
    from lineage_guard.lineage.stores.sql import hop_row
    from lineage_guard.stages import index_keys
    from tests import reference_chain as stages  # the per-record reference

    decoder, validator = Decoder(), SuiteValidator()
    policies = [parse_policy("production")]
    store = open_store(f"sqlite:///{workdir / 'stages.db'}")
    spent: Counter[str] = Counter()
    rows: list[tuple[Any, ...]] = []
    count = 0

    def lap(name: str, started: float) -> float:
        now = time.process_time()
        spent[name] += now - started
        return now

    for messages in read_messages(path, batch_size):
        t = time.process_time()
        items = tuple(
            Item(source=Source(topic="bench", partition=0, offset=count + i, key=k, value=v))
            for i, (k, v) in enumerate(messages)
        )
        batch = Batch(topic="bench", partition=0, items=items)
        t = lap("items", t)
        index_keys(stages.class_index(batch, decoder))
        t = lap("parent index (head)", t)
        batch = stages.decode(batch, decoder)
        t = lap("decode", t)
        batch = stages.validate(batch, validator)
        t = lap("validate", t)
        batch = stages.enforce(batch, policies)
        t = lap("enforce", t)
        hops = stages.lineage_hops(
            batch, pipeline="bench", run_id="stages", allowed_to="out", quarantined_to="q"
        )
        t = lap("hops", t)
        entry = store.append(hops)
        t = lap("append", t)
        store.confirm([(entry, len(items), [])], at=hops.at)
        lap("confirm", t)
        rows.extend(hop_row(count // batch_size, i, hop) for i, hop in enumerate(hops.hops))
        count += len(items)
    store.close()
    per_record = {name: seconds / count * 1e6 for name, seconds in spent.items()}
    per_record["total"] = sum(spent.values()) / count * 1e6
    per_record.update(measure_columnar(path, batch_size, workdir))

    schemas = {fp: fastavro.parse_schema(load_schema(n)) for fp, n in known_fingerprints().items()}
    started = time.process_time()
    for messages in read_messages(path, batch_size):
        for _key, value in messages:
            stream = io.BytesIO(value)
            stream.seek(10)
            fastavro.schemaless_reader(stream, schemas[value[2:10]], None)
    per_record["floor: fastavro alone"] = (time.process_time() - started) / count * 1e6

    for indexed in (True, False):
        db = workdir / f"rows-{indexed}.db"
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(sqlite_store._SCHEMA + sqlite_store._KEYS_SCHEMA)
        started = time.process_time()
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(sqlite_store.INSERT_HOP, chunk)
            if indexed:
                conn.executemany(
                    f"INSERT INTO {sqlite_store.KEY_LEVELS[0]} VALUES (?, ?, ?)",
                    [(sqlite_store.record_key(r[2]), r[0], r[1]) for r in chunk if r[2]],
                )
            conn.execute("COMMIT")
        label = "with" if indexed else "without"
        per_record[f"floor: SQLite rows {label} record keys"] = (
            (time.process_time() - started) / len(rows) * 1e6
        )
        conn.close()
    return per_record


def measure_columnar(
    path: Path,
    batch_size: int,
    workdir: Path,
    store_url: str | None = None,
    label: str = "columnar",
) -> dict[str, float]:
    """The same stages on the columnar chain (`guard_chain`, one Arrow batch per 2000
    messages), lineage in another fresh SQLite store, or in `store_url` (this process's CPU
    only: a PostgreSQL server's work is not in it)."""
    from lineage_guard import arrow_batch, guard_chain
    from lineage_guard.contract.policies import parse_policy
    from lineage_guard.contract.validate import SuiteValidator
    from lineage_guard.io.decode import Decoder
    from lineage_guard.lineage.store import open_store

    decoder, validator = Decoder(), SuiteValidator()
    policies = [parse_policy("production")]
    store = open_store(store_url or f"sqlite:///{workdir / 'columnar.db'}")
    spent: Counter[str] = Counter()
    count = 0

    def lap(name: str, started: float) -> float:
        now = time.process_time()
        spent[f"{label}: {name}"] += now - started
        return now

    for messages in read_messages(path, batch_size):
        t = time.process_time()
        offsets = range(count, count + len(messages))
        gb = arrow_batch.from_messages(
            "bench", 0, offsets, [v for _, v in messages], keys=[k for k, _ in messages]
        )
        t = lap("batch", t)
        gb = guard_chain.decode(gb, decoder)
        t = lap("decode", t)
        gb = guard_chain.validate(gb, validator)
        t = lap("validate", t)
        gb = guard_chain.enforce(gb, policies)
        t = lap("enforce", t)
        rows = guard_chain.hop_rows(gb)
        t = lap("hop rows", t)
        hops = guard_chain.hop_batch(
            gb, pipeline="bench", run_id="columnar", allowed_to="out", quarantined_to="q", rows=rows
        )
        entry = store.append(hops)  # leaves, root, rows: from the hop rows' columns
        t = lap("append", t)
        store.confirm([(entry, len(gb), [])], at=hops.at)
        lap("confirm", t)
        count += len(gb)
    store.close()
    per_record = {name: seconds / count * 1e6 for name, seconds in spent.items()}
    per_record[f"{label}: total"] = sum(spent.values()) / count * 1e6
    return per_record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--pg-store",
        help="also the columnar chain with lineage in this PostgreSQL store URL (an empty"
        " schema of its own, e.g. `postgresql://…?options=-csearch_path%%3Dbench`)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lineage-guard-stages-") as folder:
        workdir = Path(folder)
        messages = workdir / "messages.bin"
        write_messages(messages, args.records)
        result = measure(messages, args.batch_size, workdir)
        if args.pg_store:
            result.update(
                measure_columnar(
                    messages, args.batch_size, workdir, args.pg_store, "columnar, PostgreSQL"
                )
            )
    if args.json:
        print(json.dumps({"records": args.records, "us_per_record": result}, indent=2))
        return
    print(f"µs per record, {args.records} records, batches of {args.batch_size}:")
    for name, micros in result.items():
        print(f"  {name:44s} {micros:8.2f}")


if __name__ == "__main__":
    main()
