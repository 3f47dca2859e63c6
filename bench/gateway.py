"""The gateway under a real HTTP load generator (wrk), beside a bare endpoint of the same stack.

    python bench/gateway.py                 # SQLite and PostgreSQL, prints the table
    python bench/gateway.py --json --seconds 10
    python bench/gateway.py --stores postgresql   # the bare endpoint and PostgreSQL's case only

In one run, on this machine:

1. a bare FastAPI endpoint on uvicorn (reads the body, answers a constant): the stack's floor;
2. `lineage-guard gateway` (a process of its own), single-record `admit` (one JSON record) at
   200 requests/s, with lineage on SQLite, then on PostgreSQL (`--pg-dsn`, else
   `LINEAGE_GUARD_PG_DSN`, else a server from `infra/postgres/postgres.sh` started for the run);
3. `admit` of 1,000-record bodies (Avro single-object messages), as fast as two connections
   go, against the guard's own records/s on the same records: the columnar chain in this
   process (decode → validate → enforce → hops → append → confirm on SQLite, as
   `bench/throughput.py`'s `core-columnar` times it), once without parents' classes and once
   with them looked up in its lineage store, as the Kafka guard with `--lineage-store` and
   the gateway look them up (`LineageStore.content_classes`). Every body holds the same
   1,000 records, so each store holds more hops of their ids as the run goes on, and the
   lookup costs more: the second ratio compares like with like, the first is the stricter.

wrk offers 200 requests/s by a schedule (`delay()` in its Lua script): each of its 2 threads
keeps a next start time, advanced by an interval drawn uniformly from 0 to 20 ms (mean 10 ms,
`--delay random`, the default) or by exactly 10 ms (`--delay fixed`), and the connection that
was just answered waits until that time. The rate offered is thus 200 requests/s whatever the
answers' latency, as long as one of a thread's 10 connections is free when a request is due
(a connection's wait comes to ~100 ms: up to 10 requests in flight per thread); a request due
while all 10 are busy goes when one is answered, and that wait is not in its latency (wrk
times a request from its sending: no correction for coordinated omission). The rate reached
is printed beside the percentiles. (Before, 10 connections each waited 0-90 ms after their
answer: a closed loop, which offered less as answers got slower: 172-190 requests/s reached.)
The 20 connections start together: the measured run opens with a burst of 20 requests, under
1 % of its ~3,000. Each case first runs `--warmup` seconds (default 3) that are not measured:
the first requests of a fresh server pay its one-time costs (opening the store, the suites'
first run), ~300 ms for the first 10. wrk comes from Debian's packages: the script installs
it with `apt-get` when it is missing.

The gateway judges the requests that wait while the chain runs in one pass of it, on its
chain's thread, and commits the admissions that wait while a transaction commits in the next
one, on its commits' thread (`web/gateway.py`, `_Grouped`). At 200 requests/s most
single-record requests still find no one waiting: the chain's fixed cost (~0.9 ms of CPU for
one record, parse to hop rows, measured alone; its suites make 63 calls into
`pyarrow.compute`, 181 before the compiled suite skipped what cannot fail and ran a few rows'
regexes in Python) is still paid about once per request. The README's Measuring section has
the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RATE = 200  # requests/s offered in the single-record cases
THREADS = 2  # wrk's threads, each offering RATE / THREADS requests/s
CONNECTIONS = 20  # enough that a free one is there when a request is due
sys.path.insert(0, str(ROOT))

LUA = """
local f = io.open(os.getenv("BODY_FILE"), "rb")
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = os.getenv("CONTENT_TYPE")
wrk.headers["Authorization"] = os.getenv("AUTHORIZATION")
-- The rate is held by a schedule per wrk thread: each answer's connection takes the thread's
-- next start time (the last one plus one interval) and waits until then, so the thread
-- offers RATE / threads requests/s whatever the answers' latency (while a connection is free).
local rate = tonumber(os.getenv("RATE") or "0")
local jitter = os.getenv("DELAY_SHAPE") == "random"
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } lg_timespec;
int clock_gettime(int clock, lg_timespec *now);
]]
local clock = ffi.new("lg_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, clock)  -- CLOCK_MONOTONIC
  return tonumber(clock.tv_sec) * 1000 + tonumber(clock.tv_nsec) / 1e6
end
local interval = 1000 * tonumber(os.getenv("THREADS") or "1") / math.max(rate, 1)  -- ms
local threads, next_at = 0, nil
function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end
function init(args)
  math.randomseed(os.time() * 1000 + (id or 0))
end
if rate > 0 then
  function delay()
    next_at = next_at or now_ms()
    -- uniform in [0, 2 x interval]: the same mean, arrivals out of step
    next_at = next_at + (jitter and 2 * interval * math.random() or interval)
    return math.max(0, math.floor(next_at - now_ms() + 0.5))
  end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "seconds": %.3f, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "non_2xx": %d, "socket_errors": %d}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.status, e.connect + e.read + e.write + e.timeout))
end
"""

BARE = """
from fastapi import FastAPI, Request
import uvicorn
app = FastAPI()
@app.post("/bare")
async def bare(request: Request) -> dict:
    await request.body()
    return {"total": 1, "allowed": 1, "rejected": 0, "records": []}
uvicorn.run(app, host="127.0.0.1", port=int(__import__("sys").argv[1]), log_level="warning")
"""


def wrk_path() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("installing wrk from Debian's packages (apt-get) ...", file=sys.stderr)
    subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True, capture_output=True)
    found = shutil.which("wrk")
    assert found, "apt-get installed no `wrk`"
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(
                f"the server ended: {process.stderr.read().decode() if process.stderr else ''}"
            )
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port} after {timeout} s")


@contextlib.contextmanager
def server(command: list[str], port: int, env: dict[str, str] | None = None) -> Iterator[None]:
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    try:
        wait_port(port, process)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def gateway_server(store: str, port: int) -> contextlib.AbstractContextManager[None]:
    command = [
        sys.executable, "-c", "from lineage_guard.cli.main import main; main()",
        "gateway", "--port", str(port), "--lineage-store", store,
        "--max-records", "1000",
    ]  # fmt: skip
    return server(command, port)


def run_wrk(
    url: str, body: Path, content_type: str, auth: str, *, seconds: int, connections: int,
    rate: float, script: Path, shape: str = "fixed", warmup: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """wrk's figures for `seconds` of load offered at `rate` requests/s (0: each connection
    sends again as soon as it is answered), after `warmup` seconds of the same load that are
    not counted."""
    env = {
        **os.environ,
        "BODY_FILE": str(body),
        "CONTENT_TYPE": content_type,
        "AUTHORIZATION": auth,
        "RATE": str(rate),
        "THREADS": str(THREADS),
        "DELAY_SHAPE": shape,
    }

    def command(length: int) -> list[str]:
        return [
            wrk_path(), "-t", str(THREADS), "-c", str(connections), "-d", f"{length}s", "--timeout",
            "10s", "-s", str(script), url,
        ]  # fmt: skip

    if warmup > 0:
        subprocess.run(command(warmup), capture_output=True, env=env, check=True)
    done = subprocess.run(command(seconds), capture_output=True, text=True, env=env, check=True)
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    result["rate"] = result["requests"] / result["seconds"]
    return result


def bodies(workdir: Path) -> tuple[Path, Path, list[bytes]]:
    from lineage_guard.generate import generate
    from lineage_guard.io.decode import encode_single_object
    from lineage_guard.io.file_io import json_line

    one = next(iter(generate(1, seed=3)))
    single = workdir / "one.json"
    single.write_text(json_line(one.record))
    messages = [encode_single_object(g.record, g.schema) for g in generate(1000, seed=4)]
    batch = workdir / "batch.avro"
    batch.write_bytes(b"".join(messages))
    return single, batch, messages


def guard_records_per_s(
    messages: list[bytes], workdir: Path, seconds: float, *, lookup: bool = False
) -> float:
    """The columnar chain in this process on the same 1,000 messages, lineage on SQLite; with
    `lookup`, parents' classes looked up in that store, as the Kafka guard with a lineage
    store (and the gateway) looks them up."""
    from lineage_guard import arrow_batch, guard_chain
    from lineage_guard.contract.policies import parse_policy
    from lineage_guard.contract.validate import SuiteValidator
    from lineage_guard.io.decode import Decoder
    from lineage_guard.lineage.store import open_store

    decoder, validator = Decoder(), SuiteValidator()
    policies = [parse_policy("production")]
    store = open_store(f"sqlite:///{workdir / ('lookup.db' if lookup else 'guard.db')}")
    classes = store.content_classes if lookup else None
    count, started, run = 0, time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        batch = arrow_batch.from_messages("bench", 0, range(len(messages)), messages)
        batch = guard_chain.decode(batch, decoder)
        batch = guard_chain.validate(batch, validator, lookup=classes)
        batch = guard_chain.enforce(batch, policies)
        hops = guard_chain.hop_batch(
            batch, pipeline="bench", run_id=f"r{run}", allowed_to="out", quarantined_to="q"
        )
        entry = store.append(hops)
        store.confirm([(entry, len(messages), [])], at=hops.at)
        count += len(messages)
        run += 1
    elapsed = time.perf_counter() - started
    store.close()
    return count / elapsed


def api_key(store: str) -> str:
    """An API key with both scopes in `store`, made as `lineage-guard keys add` makes one."""
    from lineage_guard.lineage.store import open_store
    from lineage_guard.web.auth import new_api_key, utcnow

    made = new_api_key("bench", ("records:check", "records:admit"), None, now=utcnow())
    with open_store(store) as opened:
        opened.add_api_key(made.record)  # type: ignore[attr-defined]
    return made.key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=15, help="each wrk run's length")
    parser.add_argument("--pg-dsn", default=os.environ.get("LINEAGE_GUARD_PG_DSN"))
    parser.add_argument(
        "--delay",
        choices=["random", "fixed"],
        default="random",
        help="the interval between two starts of a wrk thread: uniform 0-20 ms, or 10 ms",
    )
    parser.add_argument("--warmup", type=int, default=3, help="seconds of load not measured")
    parser.add_argument(
        "--stores",
        choices=["both", "sqlite", "postgresql"],
        default="both",
        help="the lineage stores of the single-record cases; the 1,000-record cases and the"
        " guard's own records/s run with SQLite only",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    wrk_path()
    load_before = os.getloadavg()[0]
    rows: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp,
        contextlib.ExitStack() as services,
    ):
        workdir = Path(tmp)
        script = workdir / "load.lua"
        script.write_text(LUA)
        single, batch, messages = bodies(workdir)
        if not args.pg_dsn and args.stores != "sqlite":
            from tests.integration.services import local_postgres

            args.pg_dsn = services.enter_context(local_postgres())
        rate = {
            "seconds": args.seconds, "connections": CONNECTIONS, "rate": RATE, "script": script,
            "shape": args.delay, "warmup": args.warmup,
        }  # fmt: skip

        port = free_port()
        with server([sys.executable, "-c", BARE, str(port)], port):
            got = run_wrk(f"http://127.0.0.1:{port}/bare", single, "application/json", "", **rate)
        rows.append({"case": "bare endpoint, 1 record", **got})

        stores = {"SQLite": f"sqlite:///{workdir / 'gateway.db'}", "PostgreSQL": args.pg_dsn}
        for name, store in stores.items():
            if args.stores not in ("both", name.lower()):
                continue
            auth = f"Bearer {api_key(store)}"
            port = free_port()
            with gateway_server(store, port):
                url = f"http://127.0.0.1:{port}/v1/records:admit"
                got = run_wrk(url, single, "application/json", auth, **rate)
                rows.append({"case": f"admit 1 record, lineage on {name}", **got})
                if name == "SQLite":
                    got = run_wrk(
                        url, batch, "application/vnd.apache.avro.single-object", auth,
                        seconds=args.seconds, connections=2, rate=0, script=script,
                        warmup=args.warmup,
                    )  # fmt: skip
                    rows.append({"case": "admit 1,000 records, lineage on SQLite", **got,
                                 "records_per_s": got["rate"] * 1000})  # fmt: skip
        ratios: dict[str, float] = {}
        if args.stores != "postgresql":
            own = guard_records_per_s(messages, workdir, args.seconds)
            rows.append(
                {"case": "the guard's chain in-process, 1,000-record batches", "records_per_s": own}
            )
            looked_up = guard_records_per_s(messages, workdir, args.seconds, lookup=True)
            rows.append(
                {"case": "  the same, parents looked up in the store", "records_per_s": looked_up}
            )
            gateway_batch = next(r for r in rows if r["case"].startswith("admit 1,000"))
            ratios["batch_ratio"] = gateway_batch["records_per_s"] / own
            ratios["batch_ratio_parents_looked_up"] = gateway_batch["records_per_s"] / looked_up
    load = {"before": load_before, "after": os.getloadavg()[0]}
    if args.json:
        print(json.dumps({"rows": rows, **ratios, "load_average": load}, indent=2))
        return
    print(
        f"delay {args.delay}, warm-up {args.warmup} s, {args.seconds} s measured; load average"
        f" {load['before']:.1f} before, {load['after']:.1f} after ({os.cpu_count()} cores)"
    )
    print(f"{'case':<52} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'non-2xx':>7} {'records/s':>10}")
    for r in rows:
        if "p99_us" in r:
            records = f"{r['records_per_s']:>10,.0f}" if "records_per_s" in r else f"{'':>10}"
            print(
                f"{r['case']:<52} {r['rate']:>7.1f} {r['p50_us'] / 1000:>7.2f} "
                f"{r['p99_us'] / 1000:>7.2f} {r['non_2xx'] + r['socket_errors']:>7} {records}"
            )
        else:
            print(f"{r['case']:<52} {'':>7} {'':>7} {'':>7} {'':>7} {r['records_per_s']:>10,.0f}")
    if ratios:
        print(f"1,000-record admit / the guard's own records/s: {ratios['batch_ratio']:.2f}")
        print(
            "1,000-record admit / the guard's own records/s, parents looked up:"
            f" {ratios['batch_ratio_parents_looked_up']:.2f}"
        )


if __name__ == "__main__":
    main()
