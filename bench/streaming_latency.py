"""Produce → allowed-topic latency of the endless guard under a steady load, per runner.

    python bench/streaming_latency.py --runner prism --prism /path/to/prism
    python bench/streaming_latency.py --runner flink \
        --job-endpoint "$(bash infra/flink/flink.sh start | tail -1)"
    python bench/streaming_latency.py --runner prism --rates 200 --per-rate 5000 --no-lineage
    python bench/streaming_latency.py --runner inprocess      # the old loop of bounded rounds

Needs a broker (`--bootstrap-servers`, default `$KAFKA_BOOTSTRAP_SERVERS`). Each run makes its
own topics (3 partitions) and, unless `--no-lineage`, a SQLite lineage store in a temporary
folder (lineage on, as users run it). Modes:
- `prism`: the endless guard as one streaming job (`lineage_guard.streaming`) on Prism.
- `flink`: the same job on Beam's Flink job server (`infra/flink/flink.sh`), LOOPBACK workers.
- `inprocess`: bounded runs on Beam's in-process runner, one after another, as the endless mode
  did before it became one streaming job (a round that found nothing waits `--poll-interval`).

Steady load: for each rate of `--rates` (records/s; default 50, 200, 1000, 2000), after a
warm-up record, `--per-rate` valid records (default 2000) are produced at that rate, spread
over the partitions; each record's latency runs from just before its `produce()` call to its
arrival in the allowed topic (read by a consumer polling all the time). Printed per rate:
p50 / p95 / p99 / max, the seconds the records were produced in and arrived in, and the
machine's load average (1/5 minutes; the figures are absolute, so a busy machine inflates
them): a runner sustains a rate when they arrive in about the time they were produced in and
the latency does not grow with the run. `--records N` then produces N records at once and
prints records/s from the first produce to the last arrival. Figures go to stdout.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import uuid
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from lineage_guard.generate import generate
from lineage_guard.guard import GuardConfig, KafkaIO, run_once
from lineage_guard.io.decode import encode_single_object
from lineage_guard.io.kafka import KafkaSettings

PARTITIONS = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runner", choices=("prism", "flink", "inprocess"), required=True)
    parser.add_argument("--prism", default=os.environ.get("LINEAGE_GUARD_PRISM"))
    parser.add_argument("--job-endpoint", help="flink: the job server, from flink.sh start")
    parser.add_argument("--bootstrap-servers", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    parser.add_argument("--rates", default="50,200,1000,2000", help="records/s, comma-separated")
    parser.add_argument("--per-rate", type=int, default=2000, help="records per rate")
    parser.add_argument("--records", type=int, default=0, help="then: a burst, for records/s")
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--poll-interval", type=float, default=2.0, help="inprocess rounds")
    parser.add_argument("--lineage-store", default=None, help="default: SQLite in a temp dir")
    parser.add_argument("--no-lineage", action="store_true")
    parser.add_argument(
        "--beam-arg", action="append", default=[], help="a pipeline option for the job (repeat)"
    )
    args = parser.parse_args()
    if not args.bootstrap_servers:
        parser.error("give --bootstrap-servers or set KAFKA_BOOTSTRAP_SERVERS")
    bootstrap = args.bootstrap_servers
    rates = [float(r) for r in args.rates.split(",") if r]
    store = None
    if not args.no_lineage:
        store = args.lineage_store or f"sqlite:///{tempfile.mkdtemp(prefix='bench-')}/lineage.db"

    suffix = uuid.uuid4().hex
    src, out, q = (f"t-bench-{n}-{suffix}" for n in ("src", "out", "q"))
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics(
        [NewTopic(t, num_partitions=PARTITIONS, replication_factor=1) for t in (src, out, q)]
    ).values():
        future.result(timeout=30)
    config = GuardConfig(
        io=KafkaIO(
            settings=KafkaSettings(bootstrap_servers=bootstrap, group_id=f"bench-{suffix}"),
            input_topics=(src,),
            output_topic=out,
            quarantine_topic=q,
        ),
        lineage_store=store,
        batch_size=args.batch_size,
        runner={"prism": "PrismRunner", "flink": "PortableRunner"}.get(args.runner, "FnApiRunner"),
        beam_args=(
            *((f"--job_endpoint={args.job_endpoint}",) if args.runner == "flink" else ()),
            *args.beam_arg,
        ),
    )
    total = 1 + args.per_rate * len(rates) + args.records
    records = [
        (g.record["record_id"].encode(), encode_single_object(g.record, g.schema))
        for g in generate(total, seed=5)  # all valid: every record reaches the allowed topic
    ]
    stop = threading.Event()
    if args.runner in ("prism", "flink"):
        from lineage_guard.streaming import run_streaming

        result = run_streaming(config, prism_location=args.prism)
        cancel: Any = result.cancel
    else:

        def rounds() -> None:
            while not stop.is_set():
                if run_once(config).read == 0:
                    stop.wait(args.poll_interval)

        thread = threading.Thread(target=rounds, daemon=True)
        thread.start()
        cancel = stop.set

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-read-{suffix}"})
    consumer.assign([TopicPartition(out, p, 0) for p in range(PARTITIONS)])
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    lineage = "lineage on (SQLite)" if store else "lineage off"
    try:
        warm_key, warm_value = records[0]
        producer.produce(src, key=warm_key, value=warm_value, partition=0)
        producer.flush(10)
        _arrivals(consumer, {warm_value}, timeout_s=300)  # the job is up and has read once

        at = 1
        for rate in rates:
            batch = records[at : at + args.per_rate]
            at += args.per_rate
            sent: dict[bytes, float] = {}
            feeder = threading.Thread(target=_steady, args=(producer, src, batch, rate, sent))
            feeder.start()
            arrived = _arrivals(consumer, {v for _, v in batch}, timeout_s=600)
            feeder.join()
            seconds = sorted(arrived[v] - sent[v] for _, v in batch)
            produced_s = max(sent.values()) - min(sent.values())
            arrived_s = max(arrived.values()) - min(arrived.values())
            print(
                f"{args.runner}, {lineage}, {rate:.0f} records/s: latency over {len(seconds)} "
                f"records p50 {_pct(seconds, 50):.3f} s, p95 {_pct(seconds, 95):.3f} s, "
                f"p99 {_pct(seconds, 99):.3f} s, max {seconds[-1]:.3f} s; produced in "
                f"{produced_s:.1f} s, arrived in {arrived_s:.1f} s "
                f"({len(batch) / max(arrived_s, 1e-9):.0f} records/s); load average "
                f"{_load()}",
                flush=True,
            )

        if args.records:
            bulk = records[at:]
            started = time.monotonic()
            for n, (key, value) in enumerate(bulk):
                while True:
                    try:
                        producer.produce(src, key=key, value=value, partition=n % PARTITIONS)
                        break
                    except BufferError:
                        producer.poll(0.05)
            producer.flush(60)
            arrived = _arrivals(consumer, {v for _, v in bulk}, timeout_s=900)
            took = max(arrived.values()) - started
            print(
                f"{args.runner}, {lineage}: burst of {len(bulk)} records in {took:.1f} s: "
                f"{len(bulk) / took:.0f} records/s",
                flush=True,
            )
    finally:
        consumer.close()
        cancel()


def _steady(
    producer: Producer,
    topic: str,
    batch: list[tuple[bytes, bytes]],
    rate: float,
    sent: dict[bytes, float],
) -> None:
    """Produces `batch` at `rate` records/s on a fixed schedule (never faster to catch up
    than the schedule), noting each record's time just before its `produce()`."""
    start = time.monotonic()
    for n, (key, value) in enumerate(batch):
        due = start + n / rate
        if (wait := due - time.monotonic()) > 0:
            time.sleep(wait)
        sent[value] = time.monotonic()
        while True:
            try:
                producer.produce(topic, key=key, value=value, partition=n % PARTITIONS)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    producer.flush(60)


def _load() -> str:
    """The machine's 1- and 5-minute load averages: latency figures are absolute."""
    one, five, _ = os.getloadavg()
    return f"{one:.1f}/{five:.1f}"


def _pct(sorted_seconds: list[float], p: float) -> float:
    return sorted_seconds[min(len(sorted_seconds) - 1, round(p / 100 * (len(sorted_seconds) - 1)))]


def _arrivals(consumer: Consumer, values: set[bytes], timeout_s: float) -> dict[bytes, float]:
    """Each of `values`' arrival time (monotonic) in the topic the consumer reads."""
    waiting = set(values)
    arrived: dict[bytes, float] = {}
    deadline = time.monotonic() + timeout_s
    while waiting:
        if time.monotonic() > deadline:
            raise SystemExit(f"{len(waiting)} records did not arrive within {timeout_s:.0f} s")
        for message in consumer.consume(num_messages=1000, timeout=0.02):
            value = message.value()
            if message.error() is None and value in waiting:
                waiting.discard(value)
                arrived[value] = time.monotonic()
    return arrived


if __name__ == "__main__":
    main()
