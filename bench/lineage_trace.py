"""Fill a lineage store with realistic hops, then time `trace` and one batch's verification.

    python bench/lineage_trace.py sqlite:///bench/out/lineage-10m.db
    python bench/lineage_trace.py postgresql://postgres@127.0.0.1:15432/lineage_guard
    python bench/lineage_trace.py URL --hops 1000000 --samples 500 --verify-all

The fill writes N hops (default 10,000,000: one guard pass each, so N records) the way a guard
does: through `LineageStore.append`, one micro-batch of BATCH hops (default 2000) per call,
each followed by its delivery entry (`LineageStore.confirm`). Batches go round PARTITIONS
source partitions of one guard, so the store holds PARTITIONS chains that continue over RUNS
runs. About 90% of the records are delivered, 5% quarantined at validate (stripped provenance)
and 5% blocked at enforce (TEST/STAGING origin); about 10% derive from an earlier record
(`parent_record_ids`), so their trace follows an ancestor into another batch. Record ids are
time-ordered, UUIDv7-like. The fill is deterministic and resumable: a store that already holds
N hops is not filled again; one that holds a whole prefix of the batches is topped up.

Then it times, over SAMPLES random record ids after WARMUP others:

- `queries.trace(store, id)`: what `lineage trace` runs, with batch verification on (each
  batch the record and its ancestors are in is checked against its Merkle root and its link);
- `store.verify_batches(chain, [seq])` of one random batch (what each trace does per batch);

and prints p50 / p95 / max in milliseconds, of the wall clock and of this process's CPU time
(which a busy shared machine disturbs less; PostgreSQL's own CPU is not in it), the store's
size per record (SQLite: the file with its WAL after a checkpoint; PostgreSQL:
`pg_total_relation_size` of the lineage tables), and, with `--verify-all`, the time of
`lineage verify` over the whole store. Progress goes to
stderr, figures to stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sqlite3
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from lineage_guard.lineage import queries
from lineage_guard.lineage.events import Reason, Stage
from lineage_guard.lineage.hops import Hop, HopBatch, Outcome
from lineage_guard.lineage.store import LineageStore, open_store

PIPELINE = "crm-guard"
TOPIC = "crm.contacts"
BASE = datetime(2026, 11, 1, tzinfo=UTC)
TENANTS = ("acme", "globex", "initech", "umbrella")
SOURCES = ("salesforce-sync", "hubspot-sync", "outreach-assistant", "profile-faker")
TABLES = ("lineage_hops", "lineage_entries", "lineage_chains", "lineage_checkpoints")
GENERATOR = "email-assistant/gpt-4o@2024-08-06"


def record_id(k: int) -> str:
    """A UUID-shaped, time-ordered id, unique per record number `k` (< 2**32)."""
    return f"{k:08x}-7c1e-7a2b-9d3f-{(k * 2654435761) % 16**12:012x}"


def chain_of(batch: int, args: argparse.Namespace) -> str:
    return f"{PIPELINE}/{TOPIC}/{batch % args.partitions}"


def make_batch(batch: int, *, batches: int, args: argparse.Namespace) -> HopBatch:
    """Batch number `batch` of `batches`: records `batch * BATCH …`, on partition
    `batch % PARTITIONS`. Runs follow each other in time."""
    run_id = f"run-{min(args.runs - 1, batch * args.runs // batches):02d}"
    partition = batch % args.partitions
    rng = random.Random(batch)
    first = batch * args.batch
    hops = []
    for k in range(first, first + args.batch):
        rid = record_id(k)
        roll = rng.random()
        content_class = "HUMAN" if roll < 0.5 else "AI_ASSISTED" if roll < 0.8 else "SYNTHETIC"
        roll = rng.random()
        origin = "PRODUCTION" if roll < 0.95 else "STAGING" if roll < 0.97 else "TEST"
        outcome, stopped_at, reasons = Outcome.DELIVERED, None, ()
        if rng.random() < 0.05:  # provenance stripped: quarantined at validate
            outcome, stopped_at = Outcome.QUARANTINED, Stage.VALIDATE
            reasons = (Reason(rule="generator_required", message=f"Record `{rid}`: no generator."),)
        elif origin != "PRODUCTION":  # a leak attempt: blocked at enforce
            outcome, stopped_at = Outcome.BLOCKED, Stage.ENFORCE
            reasons = (
                Reason(rule="leak_test_origin", message=f"Record `{rid}` is from `{origin}`."),
            )
        hops.append(
            Hop(
                record_id=rid,
                source_offset=k // args.partitions,
                outcome=outcome,
                stopped_at=stopped_at,
                reasons=reasons,
                content_class=content_class,
                origin_env=origin,
                tenant_id=TENANTS[k % len(TENANTS)],
                source_system=SOURCES[k % len(SOURCES)],
                generator=None if content_class == "HUMAN" else GENERATOR,
                parent_record_ids=(record_id(rng.randrange(k)),)
                if k and rng.random() < 0.1
                else (),
                digest=hashlib.sha256(k.to_bytes(8, "big")).hexdigest(),
            )
        )
    return HopBatch(
        pipeline=PIPELINE,
        run_id=run_id,
        at=BASE + timedelta(milliseconds=first * 10),
        source_topic=TOPIC,
        source_partition=partition,
        allowed_to=f"{TOPIC}.prod",
        quarantined_to=f"{TOPIC}.quarantine",
        hops=tuple(hops),
    )


def batches_written(store: LineageStore, args: argparse.Namespace) -> int:
    """Batches already in the store, from the chain heads (each batch: a hops entry and its
    delivery entry); exits if they are not a prefix of this fill."""
    per_chain = {head.chain_id: head.seq for head in store.heads()}
    done = sum(seq // 2 for seq in per_chain.values())
    for partition in range(args.partitions):
        expected = len(range(partition, done, args.partitions)) * 2
        if per_chain.get(f"{PIPELINE}/{TOPIC}/{partition}", 0) != expected:
            sys.exit(f"{store.url} holds other lineage than this fill's first {done} batches")
    return done


def fill(store: LineageStore, args: argparse.Namespace) -> dict[str, float]:
    batches = args.hops // args.batch
    have = batches_written(store, args)
    if have >= batches:
        log(f"store already holds {have * args.batch:,} hops: no fill")
        return {}
    log(f"filling {(batches - have) * args.batch:,} hops from batch {have} ({args.batch:,} each)")
    started = time.perf_counter()
    build_s = append_s = 0.0
    every = max(1, 1_000_000 // args.batch)
    for batch in range(have, batches):
        t0 = time.perf_counter()
        hops = make_batch(batch, batches=batches, args=args)
        t1 = time.perf_counter()
        entry = store.append(hops)
        store.confirm([(entry, len(hops.hops), [])], at=hops.at + timedelta(milliseconds=50))
        t2 = time.perf_counter()
        build_s += t1 - t0
        append_s += t2 - t1
        if (batch + 1) % every == 0 or batch + 1 == batches:
            done = (batch + 1 - have) * args.batch
            rate = done / (time.perf_counter() - started)
            log(
                f"  {(batch + 1) * args.batch:>12,} / {batches * args.batch:,} hops ({rate:,.0f}/s)"
            )
    written = (batches - have) * args.batch
    return {
        "hops": written,
        "seconds": time.perf_counter() - started,
        "build_seconds": build_s,
        "append_seconds": append_s,
    }


def store_bytes(url: str) -> int:
    if url.startswith("sqlite:"):
        path = Path(url.removeprefix("sqlite:///"))
        conn = sqlite3.connect(path)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
        return sum(f.stat().st_size for f in (path, Path(f"{path}-wal")) if f.exists())
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = current_schema() AND c.relname = ANY(%s)",
            (list(TABLES),),
        ).fetchone()
    return int(row[0] or 0) if row else 0


def percentiles(samples_ms: list[float]) -> str:
    ordered = sorted(samples_ms)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * len(ordered)) - 1)]
    return (
        f"p50 {statistics.median(ordered):6.2f} ms  p95 {p95:6.2f} ms  max {ordered[-1]:7.2f} ms"
        f"  (n={len(ordered)})"
    )


def measure(store: LineageStore, args: argparse.Namespace) -> None:
    batches = args.hops // args.batch
    records = batches * args.batch
    rng = random.Random(args.seed)
    for _ in range(args.warmup):
        queries.trace(store, record_id(rng.randrange(records)))

    trace_ms: list[float] = []
    trace_cpu: list[float] = []
    ancestors = batches_checked = 0
    for _ in range(args.samples):
        rid = record_id(rng.randrange(records))
        t0, c0 = time.perf_counter(), time.process_time()
        result = queries.trace(store, rid, verify_chains=True)
        trace_ms.append((time.perf_counter() - t0) * 1000)
        trace_cpu.append((time.process_time() - c0) * 1000)
        if not result.found or not result.intact:
            sys.exit(f"trace({rid}): found={result.found} intact={result.intact}")
        if any(chain.status != "ok" for chain in result.chains):
            sys.exit(f"trace({rid}) left a batch unverified: {result.chains}")
        ancestors += len({t.stored.event.record_id for t in result.events}) - 1
        batches_checked += len(result.chains)

    verify_ms: list[float] = []
    verify_cpu: list[float] = []
    for _ in range(args.samples):
        batch = rng.randrange(batches)
        chain_id, seq = chain_of(batch, args), batch // args.partitions * 2 + 1
        t0, c0 = time.perf_counter(), time.process_time()
        found = store.verify_batches(chain_id, [seq])
        verify_ms.append((time.perf_counter() - t0) * 1000)
        verify_cpu.append((time.process_time() - c0) * 1000)
        if found != {seq: None}:
            sys.exit(f"chain {chain_id} batch {seq} does not verify: {found}")

    size = store_bytes(args.url)
    print(f"store                 {store.url}")
    print(f"hops                  {records:,} ({records:,} records, {batches:,} batches of"
          f" {args.batch:,}, {args.partitions} chains)")  # fmt: skip
    print(f"size                  {size:,} bytes, {size / records:.0f} bytes per record")
    print(f"lineage trace         {percentiles(trace_ms)}  (batch verification on;"
          f" {ancestors} ancestors, {batches_checked} batches checked)")  # fmt: skip
    print(f"  its CPU time        {percentiles(trace_cpu)}")
    print(f"verify one batch      {percentiles(verify_ms)}  ({args.batch:,} hops each)")
    print(f"  its CPU time        {percentiles(verify_cpu)}")
    if args.verify_all:
        t0 = time.perf_counter()
        verification = queries.verify(store)
        seconds = time.perf_counter() - t0
        if not verification.ok:
            sys.exit(f"lineage verify: {verification.broken}")
        print(
            f"lineage verify (all)  {verification.hops:,} hops in {verification.batches:,}"
            f" entries, {seconds:.1f} s ({verification.hops / seconds:,.0f} hops/s): ok"
        )


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="lineage store URL: sqlite:///path or postgresql://…")
    parser.add_argument("--hops", type=int, default=10_000_000)
    parser.add_argument("--batch", type=int, default=2000, help="hops per append")
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--verify-all", action="store_true", help="also time `lineage verify`")
    parser.add_argument("--no-measure", action="store_true", help="fill only")
    args = parser.parse_args()
    with open_store(args.url) as store:
        figures = fill(store, args)
        if figures:
            print(
                f"fill                  {figures['hops']:,} hops in {figures['seconds']:.0f} s"
                f" ({figures['hops'] / figures['seconds']:,.0f} hops/s; append + confirm"
                f" {figures['hops'] / figures['append_seconds']:,.0f} hops/s,"
                f" building hops {figures['build_seconds']:.0f} s)"
            )
        if not args.no_measure:
            measure(store, args)


if __name__ == "__main__":
    main()
