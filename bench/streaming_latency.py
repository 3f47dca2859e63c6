"""Produce → allowed-topic latency and throughput of the endless guard, per runner.

    python bench/streaming_latency.py --runner prism --prism /path/to/prism
    python bench/streaming_latency.py --runner inprocess      # the old loop of bounded rounds
    python bench/streaming_latency.py --runner flink \
        --job-endpoint "$(bash infra/flink/flink.sh start | tail -1)"
    python bench/streaming_latency.py --runner prism --singles 200 --records 50000

Needs a broker (`--bootstrap-servers`, default `$KAFKA_BOOTSTRAP_SERVERS`). Each run makes its
own topics (3 partitions). Modes:
- `prism`: the endless guard as one streaming job (`lineage_guard.streaming`) on Prism.
- `flink`: the same job on Beam's Flink job server (`infra/flink/flink.sh`), LOOPBACK workers.
- `inprocess`: bounded runs on Beam's in-process runner, one after another, as the endless mode
  did before it became one streaming job (a round that found nothing waits `--poll-interval`).

Latency: after a warm-up, SINGLES valid records are produced one at a time, 0.1 s apart; each
one's time from the broker's acknowledgement of the produce to its arrival in the allowed topic
is measured; p50 / p99 / max printed. Throughput: RECORDS valid records are then produced at
once; records/s from the first produce to the last arrival. Figures go to stdout.
"""

from __future__ import annotations

import argparse
import os
import statistics
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
    parser.add_argument("--singles", type=int, default=100)
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--poll-interval", type=float, default=2.0)
    parser.add_argument("--lineage-store", default=None, help="default: lineage off")
    args = parser.parse_args()
    if not args.bootstrap_servers:
        parser.error("give --bootstrap-servers or set KAFKA_BOOTSTRAP_SERVERS")
    bootstrap = args.bootstrap_servers

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
        lineage_store=args.lineage_store,
        batch_size=args.batch_size,
        runner={"prism": "PrismRunner", "flink": "PortableRunner"}.get(args.runner, "FnApiRunner"),
        beam_args=(f"--job_endpoint={args.job_endpoint}",) if args.runner == "flink" else (),
    )
    records = [
        (g.record["record_id"].encode(), encode_single_object(g.record, g.schema))
        for g in generate(args.singles + args.records + 1, seed=5)
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
    try:
        warm_key, warm_value = records[0]
        producer.produce(src, key=warm_key, value=warm_value, partition=0)
        producer.flush(10)
        _arrivals(consumer, {warm_value}, timeout_s=300)  # the job is up and has read once

        seconds = []
        for n, (key, value) in enumerate(records[1 : 1 + args.singles]):
            producer.produce(src, key=key, value=value, partition=n % PARTITIONS)
            producer.flush(10)
            sent = time.monotonic()
            _arrivals(consumer, {value}, timeout_s=60)
            seconds.append(time.monotonic() - sent)
            time.sleep(0.1)
        seconds.sort()
        p99 = seconds[min(len(seconds) - 1, round(0.99 * (len(seconds) - 1)))]
        print(
            f"{args.runner}: latency over {len(seconds)} records: "
            f"p50 {statistics.median(seconds):.3f} s, p99 {p99:.3f} s, max {seconds[-1]:.3f} s",
            flush=True,
        )

        bulk = records[1 + args.singles :]
        started = time.monotonic()
        for n, (key, value) in enumerate(bulk):
            while True:
                try:
                    producer.produce(src, key=key, value=value, partition=n % PARTITIONS)
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.flush(60)
        _arrivals(consumer, {v for _, v in bulk}, timeout_s=600)
        took = time.monotonic() - started
        print(
            f"{args.runner}: throughput {len(bulk)} records in {took:.1f} s: "
            f"{len(bulk) / took:.0f} records/s",
            flush=True,
        )
    finally:
        consumer.close()
        cancel()


def _arrivals(consumer: Consumer, values: set[bytes], timeout_s: float) -> None:
    waiting = set(values)
    deadline = time.monotonic() + timeout_s
    while waiting:
        if time.monotonic() > deadline:
            raise SystemExit(f"{len(waiting)} records did not arrive within {timeout_s:.0f} s")
        for message in consumer.consume(num_messages=1000, timeout=0.02):
            if message.error() is None:
                waiting.discard(message.value())


if __name__ == "__main__":
    main()
