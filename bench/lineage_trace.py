"""Fill a lineage store with realistic events, then measure `trace` latency.

    python bench/lineage_trace.py sqlite:///bench/out/lineage-10m.db
    python bench/lineage_trace.py postgresql://postgres@127.0.0.1:15432/lineage_guard
    python bench/lineage_trace.py URL --events 1000000 --samples 500

The fill writes N events (default 10,000,000): N/5 records, each passing the guard's five
stages, spread over RUNS x PARTITIONS chains (`run/crm.contacts/partition`), appended through
`LineageStore.append` in batches of BATCH events (one micro-batch of one partition each).
About 10% of the records derive from an earlier record (`parent_record_ids`). The fill is
deterministic and resumable: a store that already holds N events is not filled again, one
that holds a whole number of batches is topped up.

Then it times `store.trace(record_id)` for SAMPLES random record ids (after a warm-up of
WARMUP others) and prints p50 / p95 / max in milliseconds, plus the ancestry-following audit
trace (`lineage.queries.trace` without chain walks) and one full chain verification.
Progress goes to stderr, figures to stdout.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from lineage_guard.lineage import queries
from lineage_guard.lineage.events import Decision, LineageEvent, Reason, Stage
from lineage_guard.lineage.store import LineageStore, open_store

TOPIC = "crm.contacts"
BASE = datetime(2026, 11, 1, tzinfo=UTC)
TENANTS = ("acme", "globex", "initech", "umbrella")
SOURCES = ("salesforce-sync", "hubspot-sync", "outreach-assistant", "profile-faker")


def record_id(k: int) -> str:
    """A UUID-shaped id, unique per record number `k` (< 2**32)."""
    return f"{k:08x}-7c1e-4a2b-9d3f-{(k * 2654435761) % 16**12:012x}"


def batch_events(
    batch: int, *, batches: int, args: argparse.Namespace
) -> tuple[str, list[LineageEvent]]:
    """Batch number `batch` of `batches`: its chain id and its events (5 per record).

    Runs follow each other in time; within a run, batches go round the partitions.
    """
    records_per_batch = args.batch // 5
    run_id = f"run-{min(args.runs - 1, batch * args.runs // batches):02d}"
    partition = batch % args.partitions
    chain_id = f"{run_id}/{TOPIC}/{partition}"
    rng = random.Random(batch)
    events: list[LineageEvent] = []
    first = batch * records_per_batch
    for k in range(first, first + records_per_batch):
        rid = record_id(k)
        roll = rng.random()
        content_class = "HUMAN" if roll < 0.5 else "AI_ASSISTED" if roll < 0.8 else "SYNTHETIC"
        origin = rng.choices(("PRODUCTION", "STAGING", "TEST"), (90, 3, 7))[0]
        at = BASE + timedelta(milliseconds=k * 10)
        common: dict[str, Any] = {
            "record_id": rid,
            "pipeline": "crm-guard",
            "run_id": run_id,
            "content_class": content_class,
            "origin_env": origin,
            "tenant_id": TENANTS[k % len(TENANTS)],
            "source_system": SOURCES[k % len(SOURCES)],
            "generator": None if content_class == "HUMAN" else "email-assistant/gpt-4o@2024-08-06",
            "parent_record_ids": (record_id(rng.randrange(k)),) if k and rng.random() < 0.1 else (),
            "source_topic": TOPIC,
            "source_partition": partition,
            "source_offset": k // args.partitions,
        }
        quarantine = f"{TOPIC}.quarantine"
        decisions: list[tuple[Decision, tuple[Reason, ...], str | None]]
        if rng.random() < 0.05:  # provenance stripped: quarantined at validate
            why = (Reason(rule="generator_required", message=f"Record `{rid}`: no generator."),)
            decisions = [
                (Decision.QUARANTINED, why, None),
                (Decision.QUARANTINED, why, None),
                (Decision.QUARANTINED, why, quarantine),
            ]
        elif origin != "PRODUCTION":  # a leak attempt: blocked at enforce
            why = (Reason(rule="leak_test_origin", message=f"Record `{rid}` is from `{origin}`."),)
            decisions = [
                (Decision.PASSED, (), None),
                (Decision.BLOCKED, why, None),
                (Decision.QUARANTINED, why, quarantine),
            ]
        else:
            decisions = [
                (Decision.PASSED, (), None),
                (Decision.PASSED, (), None),
                (Decision.DELIVERED, (), f"{TOPIC}.prod"),
            ]
        steps = [(Decision.PASSED, (), None), (Decision.PASSED, (), None), *decisions]
        for step, (stage, (decision, reasons, destination)) in enumerate(
            zip(Stage, steps, strict=True)
        ):
            events.append(
                LineageEvent(
                    **common,
                    stage=stage,
                    at=at + timedelta(milliseconds=step),
                    decision=decision,
                    reasons=reasons,
                    destination=destination,
                )
            )
    return chain_id, events


def count_events(store: LineageStore) -> int:
    """Events recorded, from the chain heads (cheap: no table scan)."""
    total = 0
    for chain_id in store.chains():
        head = store.head(chain_id)
        total += head.seq if head is not None else 0
    return total


def fill(store: LineageStore, args: argparse.Namespace) -> dict[str, float]:
    batch_size = args.batch // 5 * 5
    batches = args.events // batch_size
    have = count_events(store)
    if have >= batches * batch_size:
        log(f"store already holds {have:,} events: no fill")
        return {}
    if have % batch_size:
        sys.exit(f"store holds {have:,} events, not a whole number of {batch_size:,}-event batches")
    start_batch = have // batch_size
    log(
        f"filling {batches * batch_size - have:,} events from batch {start_batch}"
        f" ({batch_size:,} events each)"
    )
    started = time.perf_counter()
    build_s = append_s = 0.0
    for batch in range(start_batch, batches):
        t0 = time.perf_counter()
        chain_id, events = batch_events(batch, batches=batches, args=args)
        t1 = time.perf_counter()
        store.append(events, chain_id=chain_id)
        t2 = time.perf_counter()
        build_s += t1 - t0
        append_s += t2 - t1
        done = (batch + 1 - start_batch) * batch_size
        if (batch + 1) % max(1, 1_000_000 // batch_size) == 0 or batch + 1 == batches:
            rate = done / (time.perf_counter() - started)
            log(f"  {have + done:>12,} / {batches * batch_size:,} events  ({rate:,.0f} events/s)")
    elapsed = time.perf_counter() - started
    written = (batches - start_batch) * batch_size
    return {
        "fill_events": written,
        "fill_seconds": elapsed,
        "fill_events_per_s": written / elapsed,
        "build_seconds": build_s,
        "append_seconds": append_s,
        "append_events_per_s": written / append_s,
    }


def percentiles(samples_ms: list[float]) -> str:
    ordered = sorted(samples_ms)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * len(ordered)) - 1)]
    return (
        f"p50 {statistics.median(ordered):.2f} ms  p95 {p95:.2f} ms  max {ordered[-1]:.2f} ms"
        f"  (n={len(ordered)})"
    )


def sample_ids(rng: random.Random, records: int, count: int) -> Iterator[str]:
    for _ in range(count):
        yield record_id(rng.randrange(records))


def measure(store: LineageStore, args: argparse.Namespace) -> None:
    records = args.events // 5
    rng = random.Random(args.seed)
    for rid in sample_ids(rng, records, args.warmup):
        store.trace(rid)

    store_ms = []
    for rid in sample_ids(rng, records, args.samples):
        t0 = time.perf_counter()
        found = store.trace(rid)
        store_ms.append((time.perf_counter() - t0) * 1000)
        if len(found) != 5:
            sys.exit(f"trace({rid}) returned {len(found)} events, expected 5")

    audit_ms = []
    ancestors = 0
    for rid in sample_ids(rng, records, args.samples):
        t0 = time.perf_counter()
        result = queries.trace(store, rid, verify_chains=False)
        audit_ms.append((time.perf_counter() - t0) * 1000)
        ancestors += len({t.stored.event.record_id for t in result.events}) - 1

    chain_id = next(iter(store.chains()))
    t0 = time.perf_counter()
    verification = store.verify(chain_id)
    verify_s = time.perf_counter() - t0
    if not verification.ok:
        sys.exit(f"chain {chain_id} is broken: {verification.broken}")

    print(f"store              {store.url}")
    print(f"events             {count_events(store):,} ({records:,} records x 5 stages)")
    print(f"store.trace        {percentiles(store_ms)}")
    print(
        f"queries.trace      {percentiles(audit_ms)}  (with ancestors: {ancestors} found,"
        " chains not walked)"
    )
    print(
        f"verify one chain   {verification.events:,} events in {verify_s:.2f} s"
        f" ({verification.events / verify_s:,.0f} events/s)"
    )


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="lineage store URL: sqlite:///path or postgresql://…")
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--batch", type=int, default=50_000, help="events per append")
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    with open_store(args.url) as store:
        figures = fill(store, args)
        if figures:
            print(
                f"fill               {figures['fill_events']:,} events in"
                f" {figures['fill_seconds']:.0f} s ({figures['fill_events_per_s']:,.0f} events/s;"
                f" append alone {figures['append_events_per_s']:,.0f} events/s,"
                f" building events {figures['build_seconds']:.0f} s)"
            )
        measure(store, args)


if __name__ == "__main__":
    main()
