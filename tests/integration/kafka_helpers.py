"""Helpers for guard tests on the real broker: topics, producing, draining, the CLI."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from uuid import uuid4

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tests.cli import run_cli


@dataclass(frozen=True)
class Message:
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    partition: int
    offset: int

    def header(self, name: str) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)


def new_topics(bootstrap: str, *names: str, partitions: int = 1) -> list[str]:
    suffix = uuid4().hex
    topics = [f"t-{name}-{suffix}" for name in names]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics]
    )
    for future in futures.values():
        future.result(timeout=30)
    return topics


def produce(
    bootstrap: str,
    topic: str,
    messages: Sequence[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]],
    partitions: int = 1,
) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for n, (key, value, headers) in enumerate(messages):
        producer.produce(
            topic, key=key, value=value, headers=headers or None, partition=n % partitions
        )
    assert producer.flush(30) == 0


def drain(
    bootstrap: str, topic: str, expected_at_least: int = 0, timeout_s: float = 30.0
) -> list[Message]:
    """Every message of `topic`, read from the start until its end offsets."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"drain-{uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=30)
        parts = [TopicPartition(topic, p, 0) for p in metadata.topics[topic].partitions]
        ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=30)[1] for tp in parts}
        consumer.assign(parts)
        out: list[Message] = []
        remaining = {p for p, end in ends.items() if end > 0}
        import time

        deadline = time.monotonic() + timeout_s
        while remaining and time.monotonic() < deadline:
            for m in consumer.consume(num_messages=1000, timeout=1.0):
                if m.error():
                    continue
                out.append(
                    Message(m.key(), m.value(), tuple(m.headers() or ()), m.partition(), m.offset())
                )
                if m.offset() >= ends[m.partition()] - 1:
                    remaining.discard(m.partition())
        assert not remaining, f"could not read {topic} to its end"
        assert len(out) >= expected_at_least
        return out
    finally:
        consumer.close()


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offsets. Offsets sent within a transaction still open (a killed
    exactly-once guard's) are not among them: `read_uncommitted` asks Kafka not to wait for
    that transaction to end, which a `read_committed` consumer would, until it times out."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "isolation.level": "read_uncommitted"}
    )
    try:
        metadata = consumer.list_topics(topic, timeout=30)
        parts = [TopicPartition(topic, p) for p in metadata.topics[topic].partitions]
        return {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=30)}
    finally:
        consumer.close()


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "ends"})
    try:
        metadata = consumer.list_topics(topic, timeout=30)
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
            for p in metadata.topics[topic].partitions
        }
    finally:
        consumer.close()


guard_cli = run_cli  # the guard, as its users run it


def guard_args(bootstrap: str, src: str, out: str, quarantine: str, group: str) -> list[str]:
    """`run` arguments for a bounded run from `src` to `out` / `quarantine`."""
    return [
        "run",
        "--bootstrap-servers",
        bootstrap,
        "--input-topic",
        src,
        "--output-topic",
        out,
        "--quarantine-topic",
        quarantine,
        "--group-id",
        group,
        "--until-caught-up",
    ]
