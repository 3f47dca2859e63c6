"""Native Kafka IO with confluent-kafka: partition ranges in, guarded batches out.

No Java expansion service: the source reads assigned partitions from the group's committed
offsets, the sink produces allowed records byte-for-byte and quarantined ones with reason
headers, and commits a partition's offset only once every record before it has been delivered
(at-least-once: nothing is acknowledged that was not written).
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from lineage_guard.contract.verdicts import Violation
from lineage_guard.items import Batch, Item, Source
from lineage_guard.lineage.chain import Failure
from lineage_guard.lineage.errors import ConfigError, ServiceUnavailableError

log = logging.getLogger(__name__)
T = TypeVar("T")
# librdkafka's own log lines (connection refused, retries…) go through Python logging, so the
# CLI decides what reaches stderr; failures reach the user as our one-line errors.
client_log = logging.getLogger("librdkafka")

HEADER_PREFIX = "lineage-guard."
# The headers Confluent's data-contract DLQ action sets (`confluent_kafka.schema_registry.rules
# .dlq.DlqAction.RULE_*`; a unit test holds these equal to them without importing the
# schema-registry package on the guard's hot path, which costs 0.3 s).
DLQ_RULE_NAME = "__rule.name"
DLQ_RULE_MODE = "__rule.mode"
DLQ_RULE_SUBJECT = "__rule.subject"
DLQ_RULE_TOPIC = "__rule.topic"
DLQ_RULE_EXCEPTION = "__rule.exception"
PRODUCER_DEFAULTS = {
    "acks": "all",
    "enable.idempotence": True,
    "linger.ms": 20,
    "batch.size": 1_000_000,
    "compression.type": "lz4",
    "queue.buffering.max.messages": 500_000,
    "queue.buffering.max.kbytes": 1_048_576,
}


@dataclass(frozen=True, kw_only=True)
class KafkaSettings:
    bootstrap_servers: str
    group_id: str
    client: Mapping[str, Any] = field(default_factory=dict)  # extra librdkafka settings
    timeout_s: float = 30.0

    def consumer(self, **overrides: Any) -> Consumer:
        config = {
            "bootstrap.servers": self.bootstrap_servers,
            "group.id": self.group_id,
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "logger": client_log,
            **self.client,
            **overrides,
        }
        return Consumer(config)

    def producer(self) -> Producer:
        return Producer(
            {"bootstrap.servers": self.bootstrap_servers, **PRODUCER_DEFAULTS, **self.client}
        )


COORDINATOR_BUSY = {
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
}


def retrying(call: Callable[[], T], timeout_s: float) -> T:
    """`call()`, retried while Kafka answers with a retriable error (a group coordinator that
    is loading or moving, as on a fresh broker) for up to `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    delay = 0.1
    while True:
        try:
            return call()
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            retriable = isinstance(error, KafkaError) and (
                error.retriable() or error.code() in COORDINATOR_BUSY
            )
            if not retriable or time.monotonic() + delay > deadline:
                raise
            log.info("Kafka asked to retry (%s); retrying in %.1f s", error, delay)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


@dataclass(frozen=True, kw_only=True)
class PartitionRange:
    """Offsets [start, end) of one partition: what a bounded run reads."""

    topic: str
    partition: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


def plan_ranges(settings: KafkaSettings, topics: list[str]) -> list[PartitionRange]:
    """From each partition's committed offset (or its start) to its end offset right now."""
    consumer = settings.consumer()
    try:
        try:
            metadata = consumer.list_topics(timeout=settings.timeout_s)
        except KafkaException as exc:
            raise ServiceUnavailableError(
                f"Kafka at `{settings.bootstrap_servers}` did not answer: {exc.args[0]}. "
                "Check `--bootstrap-servers`."
            ) from exc
        partitions = []
        for topic in topics:
            info = metadata.topics.get(topic)
            if info is None or info.error is not None:
                raise ConfigError(
                    f"Input topic `{topic}` does not exist on `{settings.bootstrap_servers}`."
                )
            partitions += [TopicPartition(topic, p) for p in sorted(info.partitions)]
        committed = retrying(
            lambda: consumer.committed(partitions, timeout=settings.timeout_s), settings.timeout_s
        )
        ranges = []
        for tp in committed:
            low, high = consumer.get_watermark_offsets(tp, timeout=settings.timeout_s)
            start = tp.offset if tp.offset != OFFSET_INVALID and tp.offset >= 0 else low
            if high > start:
                ranges.append(
                    PartitionRange(topic=tp.topic, partition=tp.partition, start=start, end=high)
                )
        return ranges
    except KafkaException as exc:
        raise ServiceUnavailableError(f"Kafka at `{settings.bootstrap_servers}`: {exc}") from exc
    finally:
        consumer.close()


def read_range(
    consumer: Consumer, part: PartitionRange, batch_size: int, timeout_s: float
) -> Iterator[Batch]:
    """Reads `part` into batches of up to `batch_size` messages, in offset order."""
    consumer.assign([TopicPartition(part.topic, part.partition, part.start)])
    try:
        next_offset = part.start
        idle_since = time.monotonic()
        while next_offset < part.end:
            messages = consumer.consume(
                num_messages=min(batch_size, part.end - next_offset), timeout=1.0
            )
            items = []
            reached_eof = False
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        reached_eof = True
                        continue
                    raise ServiceUnavailableError(
                        f"Reading `{part.topic}`[{part.partition}] failed: {error.str()}"
                    )
                offset = message.offset()
                assert offset is not None  # data messages always carry their offset
                if offset >= part.end:
                    reached_eof = True
                    break
                items.append(
                    Item(
                        source=Source(
                            topic=part.topic,
                            partition=part.partition,
                            offset=offset,
                            key=message.key(),
                            value=message.value(),
                            headers=message.headers(),  # type: ignore[arg-type]
                            timestamp_ms=message.timestamp()[1],
                        )
                    )
                )
                next_offset = offset + 1
            if items:
                idle_since = time.monotonic()
                yield Batch(topic=part.topic, partition=part.partition, items=tuple(items))
            if reached_eof:
                break
            if time.monotonic() - idle_since > timeout_s:
                raise ServiceUnavailableError(
                    f"No messages from `{part.topic}`[{part.partition}] for {timeout_s:.0f} s "
                    f"while expecting offsets up to {part.end - 1}."
                )
    finally:
        consumer.unassign()


@dataclass(kw_only=True)
class _Pending:
    next_offset: int
    remaining: int
    count: int
    receipt: Any = None  # the batch's lineage entry, confirmed once every record is answered
    failures: list[Failure] = field(default_factory=list)


# Called with (receipt, records answered, refusals) of each batch whose every record the
# broker answered, in offset order per partition, before those offsets are committed.
Answered = Callable[[list[tuple[Any, int, list[Failure]]]], None]


class KafkaSink:
    """Produces guarded batches and commits each partition once all before it is delivered."""

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        output_topic: str,
        quarantine_topic: str,
        commit_interval_s: float = 1.0,
        on_answered: Answered | None = None,
        commits: bool = True,
    ) -> None:
        """`commits=False`: the caller commits offsets itself (the streaming write step does,
        from keyed state); `flush()` then only waits for delivery."""
        self.settings = settings
        self.on_answered = on_answered
        self.commits = commits
        self.output_topic = output_topic
        self.quarantine_topic = quarantine_topic
        self._producer = settings.producer()
        self._committer = settings.consumer()
        self._pending: dict[tuple[str, int], deque[_Pending]] = {}
        self._to_commit: dict[tuple[str, int], int] = {}
        self._commit_interval_s = commit_interval_s
        self._last_commit = time.monotonic()

    def write(self, batch: Batch, receipt: Any = None) -> None:
        pending = _Pending(
            next_offset=batch.next_offset,
            remaining=len(batch.items),
            count=len(batch.items),
            receipt=receipt,
        )
        self._pending.setdefault((batch.topic, batch.partition), deque()).append(pending)

        def answer(offset: int) -> Callable[[KafkaError | None, Any], None]:
            def delivered(err: KafkaError | None, _msg: Any) -> None:
                pending.remaining -= 1
                if err is not None:
                    pending.failures.append(Failure(offset=offset, error=err.str()))

            return delivered

        for item in batch.items:
            s = item.source
            delivered = answer(s.offset)
            if item.allowed:
                self._produce(
                    self.output_topic, s.key, s.value, s.headers, s.timestamp_ms, delivered
                )
            else:
                self._produce(
                    self.quarantine_topic,
                    s.key,
                    s.value,
                    [*(s.headers or []), *quarantine_headers(item)],
                    s.timestamp_ms,
                    delivered,
                )
        self._producer.poll(0)
        self._advance()
        if time.monotonic() - self._last_commit >= self._commit_interval_s:
            self._commit()

    def flush(self) -> None:
        """Waits for every produced record, then commits what is delivered."""
        remaining = self._producer.flush(self.settings.timeout_s)
        self._advance()
        if remaining:
            raise ServiceUnavailableError(
                f"{remaining} records were not acknowledged by Kafka at "
                f"`{self.settings.bootstrap_servers}` within {self.settings.timeout_s:.0f} s; "
                "their offsets are not committed."
            )
        self._commit()

    def close(self) -> None:
        self._committer.close()

    def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Any,
        timestamp_ms: int | None,
        callback: Any,
    ) -> None:
        kwargs: dict[str, Any] = {"key": key, "value": value, "on_delivery": callback}
        if headers:
            kwargs["headers"] = headers
        if timestamp_ms and timestamp_ms > 0:
            kwargs["timestamp"] = timestamp_ms
        while True:
            try:
                self._producer.produce(topic, **kwargs)
                return
            except BufferError:  # the local queue is full: let deliveries drain it
                self._producer.poll(0.05)

    def _advance(self) -> None:
        answered: list[tuple[Any, int, list[Failure]]] = []
        refused: tuple[tuple[str, int], _Pending] | None = None
        for key, queue in self._pending.items():
            while queue and queue[0].remaining == 0:
                done = queue.popleft()
                answered.append((done.receipt, done.count, done.failures))
                if done.failures:
                    refused = refused or (key, done)
                    queue.clear()  # nothing after a refusal is committed in this run
                    break
                self._to_commit[key] = done.next_offset
        if answered and self.on_answered is not None:
            # What the broker acknowledged (and refused) is recorded before any commit.
            self.on_answered([a for a in answered if a[0] is not None])
        if refused is not None:
            (topic, partition), done = refused
            raise ServiceUnavailableError(
                f"Kafka did not accept records from `{topic}`[{partition}] "
                f"before offset {done.next_offset}: {done.failures[0].error}; their offsets "
                "are not committed."
            )

    def _commit(self) -> None:
        if not self.commits:
            self._to_commit.clear()
        if self._to_commit:
            offsets = [TopicPartition(t, p, o) for (t, p), o in self._to_commit.items()]
            try:
                retrying(
                    lambda: self._committer.commit(offsets=offsets, asynchronous=False),
                    self.settings.timeout_s,
                )
            except KafkaException as exc:
                raise ServiceUnavailableError(f"Committing offsets failed: {exc}") from exc
            self._to_commit.clear()
        self._last_commit = time.monotonic()


MAX_REASONS_BYTES = 16_384  # keeps a quarantined record within the broker's message size


def reasons_header(violations: tuple[Violation, ...]) -> bytes:
    """The violations as a JSON list (ASCII-escaped), cut short past `MAX_REASONS_BYTES`."""
    reasons = [v.to_dict() for v in violations]
    encoded = json.dumps(reasons).encode()
    while len(encoded) > MAX_REASONS_BYTES and len(reasons) > 1:
        kept = reasons[: len(reasons) // 2]
        more = len(violations) - len(kept)
        encoded = json.dumps(
            [
                *kept,
                {
                    "rule": "truncated",
                    "column": None,
                    "message": f"{more} more violations not shown",
                },
            ]
        ).encode()
        reasons = kept
    return encoded[:MAX_REASONS_BYTES]


MAX_EXCEPTION_BYTES = 4_096


def quarantine_headers(item: Item) -> list[tuple[str, bytes]]:
    """Our headers (every reason, the stage, the source position) and Confluent's DLQ headers.

    Confluent's data-contract `DlqAction` marks a record it sends to a dead-letter queue with
    `__rule.name` (the rule that failed), `__rule.mode` (`READ` when a consumer's check failed
    and the original bytes are passed on verbatim, as here), `__rule.subject` (the value's
    Schema Registry subject: `{topic}-value` under Confluent's default TopicNameStrategy),
    `__rule.topic` (the topic the record was read from) and `__rule.exception` (why it failed).
    One rule per record there: `__rule.name` is the first violation's rule, `__rule.exception`
    carries every violation's message.
    """
    s = item.source
    first = item.violations[0].rule if item.violations else str(item.stopped_at)
    exception = "; ".join(v.message for v in item.violations).encode()
    return [
        (HEADER_PREFIX + "reasons", reasons_header(item.violations)),
        (HEADER_PREFIX + "stage", str(item.stopped_at).encode()),
        (HEADER_PREFIX + "source-topic", s.topic.encode()),
        (HEADER_PREFIX + "source-partition", str(s.partition).encode()),
        (HEADER_PREFIX + "source-offset", str(s.offset).encode()),
        (DLQ_RULE_NAME, first.encode()),
        (DLQ_RULE_MODE, b"READ"),
        (DLQ_RULE_SUBJECT, f"{s.topic}-value".encode()),
        (DLQ_RULE_TOPIC, s.topic.encode()),
        (DLQ_RULE_EXCEPTION, _cut(exception, MAX_EXCEPTION_BYTES)),
    ]


def _cut(data: bytes, limit: int) -> bytes:
    """`data` cut to at most `limit` bytes on a UTF-8 character boundary."""
    return data if len(data) <= limit else data[:limit].decode("utf-8", "ignore").encode()
