"""Puts the guard beside its physical limits, on the same messages, in one run.

    python bench/throughput.py                       # 100k and 1M records, table on stdout
    python bench/throughput.py --sizes 20000 --json  # quick check, JSON document
    python bench/throughput.py --partitions 1 3      # the Kafka modes on 1 and on 3 partitions

Modes (each measured in its own process, so each has its own peak memory):

- `decode`: fastavro decoding of the messages alone, schema parsed once: the CPU floor.
- `core`: the guard's own path without Kafka: decode, validate, enforce and lineage events
  written to a SQLite store, through the functions the pipeline's stages call.
- `core-columnar`: the same on the columnar chain (`guard_chain`: one Arrow batch per
  micro-batch, bodies read by the Rust reader), which the pipeline's stages do not run yet.
- `kafka-passthrough`: consume → produce through the real broker with confluent-kafka, no
  guard: the I/O floor.
- `kafka-guard`: `lineage-guard run --until-caught-up` on the same topic, lineage on (SQLite).
- `kafka-guard-postgres`: the same with the lineage in PostgreSQL (`--pg-dsn`, else
  `LINEAGE_GUARD_PG_DSN`, else a server from `infra/postgres/postgres.sh` started for the run),
  in a fresh schema per run, dropped after it was measured.
- `kafka-guard-no-lineage`: the same with `--no-lineage`, to show what lineage costs.

`--partitions N …` gives the topic the Kafka modes read N partitions (each count is measured in
the same run). The guard then picks its workers as `lineage-guard run` does for every user: one
worker process per partition, at most one per core (`guard.worker_args`); `--running-mode MODE`
gives it N workers run that way instead (`multi_threading` shares one interpreter lock).

Each row also shows the lineage store's size per record (the SQLite file with its WAL after a
checkpoint; `pg_total_relation_size` of the lineage tables), the CPU seconds the mode's process
tree used (user + system, from `wait4`; the broker's and PostgreSQL's own CPU are not in it),
which a busy shared machine disturbs less than the wall clock, and the peak resident memory of the
mode's whole process tree (Beam's worker processes included), sampled every 50 ms and never
below the mode process's own high-water mark. The run checks that every mode that decides
(`core` and the guards, on any number of partitions and workers) sent exactly the same record
keys to the allowed and to the quarantine destination; a difference fails the run.

The records are realistic CRM records (contacts, email activities, media assets; ~5% with
stripped provenance, ~2% TEST origin) in Avro single-object encoding. Kafka modes need
`--bootstrap-servers` (or `KAFKA_BOOTSTRAP_SERVERS`); without one, the broker from
`infra/kafka/kafka.sh` is started for the run. The topics a run made are deleted once each
size and partition count is measured.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.reference_chain

REPO = Path(__file__).resolve().parents[1]
MODES = (
    "decode", "core", "core-columnar", "kafka-passthrough", "kafka-guard", "kafka-guard-postgres",
    "kafka-guard-no-lineage",
)  # fmt: skip
RUNNING_MODES = ("multi_processing", "multi_threading")
SAMPLE_S = 0.05  # how often the driver samples a mode's process tree for its memory


# ---- the messages: generated once per size, kept in a length-prefixed file -----------------


def write_messages(path: Path, count: int) -> None:
    from lineage_guard.generate import Faults, generate
    from lineage_guard.io.decode import encode_single_object

    faults = Faults(stripped=0.05, test_origin=0.02)
    with path.open("wb") as handle:
        for g in generate(count, seed=99, faults=faults):
            record = g.record
            if record["provenance"] is None:  # the contract schema cannot carry a null
                record["provenance"] = {
                    "content_class": "SYNTHETIC",
                    "origin_env": "PRODUCTION",
                    "source_system": "crm-sync",
                    "generator": None,
                    "generated_at": None,
                    "disclosure": None,
                    "parent_record_ids": [],
                }
            value = encode_single_object(record, g.schema)
            key = record["record_id"].encode()
            handle.write(struct.pack(">II", len(key), len(value)) + key + value)


def read_messages(path: Path, batch: int) -> Iterator[list[tuple[bytes, bytes]]]:
    out: list[tuple[bytes, bytes]] = []
    with path.open("rb") as handle:
        while header := handle.read(8):
            key_len, value_len = struct.unpack(">II", header)
            out.append((handle.read(key_len), handle.read(value_len)))
            if len(out) >= batch:
                yield out
                out = []
    if out:
        yield out


# ---- decisions: which keys went where, to compare modes, partitions and workers ------------


class Decisions:
    """Which keys went to the allowed and which to the quarantine destination: two counts and
    a multiset hash (the sum of each key's SHA-256, so order does not matter), kept without
    holding the keys, so it adds nothing to the mode's peak memory."""

    def __init__(self) -> None:
        self.counts = {"allowed": 0, "quarantined": 0}
        self.sum = 0

    def add(self, side: str, key: bytes) -> None:
        self.counts[side] += 1
        digest = hashlib.sha256(side.encode() + b"\n" + key).digest()
        self.sum = (self.sum + int.from_bytes(digest, "big")) % 2**256

    def summary(self) -> dict[str, Any]:
        return {**self.counts, "digest": f"{self.sum:064x}"[:16]}


def add_topic_keys(decisions: Decisions, side: str, bootstrap: str, topic: str) -> None:
    """Every message key in `topic`, read from each partition's low to high watermark."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"bench-keys-{os.getpid()}",
         "enable.auto.commit": False, "enable.partition.eof": True}
    )  # fmt: skip
    try:
        metadata = consumer.list_topics(topic, timeout=30).topics[topic]
        if metadata.error is not None:
            return  # never created: nothing was sent there
        assignment, remaining = [], 0
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), 30)
            if high > low:
                assignment.append(TopicPartition(topic, partition, low))
                remaining += high - low
        consumer.assign(assignment)
        while remaining > 0:
            for message in consumer.consume(10_000, timeout=5.0):
                if message.error() is None:
                    decisions.add(side, message.key() or b"")
                    remaining -= 1
    finally:
        consumer.close()


# ---- the modes, each run in a child process ---------------------------------------------------


def mode_decode(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    import io

    import fastavro

    from lineage_guard.contract.schemas import load_schema
    from lineage_guard.io.decode import known_fingerprints

    schemas = {fp: load_schema(name) for fp, name in known_fingerprints().items()}
    count = 0
    for batch in read_messages(path, args.batch_size):
        for _key, value in batch:
            stream = io.BytesIO(value)
            stream.seek(10)
            fastavro.schemaless_reader(stream, schemas[value[2:10]], None)
            count += 1
    return {"records": count}


def mode_core(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    from lineage_guard.contract.policies import parse_policy
    from lineage_guard.contract.validate import SuiteValidator
    from lineage_guard.io.decode import Decoder
    from lineage_guard.items import Batch, Item, Source
    from lineage_guard.lineage.store import open_store
    from tests import reference_chain as stages  # the per-record reference

    decoder, validator = Decoder(), SuiteValidator()
    policies = [parse_policy("production")]
    db = Path(args.workdir) / f"core-{os.getpid()}.db"
    store = open_store(f"sqlite:///{db}")
    decisions = Decisions()
    count = 0
    for messages in read_messages(path, args.batch_size):
        items = tuple(
            Item(source=Source(topic="bench", partition=0, offset=count + i, key=k, value=v))
            for i, (k, v) in enumerate(messages)
        )
        batch = Batch(topic="bench", partition=0, items=items)
        batch = stages.enforce(stages.validate(stages.decode(batch, decoder), validator), policies)
        hops = stages.lineage_hops(
            batch, pipeline="bench", run_id="core", allowed_to="out", quarantined_to="quarantine"
        )
        entry = store.append(hops)
        store.confirm([(entry, len(items), [])], at=hops.at)  # as the sink does once answered
        for item in batch.items:
            decisions.add("allowed" if item.allowed else "quarantined", item.source.key or b"")
        count += len(items)
    store.close()
    return {"records": count, "decisions": decisions, "sqlite": db}


def mode_kafka_passthrough(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    from confluent_kafka import TopicPartition

    from lineage_guard.io.kafka import KafkaSettings, PartitionRange, plan_ranges, read_range

    settings = KafkaSettings(
        bootstrap_servers=args.bootstrap_servers, group_id=f"passthrough-{os.getpid()}"
    )
    consumer, producer = settings.consumer(), settings.producer()
    count = 0
    ranges: list[PartitionRange] = plan_ranges(settings, [args.topic])
    for part in ranges:
        for batch in read_range(consumer, part, args.batch_size, 30.0):
            keys = batch.column("key").to_pylist()
            for key, value in zip(keys, batch.column("value").to_pylist(), strict=True):
                while True:
                    try:
                        producer.produce(args.topic + "-passthrough", key=key, value=value)
                        break
                    except BufferError:
                        producer.poll(0.05)
            producer.poll(0)
            count += len(batch)
        assert producer.flush(60) == 0
        consumer.commit(
            offsets=[TopicPartition(part.topic, part.partition, part.end)], asynchronous=False
        )
    consumer.close()
    return {"records": count}


def mode_kafka_guard(path: Path, args: argparse.Namespace, store: str) -> dict[str, Any]:
    """`lineage-guard run` on the topic; `store` is `sqlite`, `postgres` or `none`."""
    from lineage_guard.cli.main import main

    pid = os.getpid()
    out: dict[str, Any] = {}
    if store == "sqlite":
        db = Path(args.workdir) / f"guard-{pid}.db"
        lineage = ["--lineage-store", f"sqlite:///{db}"]
        out["sqlite"] = db
    elif store == "postgres":
        schema = f"bench_{pid}_{time.time_ns()}"
        create_schema(args.pg_dsn, schema)
        out["postgres"] = (args.pg_dsn, schema)
        separator = "&" if "?" in args.pg_dsn else "?"
        lineage = ["--lineage-store", f"{args.pg_dsn}{separator}options=-csearch_path%3D{schema}"]
    else:
        lineage = ["--no-lineage"]
    workers = []  # by default the guard picks its workers itself (`guard.worker_args`)
    if args.workers > 1 and args.running_mode is not None:
        workers = [
            "--", f"--direct_num_workers={args.workers}",
            f"--direct_running_mode={args.running_mode}",
        ]  # fmt: skip
    allowed, quarantine = f"{args.topic}-allowed-{pid}", f"{args.topic}-quarantine-{pid}"
    try:
        main([
            "run", "--bootstrap-servers", args.bootstrap_servers, "--input-topic", args.topic,
            "--output-topic", allowed, "--quarantine-topic", quarantine,
            "--group-id", f"guard-{pid}", "--until-caught-up",
            "--batch-size", str(args.batch_size), *lineage, *workers,
        ])  # fmt: skip
    except SystemExit as exit_:
        if exit_.code:
            raise
    out["records"] = args.count
    out["topics"] = (allowed, quarantine)
    return out


def create_schema(dsn: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')


def postgres_bytes(dsn: str, schema: str, *, drop: bool) -> int:
    """`pg_total_relation_size` (heap, indexes, TOAST) of every table in `schema`."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relkind = 'r'",
            (schema,),
        ).fetchone()
        if drop:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    return int(row[0]) if row else 0


def sqlite_bytes(db: Path) -> int:
    """The file with its WAL, after a checkpoint."""
    import sqlite3

    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return sum(f.stat().st_size for f in (db, Path(f"{db}-wal")) if f.exists())


def own_peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM). Not `ru_maxrss`: Linux carries that over
    `exec` from the parent, so a child would report the driver's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def mode_core_columnar(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """`core` on the columnar chain (`guard_chain`: one Arrow batch, the Rust reader)."""
    from lineage_guard import arrow_batch, guard_chain
    from lineage_guard.contract.policies import parse_policy
    from lineage_guard.contract.validate import SuiteValidator
    from lineage_guard.io.decode import Decoder
    from lineage_guard.lineage.store import open_store

    decoder, validator = Decoder(), SuiteValidator()
    policies = [parse_policy("production")]
    db = Path(args.workdir) / f"core-columnar-{os.getpid()}.db"
    store = open_store(f"sqlite:///{db}")
    decisions = Decisions()
    count = 0
    for messages in read_messages(path, args.batch_size):
        keys = [k for k, _ in messages]
        batch = arrow_batch.from_messages(
            "bench", 0, range(count, count + len(messages)), [v for _, v in messages], keys=keys
        )
        batch = guard_chain.decode(batch, decoder)
        batch = guard_chain.enforce(guard_chain.validate(batch, validator), policies)
        hops = guard_chain.hop_batch(
            batch, pipeline="bench", run_id="core", allowed_to="out", quarantined_to="quarantine"
        )
        entry = store.append(hops)
        store.confirm([(entry, len(messages), [])], at=hops.at)
        for key, allowed in zip(keys, batch.allowed_mask().to_pylist(), strict=True):
            decisions.add("allowed" if allowed else "quarantined", key)
        count += len(messages)
    store.close()
    return {"records": count, "decisions": decisions, "sqlite": db}


def child(args: argparse.Namespace) -> None:
    run = {
        "decode": mode_decode,
        "core": mode_core,
        "core-columnar": mode_core_columnar,
        "kafka-passthrough": mode_kafka_passthrough,
        "kafka-guard": lambda p, a: mode_kafka_guard(p, a, "sqlite"),
        "kafka-guard-postgres": lambda p, a: mode_kafka_guard(p, a, "postgres"),
        "kafka-guard-no-lineage": lambda p, a: mode_kafka_guard(p, a, "none"),
    }[args.child]
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    started = time.perf_counter()
    out = run(Path(args.messages), args)
    seconds = time.perf_counter() - started
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.profile)
    count = out["records"]
    row: dict[str, Any] = {
        "mode": args.child,
        "records": count,
        "seconds": seconds,
        "records_per_second": count / seconds,
        "own_peak_rss_mib": own_peak_rss_mib(),
    }
    # After the clock: the store's size, and where the records went.
    if "sqlite" in out:
        row["store_bytes"] = sqlite_bytes(out["sqlite"])
        out["sqlite"].unlink()
    if "postgres" in out:
        dsn, schema = out["postgres"]
        row["store_bytes"] = postgres_bytes(dsn, schema, drop=True)
    if "decisions" in out:
        row["decisions"] = out["decisions"].summary()
    if "topics" in out:
        decisions = Decisions()
        add_topic_keys(decisions, "allowed", args.bootstrap_servers, out["topics"][0])
        add_topic_keys(decisions, "quarantined", args.bootstrap_servers, out["topics"][1])
        row["decisions"] = decisions.summary()
    print(json.dumps(row))


# ---- the driver ---------------------------------------------------------------------------------


def produce_topic(bootstrap: str, topic: str, partitions: int, path: Path) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        future.result(30)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 500000,
        }
    )
    for batch in read_messages(path, 10_000):
        for key, value in batch:
            while True:
                try:
                    producer.produce(topic, key=key, value=value)
                    break
                except BufferError:
                    producer.poll(0.05)
    assert producer.flush(120) == 0


def delete_topics(bootstrap: str, inputs: set[str]) -> None:
    """Deletes the input topics measured and every topic a mode wrote from them (names that
    start with an input's), so repeated runs do not pile up topics on a long-lived broker."""
    if not inputs:
        return
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    ours = tuple(f"{name}-" for name in inputs)
    names = [t for t in admin.list_topics(timeout=30).topics if t in inputs or t.startswith(ours)]
    for future in admin.delete_topics(names, operation_timeout=30).values():
        future.result(60)


def tree_rss_kib(root: int) -> int:
    """Resident memory of process `root` and all its descendants, now."""
    total, pending = 0, [root]
    while pending:
        pid = pending.pop()
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
            for task in Path(f"/proc/{pid}/task").iterdir():
                pending.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue  # it just ended
    return total


def measure(
    mode: str, size: int, partitions: int, messages: Path, topic: str | None,
    args: argparse.Namespace,
) -> dict[str, Any]:  # fmt: skip
    command = [
        sys.executable, __file__, "--child", mode, "--messages", str(messages),
        "--count", str(size), "--batch-size", str(args.batch_size), "--workdir", args.workdir,
        "--workers", str(partitions),
    ]  # fmt: skip
    if args.running_mode is not None:
        command += ["--running-mode", args.running_mode]
    if topic:
        command += ["--bootstrap-servers", args.bootstrap_servers, "--topic", topic]
    if mode == "kafka-guard-postgres":
        command += ["--pg-dsn", args.pg_dsn]
    if args.profile_dir:
        label = f"{mode}-{size}-{partitions}p"
        command += ["--profile", str(Path(args.profile_dir) / f"{label}.prof")]
    peak = [0]
    with (
        tempfile.TemporaryFile("w+") as out,
        tempfile.TemporaryFile("w+") as err,
        subprocess.Popen(command, stdout=out, stderr=err, cwd=REPO, text=True) as process,
    ):
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], tree_rss_kib(process.pid))
                stop.wait(SAMPLE_S)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)  # its CPU time, waited-for children's too
        code = process.returncode = os.waitstatus_to_exitcode(status)
        stop.set()
        sampler.join()
        out.seek(0)
        err.seek(0)
        if code != 0:
            raise SystemExit(f"{mode} at {size} on {partitions} partitions failed:\n"
                             f"{err.read()[-3000:]}")  # fmt: skip
        row: dict[str, Any] = json.loads(out.read().strip().splitlines()[-1])
    row["peak_rss_mib"] = max(row["own_peak_rss_mib"], peak[0] / 1024)
    row["cpu_seconds"] = usage.ru_utime + usage.ru_stime
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description="lineage-guard throughput beside its limits")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument(
        "--partitions", type=int, nargs="+", default=[1],
        help="partitions of the topic the Kafka modes read (one guard worker per partition)",
    )  # fmt: skip
    parser.add_argument(
        "--running-mode", choices=RUNNING_MODES, default=None,
        help="N partitions: N FnApiRunner workers run this way (default: the guard's own"
        " choice, one `lineage_guard.worker` process per partition, at most one per core)",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--bootstrap-servers", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    parser.add_argument("--pg-dsn", default=os.environ.get("LINEAGE_GUARD_PG_DSN"))
    parser.add_argument("--profile-dir", help="write a cProfile of each mode process here")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--messages", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--profile", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.profile_dir:
        Path(args.profile_dir).mkdir(parents=True, exist_ok=True)

    kafka_modes = [m for m in args.modes if m.startswith("kafka")]
    rows: list[dict[str, Any]] = []
    with ExitStack() as services, tempfile.TemporaryDirectory(prefix="lg-bench-") as workdir:
        sys.path.insert(0, str(REPO))
        if kafka_modes and not args.bootstrap_servers:
            from tests.integration.services import local_kafka

            args.bootstrap_servers = services.enter_context(local_kafka())
        if "kafka-guard-postgres" in args.modes and not args.pg_dsn:
            from tests.integration.services import local_postgres

            args.pg_dsn = services.enter_context(local_postgres())
        args.workdir = workdir
        for size in args.sizes:
            messages = Path(workdir) / f"messages-{size}.bin"
            print(f"generating {size} records…", file=sys.stderr)
            write_messages(messages, size)
            runs: list[tuple[str, int, str | None]] = []
            for mode in args.modes:
                if not mode.startswith("kafka"):
                    runs.append((mode, 0, None))
            for partitions in args.partitions if kafka_modes else []:
                topic = f"bench-{size}-{partitions}p-{os.getpid()}"
                produce_topic(args.bootstrap_servers, topic, partitions, messages)
                runs.extend((mode, partitions, topic) for mode in kafka_modes)
            for mode, partitions, topic in runs:
                where = f" on {partitions} partitions" if partitions else ""
                print(f"  {mode} at {size}{where}…", file=sys.stderr, flush=True)
                row = measure(mode, size, partitions, messages, topic, args)
                row["size"], row["partitions"] = size, partitions
                rows.append(row)
                print(f"    {json.dumps(row)}", file=sys.stderr, flush=True)
            messages.unlink()
            delete_topics(args.bootstrap_servers, {topic for _, _, topic in runs if topic})
    failed = report(rows, args)
    if failed:
        raise SystemExit(failed)


def label(row: dict[str, Any]) -> str:
    return f"{row['mode']} {row['partitions']}p" if row["partitions"] else row["mode"]


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> str | None:
    """Print the table (or JSON); return a failure message if decisions differ."""
    by = {(r["mode"], r["size"], r["partitions"]): r for r in rows}
    ratios: dict[str, dict[str, float]] = {}
    for size in args.sizes:

        def rate(mode: str, partitions: int = 0, cpu: bool = False, size: int = size) -> float:
            row = by.get((mode, size, partitions))
            if not row:
                return 0.0
            return row["records"] / row["cpu_seconds"] if cpu else row["records_per_second"]

        values: dict[str, float] = {}
        for cpu, suffix in ((False, ""), (True, " (per CPU-second)")):
            core, decode = rate("core", cpu=cpu), rate("decode", cpu=cpu)
            if core and decode:
                values[f"core/decode{suffix}"] = core / decode
            columnar = rate("core-columnar", cpu=cpu)
            if columnar and core:
                values[f"core-columnar/core{suffix}"] = columnar / core
            for partitions in args.partitions:
                passthrough = rate("kafka-passthrough", partitions, cpu)
                for mode in ("kafka-guard", "kafka-guard-postgres", "kafka-guard-no-lineage"):
                    guard = rate(mode, partitions, cpu)
                    if guard and passthrough:
                        name = f"{mode}/kafka-passthrough {partitions}p{suffix}"
                        values[name] = guard / passthrough
        ratios[str(size)] = values
    growth: dict[str, float] = {}
    if len(args.sizes) >= 2:
        small, large = min(args.sizes), max(args.sizes)
        for row in rows:
            if row["size"] == large and (other := by.get((row["mode"], small, row["partitions"]))):
                growth[label(row)] = row["peak_rss_mib"] / other["peak_rss_mib"]
    failed = None
    for size in args.sizes:
        seen = {label(r): r["decisions"] for r in rows if r["size"] == size and "decisions" in r}
        if len({json.dumps(d, sort_keys=True) for d in seen.values()}) > 1:
            failed = f"decisions differ at {size}: {json.dumps(seen, indent=2)}"
    if args.json:
        print(json.dumps({"rows": rows, "ratios": ratios, "peak_rss_growth": growth}, indent=2))
        return failed
    print(
        f"{'mode':<28} {'records':>9} {'seconds':>8} {'records/s':>10} {'CPU s':>7}"
        f" {'rec/CPU-s':>10} {'peak RSS MiB':>13} {'store B/rec':>12}"
        "  decisions (allowed/quarantined, digest)"
    )
    for r in rows:
        per_record = f"{r['store_bytes'] / r['records']:.0f}" if "store_bytes" in r else "-"
        d = r.get("decisions")
        shown = f"{d['allowed']}/{d['quarantined']} {d['digest']}" if d else "-"
        print(
            f"{label(r):<28} {r['size']:>9} {r['seconds']:>8.1f} "
            f"{r['records_per_second']:>10.0f} {r['cpu_seconds']:>7.1f}"
            f" {r['records'] / r['cpu_seconds']:>10.0f} {r['peak_rss_mib']:>13.0f} {per_record:>12}"
            f"  {shown}"
        )
    for size, values in ratios.items():
        for name, value in values.items():
            print(f"ratio at {size}: {name} = {value:.2f}")
    for name, factor in growth.items():
        print(f"peak RSS {max(args.sizes)} / {min(args.sizes)} for {name}: {factor:.2f}")
    print(failed or "decisions: identical in every mode that decides, at every size")
    return failed


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
