"""The console's response times on a large lineage store: overview and trace pages, API trace.

    python bench/console.py sqlite:///bench/out/lineage-10m.db                 # 10,000,000 hops
    python bench/console.py sqlite:///bench/out/console-1m.db --hops 1000000
    python bench/console.py postgresql://postgres@127.0.0.1:15432/lineage_guard --hops 1000000

Fills the store as `bench/lineage_trace.py` does (the same deterministic, resumable fill: one
guard, PARTITIONS chains over RUNS runs, ~5% quarantined, ~5% blocked, ~10% derived records),
(a store without the console's summary, written by an earlier lineage-guard, gets it counted
from its hops when the script opens it: the time to open is printed), adds an auditor, then
calls the console in process (the ASGI app through Starlette's test
client: routing, authentication, the store's queries, templates; no network) and prints
p50 / p95 / max in milliseconds of:

- `GET /` (overview page): the first console's first call (on a store without a kept leak
  count it starts one in the background; the script then waits for it and prints how long
  it took), then SAMPLES first loads (the console's cache emptied before each, as after a
  write: the counts are read again from the store's summary, `lineage_hop_summary`, and the
  last leak count kept), then SAMPLES warm calls (unchanged store: from the cache);
- `GET /trace?record_id=…` (trace page) and `GET /api/v1/records/{id}/trace` (API) for SAMPLES
  random record ids each, with batch verification and the access log's append: first for ids
  whose batches this console has not read yet (each batch read whole: every row against its
  Merkle root), then for the same ids again (their batches proven by the traced hops' blocks,
  `lineage.proofs`). Pages and API get separate ids.

The issue's targets: overview and trace pages p95 < 300 ms, API trace p95 < 50 ms.

Measured (README, Measuring; shared 2-core machine, load 2-5): before the console's summary,
the overview's first load took 3.9 s (SQLite) and 3.4 s (PostgreSQL) at 1M hops, 43.1 s and
34.5 s at 10M (it grouped every hop and counted the leaks); with it, 229 ms and 185 ms at 10M
for the first console's first call (p95 of uncached calls 44.5 and 38.1 ms), the leak count
running in the background (9.5 s and 12.1 s); counting a 10M store's hops into the summary,
once, when this script opened it: 92.6 s and 29.9 s.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from lineage_trace import fill, log, percentiles, record_id

from lineage_guard.lineage.store import open_store
from lineage_guard.web.auth import Role, new_user, utcnow
from lineage_guard.web.console import create_console


def timed(call: object, *args: object) -> float:
    started = time.perf_counter()
    response = call(*args)  # type: ignore[operator]
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        sys.exit(f"{args[0]} answered {response.status_code}: {response.text[:200]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="lineage store URL: sqlite:///path or postgresql://…")
    parser.add_argument("--hops", type=int, default=10_000_000)
    parser.add_argument("--batch", type=int, default=2000, help="hops per append")
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    from fastapi.testclient import TestClient

    started = time.perf_counter()
    store = open_store(args.url)  # counts the hops into the summary once, if it is missing
    opened_s = time.perf_counter() - started
    fill(store, args)
    if store.user("bench") is None:
        store.add_user(new_user("bench", "bench", Role.AUDITOR, None, now=utcnow()))

    app = create_console(store)
    client = TestClient(app, base_url="https://testserver")
    session = app.state.authenticator.sign_in("bench", "bench", client="bench")
    client.cookies.set("lineage_guard_session", session.token)
    records = args.hops // args.batch * args.batch
    rng = random.Random(args.seed)

    kept = store.leak_check()
    log(f"overview, first load ({'a leak count kept' if kept else 'no leak count kept yet'})")
    first = timed(client.get, "/")
    started = time.perf_counter()
    app.state.console.wait_for_leak_check()
    counting_s = time.perf_counter() - started
    counted = store.leak_check()
    log("overview, first loads (the console's cache emptied before each)")
    firsts = []
    for _ in range(args.samples):
        app.state.console._cache.clear()  # as after a write: the summary is read again
        firsts.append(timed(client.get, "/"))
    warm = [timed(client.get, "/") for _ in range(args.samples)]
    ids = [record_id(rng.randrange(records)) for _ in range(2 * args.samples)]
    page_ids, api_ids = ids[: args.samples], ids[args.samples :]
    times: dict[str, list[float]] = {}
    for when in ("batches read whole", "batches proven"):
        log(f"trace pages and API traces, {when}")
        times[f"trace page, {when}"] = [
            timed(client.get, f"/trace?record_id={rid}") for rid in page_ids
        ]
        times[f"API trace, {when}"] = [
            timed(client.get, f"/api/v1/records/{rid}/trace") for rid in api_ids
        ]
    print(f"store {store.url}: {records:,} hops (opened in {opened_s:,.1f} s)")
    print(f"overview page, first load of the first console: {first:,.0f} ms", end="")
    print(" (it started a leak count)" if kept is None else "")
    if counted is not None:
        how = "kept from an earlier run" if kept is not None else "counted in the background"
        print(f"leak count {how}: {counted.leaks:,} leaks in {counted.seconds:,.1f} s"
              f" (waited {counting_s:,.1f} s for it)")  # fmt: skip
    print(f"{'overview page, first load (not cached)':<38} {percentiles(firsts)}")
    print(f"{'overview page, warm (cached)':<38} {percentiles(warm)}")
    for name, samples in times.items():
        print(f"{name:<38} {percentiles(samples)}")
    store.close()


if __name__ == "__main__":
    main()
