"""Puts the guard beside its physical limits, on the same messages, in one run.

    python bench/throughput.py                       # 100k and 1M records, table on stdout
    python bench/throughput.py --sizes 20000 --json  # quick check, JSON document

Modes (each measured in its own process, so each has its own peak memory):

- `decode`: fastavro decoding of the messages alone, schema parsed once: the CPU floor.
- `core`: the guard's own path without Kafka: decode, validate, enforce and lineage events
  written to a SQLite store, through the functions the pipeline's stages call.
- `kafka-passthrough`: consume → produce through the real broker with confluent-kafka, no
  guard: the I/O floor.
- `kafka-guard`: `lineage-guard run --until-caught-up` on the same topic, lineage on (SQLite).
- `kafka-guard-no-lineage`: the same with `--no-lineage`, to show what lineage costs.

The records are realistic CRM records (contacts, email activities, media assets; ~5% with
stripped provenance, ~2% TEST origin) in Avro single-object encoding. Kafka modes need
`--bootstrap-servers` (or `KAFKA_BOOTSTRAP_SERVERS`); without one, the broker from
`infra/kafka/kafka.sh` is started for the run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODES = ("decode", "core", "kafka-passthrough", "kafka-guard", "kafka-guard-no-lineage")


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


# ---- the modes, each run in a child process ---------------------------------------------------


def mode_decode(path: Path, args: argparse.Namespace) -> int:
    import io

    import fastavro

    from lineage_guard.contract.schemas import load_schema
    from lineage_guard.io.decode import _known_fingerprints

    schemas = {fp: load_schema(name) for fp, name in _known_fingerprints().items()}
    count = 0
    for batch in read_messages(path, args.batch_size):
        for _key, value in batch:
            stream = io.BytesIO(value)
            stream.seek(10)
            fastavro.schemaless_reader(stream, schemas[value[2:10]], None)
            count += 1
    return count


def mode_core(path: Path, args: argparse.Namespace) -> int:
    from lineage_guard import stages
    from lineage_guard.contract.policies import parse_policy
    from lineage_guard.contract.validate import SuiteValidator
    from lineage_guard.io.decode import Decoder
    from lineage_guard.items import Batch, Item, Source
    from lineage_guard.lineage.store import open_store

    decoder, validator = Decoder(), SuiteValidator()
    policies = [parse_policy("production")]
    store = open_store(f"sqlite:///{args.workdir}/core-{os.getpid()}.db")
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
        count += len(items)
    store.close()
    return count


def mode_kafka_passthrough(path: Path, args: argparse.Namespace) -> int:
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
            for item in batch.items:
                s = item.source
                while True:
                    try:
                        producer.produce(args.topic + "-passthrough", key=s.key, value=s.value)
                        break
                    except BufferError:
                        producer.poll(0.05)
            producer.poll(0)
            count += len(batch.items)
        assert producer.flush(60) == 0
        consumer.commit(
            offsets=[TopicPartition(part.topic, part.partition, part.end)], asynchronous=False
        )
    consumer.close()
    return count


def mode_kafka_guard(path: Path, args: argparse.Namespace, lineage: bool = True) -> int:
    from lineage_guard.cli.main import main

    pid = os.getpid()
    store = ["--lineage-store", f"sqlite:///{args.workdir}/guard-{pid}.db"]
    try:
        main([
            "run", "--bootstrap-servers", args.bootstrap_servers, "--input-topic", args.topic,
            "--output-topic", f"{args.topic}-allowed-{pid}",
            "--quarantine-topic", f"{args.topic}-quarantine-{pid}",
            "--group-id", f"guard-{pid}", "--until-caught-up",
            "--batch-size", str(args.batch_size),
            *(store if lineage else ["--no-lineage"]),
        ])  # fmt: skip
    except SystemExit as exit_:
        if exit_.code:
            raise
    return args.count


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM). Not `ru_maxrss`: Linux carries that over
    `exec` from the parent, so a child would report the driver's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: argparse.Namespace) -> None:
    run = {
        "decode": mode_decode,
        "core": mode_core,
        "kafka-passthrough": mode_kafka_passthrough,
        "kafka-guard": mode_kafka_guard,
        "kafka-guard-no-lineage": lambda p, a: mode_kafka_guard(p, a, lineage=False),
    }[args.child]
    started = time.perf_counter()
    count = run(Path(args.messages), args)
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "mode": args.child,
                "records": count,
                "seconds": seconds,
                "records_per_second": count / seconds,
                "peak_rss_mib": peak_rss_mib(),
            }
        )
    )


# ---- the driver ---------------------------------------------------------------------------------


def produce_topic(bootstrap: str, topic: str, path: Path) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, 1, 1)]).values():
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


def measure(
    mode: str, size: int, messages: Path, topic: str | None, args: argparse.Namespace
) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--messages",
        str(messages),
        "--count",
        str(size),
        "--batch-size",
        str(args.batch_size),
        "--workdir",
        args.workdir,
    ]
    if topic:
        command += ["--bootstrap-servers", args.bootstrap_servers, "--topic", topic]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"{mode} at {size} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description="lineage-guard throughput beside its limits")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--bootstrap-servers", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--messages", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    kafka_modes = [m for m in args.modes if m.startswith("kafka")]
    broker = None
    if kafka_modes and not args.bootstrap_servers:
        sys.path.insert(0, str(REPO))
        from tests.integration.services import local_kafka

        broker = local_kafka()
        args.bootstrap_servers = broker.__enter__()
    rows = []
    with tempfile.TemporaryDirectory(prefix="lg-bench-") as workdir:
        args.workdir = workdir
        try:
            for size in args.sizes:
                messages = Path(workdir) / f"messages-{size}.bin"
                print(f"generating {size} records…", file=sys.stderr)
                write_messages(messages, size)
                topic = None
                if kafka_modes:
                    topic = f"bench-{size}-{os.getpid()}"
                    produce_topic(args.bootstrap_servers, topic, messages)
                for mode in args.modes:
                    print(f"  {mode} at {size}…", file=sys.stderr)
                    row = measure(
                        mode, size, messages, topic if mode.startswith("kafka") else None, args
                    )
                    row["size"] = size
                    rows.append(row)
                    print(
                        f"    {row['records_per_second']:.0f} records/s, peak RSS "
                        f"{row['peak_rss_mib']:.0f} MiB",
                        file=sys.stderr,
                    )
                messages.unlink()
        finally:
            if broker is not None:
                broker.__exit__(None, None, None)
    report(rows, args)


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    by = {(r["mode"], r["size"]): r for r in rows}
    ratios: dict[str, Any] = {}
    for size in args.sizes:

        def rate(mode: str, size: int = size) -> float | None:
            row = by.get((mode, size))
            return row["records_per_second"] if row else None

        core, decode = rate("core"), rate("decode")
        guard, passthrough = rate("kafka-guard"), rate("kafka-passthrough")
        ratios[str(size)] = {
            "core/decode": core / decode if core and decode else None,
            "kafka-guard/kafka-passthrough": guard / passthrough if guard and passthrough else None,
        }
    growth = {}
    if len(args.sizes) >= 2:
        small, large = min(args.sizes), max(args.sizes)
        for mode in args.modes:
            if (mode, small) in by and (mode, large) in by:
                growth[mode] = by[(mode, large)]["peak_rss_mib"] / by[(mode, small)]["peak_rss_mib"]
    if args.json:
        print(json.dumps({"rows": rows, "ratios": ratios, "peak_rss_growth": growth}, indent=2))
        return
    print(f"{'mode':<24} {'records':>9} {'seconds':>8} {'records/s':>10} {'peak RSS MiB':>13}")
    for r in rows:
        print(
            f"{r['mode']:<24} {r['size']:>9} {r['seconds']:>8.1f} "
            f"{r['records_per_second']:>10.0f} {r['peak_rss_mib']:>13.0f}"
        )
    for size, values in ratios.items():
        shown = ", ".join(f"{k} = {v:.2f}" for k, v in values.items() if v is not None)
        print(f"ratios at {size}: {shown}")
    for mode, factor in growth.items():
        print(f"peak RSS {max(args.sizes)} / {min(args.sizes)} for {mode}: {factor:.2f}")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
