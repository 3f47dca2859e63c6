"""Native Kafka IO with confluent-kafka: partition ranges in, guarded batches out.

No Java expansion service: the source reads assigned partitions from the group's committed
offsets, the sink produces allowed records byte-for-byte and quarantined ones with reason
headers, and commits a partition's offset only once every record before it has been delivered
(at-least-once: nothing is acknowledged that was not written).

Poison records never stop a partition: a record its destination cannot take (larger than the
producer's `message.max.bytes` or the topic's `max.message.bytes`) is sent to quarantine with
the rule `output_refused`, decided by `KafkaSink.prepare` before its lineage is recorded; one
that quarantine cannot take either is replaced there by a small reference (source position and
the SHA-256 of its value, rule `quarantine_refused`). A refusal the broker reports only
afterwards is handled the same way, and the lineage records that delivery as failed.

With `KafkaSettings.exactly_once`, each batch is one Kafka transaction (a transactional
producer per input partition, `transactional.id` stable across runs): its allowed and
quarantined records and its input offset commit together or not at all, and lineage confirms
the batch only after the commit. Such a run first fences those producers
(`end_open_transactions`), which aborts a transaction a killed run left open, before it reads
where to resume.

`GroupMembership` makes a guard the only one of its consumer group (see its docstring).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar, cast

import numpy as np
import pyarrow.compute as pc
from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from lineage_guard import guard_chain
from lineage_guard.arrow_batch import GuardBatch, from_kafka
from lineage_guard.contract.verdicts import Violation
from lineage_guard.items import Item
from lineage_guard.lineage.chain import Failure
from lineage_guard.lineage.errors import ConfigError, ServiceUnavailableError
from lineage_guard.lineage.events import Stage

log = logging.getLogger(__name__)
T = TypeVar("T")


class ClientLog:
    """Where librdkafka's own log lines go (the clients' `logger`): our `librdkafka` logger, so
    the CLI decides what reaches stderr, at most at WARNING (what fails reaches the user as our
    one-line errors), and summarised: a broker outage makes every client say the same few
    things many times a second. Each distinct line (numbers, client and thread names aside)
    passes once per `interval_s`; the next one that passes says how many like it were held."""

    def __init__(self, logger: logging.Logger, interval_s: float) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._seen: dict[str, tuple[float, int]] = {}  # shape → (when it last passed, held)
        self._lock = threading.Lock()

    def log(self, level: int, fmt: str, *args: Any) -> None:
        level = min(level, logging.WARNING)
        if not self.logger.isEnabledFor(level):
            return
        text = fmt % args if args else fmt
        shape = _VARYING.sub("", _NUMBERS.sub("#", text))
        now = time.monotonic()
        with self._lock:
            passed, held = self._seen.get(shape, (-self.interval_s, 0))
            if now - passed < self.interval_s:
                self._seen[shape] = (passed, held + 1)
                return
            if len(self._seen) > 1000:  # bounded memory whatever the clients say
                self._seen.clear()
            self._seen[shape] = (now, 0)
        if held:
            text += f" ({held} more like it in the last {self.interval_s:.0f} s)"
        self.logger.log(level, "%s", text)


LOG_SUMMARY_S = 30.0
_NUMBERS = re.compile(r"\d+")
# What differs between the clients and brokers saying the same thing: `[rdkafka#producer-#]`,
# `[thrd:…]`, `HOST:PORT/bootstrap:`, `GroupCoordinator: …:`, `(after #ms in state …)`.
_VARYING = re.compile(r"\[[^\]]*\]|\S+/(?:bootstrap|#):|GroupCoordinator(?:: \S+)?:|\s*\(after .*$")
client_log = ClientLog(logging.getLogger("librdkafka"), LOG_SUMMARY_S)

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
    # At most 20,000 records (16 MiB) waiting for the broker: ten batches in flight, each
    # held until its records are acknowledged. With 1 GiB the queue (and the batches behind
    # it) grew with a long run's length while the broker lagged: 100 MiB more peak memory at
    # 1M records than at 100k (bench/throughput.py).
    "queue.buffering.max.messages": 20_000,
    "queue.buffering.max.kbytes": 16_384,
}
CONSUMER_DEFAULTS = {
    # What a consumer fetches ahead of the guard: 20,000 records (ten batches) or 4 MiB,
    # whichever comes first. With 100,000 records or 16 MiB the queue, decompressed, was 40 MB
    # of a 300,000-record run's high-water mark (memray); with these bounds the guard's own
    # peak fell by about 50 MiB at 100k and at 1M records (bench/throughput.py), as fast.
    "queued.min.messages": 20_000,
    "queued.max.messages.kbytes": 4_096,
    # Once that much waits, librdkafka's next fetch waits `fetch.queue.backoff.ms` (1 s by
    # default), whatever the guard has taken meanwhile: reading 300,000 records with 20 ms of
    # work per 2,000 stalled 0.3-0.4 s every ~30 batches (1.9-2.8 s waiting in all; 1.4 s
    # with 10 ms, most of it the first batch's imports).
    "fetch.queue.backoff.ms": 10,
}


def _client(kind: Callable[[dict[str, Any]], T], config: dict[str, Any]) -> T:
    """A confluent-kafka client; a setting librdkafka refuses (an unknown property, a bad
    value) is a `ConfigError` naming it, not a traceback."""
    try:
        return kind(config)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        if isinstance(error, KafkaError) and error.code() == KafkaError._INVALID_ARG:
            raise ConfigError(
                f"Kafka refused a client setting: {error.str()}. Check `--kafka-config`."
            ) from None
        raise


@dataclass(frozen=True, kw_only=True)
class KafkaSettings:
    bootstrap_servers: str
    group_id: str
    client: Mapping[str, Any] = field(default_factory=dict)  # extra librdkafka settings
    timeout_s: float = 30.0
    exactly_once: bool = False  # one transaction per batch: outputs and offsets together
    outage_s: float = 300.0  # exactly-once: how long an interrupted transaction is retried

    def consumer(self, **overrides: Any) -> Consumer:
        config = {
            "bootstrap.servers": self.bootstrap_servers,
            "group.id": self.group_id,
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            # Never read what an upstream transaction may still abort (librdkafka's default,
            # spelled out: exactly-once depends on it).
            "isolation.level": "read_committed",
            "logger": client_log,
            **CONSUMER_DEFAULTS,
            **self.client,
            **overrides,
        }
        return _client(Consumer, config)

    def producer(self, **overrides: Any) -> Producer:
        config = {
            "bootstrap.servers": self.bootstrap_servers,
            "logger": client_log,
            **PRODUCER_DEFAULTS,
            **self.client,
            **overrides,
        }
        largest = str(config.get("message.max.bytes", LIBRDKAFKA_MESSAGE_MAX_BYTES))
        if "queue.buffering.max.kbytes" not in {**self.client, **overrides} and largest.isdigit():
            # Room for two of the largest records the producer may send, or one would wait
            # for space forever (a value that is no number is librdkafka's to refuse).
            config["queue.buffering.max.kbytes"] = max(
                int(config["queue.buffering.max.kbytes"]), 2 * (int(largest) // 1024 + 1)
            )
        return _client(Producer, config)

    def admin(self) -> AdminClient:
        # No `logger` (an AdminClient given one answers only while someone polls it), and
        # quiet: its failures reach the user as our one-line errors.
        return _client(
            AdminClient,
            {"bootstrap.servers": self.bootstrap_servers, "log_level": 0, **self.client},
        )

    def transactional_id(self, topic: str, partition: int) -> str:
        """Stable per guard (group) and input partition, so a restarted guard fences the
        producer of a killed one and aborts its open transaction."""
        return f"lineage-guard.{self.group_id}.{topic}.{partition}"


BROKER_DOWN = {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN}
COORDINATOR_BUSY = {
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
}


# What a client says of a partition its metadata does not hold yet (one just added to the
# topic) or whose leader is not elected yet: fresh metadata, then a retry, answers it.
PARTITION_NOT_YET_KNOWN = {
    KafkaError._UNKNOWN_PARTITION,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.NOT_LEADER_FOR_PARTITION,
}


def retrying(
    call: Callable[[], T],
    timeout_s: float,
    *,
    also: Collection[int] = (),
    before_retry: Callable[[], object] | None = None,
) -> T:
    """`call()`, retried while Kafka answers with a retriable error (a group coordinator that
    is loading or moving, as on a fresh broker; the error codes in `also`) for up to
    `timeout_s`; `before_retry()` runs before each retry (e.g. to refresh metadata)."""
    deadline = time.monotonic() + timeout_s
    delay = 0.1
    while True:
        try:
            return call()
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            retriable = isinstance(error, KafkaError) and (
                error.retriable() or error.code() in COORDINATOR_BUSY or error.code() in also
            )
            if not retriable or time.monotonic() + delay > deadline:
                raise
            log.info("Kafka asked to retry (%s); retrying in %.1f s", error, delay)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
            if before_retry is not None:
                with contextlib.suppress(KafkaException):
                    before_retry()


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


def input_partitions(
    consumer: Consumer, settings: KafkaSettings, topics: list[str]
) -> list[TopicPartition]:
    """Every partition of `topics`; a missing topic is a configuration error."""
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
    return partitions


def plan_ranges(settings: KafkaSettings, topics: list[str]) -> list[PartitionRange]:
    """From each partition's committed offset (or its start) to its end offset right now."""
    consumer = settings.consumer()
    try:
        partitions = input_partitions(consumer, settings, topics)
        if settings.exactly_once:
            end_open_transactions(settings, partitions)
        try:
            committed = retrying(
                lambda: consumer.committed(partitions, timeout=settings.timeout_s),
                settings.timeout_s,
            )
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            timed_out = isinstance(error, KafkaError) and error.code() == KafkaError._TIMED_OUT
            if not timed_out or settings.exactly_once:
                raise
            raise ServiceUnavailableError(
                f"Kafka at `{settings.bootstrap_servers}` did not say where consumer group "
                f"`{settings.group_id}` resumes in {settings.timeout_s:.0f} s. If an "
                "`--exactly-once` run of this group was killed, its open transaction holds the"
                " offsets: rerun with `--exactly-once`, which ends it, or wait for it to time "
                "out."
            ) from exc
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


def end_open_transactions(settings: KafkaSettings, partitions: list[TopicPartition]) -> None:
    """Fences the transactional producer of every input partition, which aborts (or finishes
    committing) a transaction a killed guard left open. Until then Kafka does not say where
    the group resumes (its offset is part of that transaction), so an exactly-once run does
    this before reading its committed offsets, rather than wait for the transaction to time
    out."""
    for tp in partitions:
        producer = settings.producer(
            **{"transactional.id": settings.transactional_id(tp.topic, tp.partition)}
        )
        try:
            producer.init_transactions(settings.timeout_s)
        except KafkaException as exc:
            raise ServiceUnavailableError(
                f"Kafka at `{settings.bootstrap_servers}` did not end the open transaction of "
                f"`{tp.topic}`[{tp.partition}]: {exc.args[0]}."
            ) from exc
        finally:
            producer.close()


class GroupMembership:
    """Makes a guard the only one of its consumer group while it runs, or refuses to start.

    A guard reads the partition ranges it planned and commits its group's offsets itself, as
    the group's memberless user (Kafka accepts such commits only while the group has no
    active member). Two guards sharing a `group.id` would each read everything, so instead of
    splitting partitions between them (which would need Kafka's rebalancing inside Beam's
    bundles), a guard joins a companion group, `GROUP.lineage-guard-members`, with
    `subscribe` to its input topics, and keeps that membership alive from a background thread
    (its partitions are paused: it fetches nothing). Once the join settled, another member in
    that group means another guard is running: `ConfigError` (exit 3). A guard killed with
    SIGKILL stays a member until its session times out (`session.timeout.ms`, 6 s here), so a
    restart waits up to that long for the rebalance that removes it, then runs. Two guards
    started in the same instant may both refuse; neither reads anything twice.
    """

    SUFFIX = ".lineage-guard-members"
    SESSION_TIMEOUT_MS = 6_000  # the broker's minimum by default

    def __init__(self, settings: KafkaSettings, topics: list[str]) -> None:
        self.settings = settings
        self.topics = topics
        self.group = settings.group_id + self.SUFFIX
        self._consumer: Consumer | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GroupMembership:
        group = self.settings.group_id
        others = self._members(group)
        if others:
            raise ConfigError(
                f"Consumer group `{group}` has {len(others)} active member(s) "
                f"({', '.join(sorted(others))}): lineage-guard commits that group's offsets "
                "itself and needs it to itself. Give the guard its own `--group-id`."
            )
        consumer = self._consumer = self.settings.consumer(
            **{
                "group.id": self.group,
                "session.timeout.ms": self.SESSION_TIMEOUT_MS,
                "heartbeat.interval.ms": 1000,
                "enable.partition.eof": False,
            }
        )
        joined = threading.Event()

        def on_assign(c: Consumer, partitions: list[TopicPartition]) -> None:
            c.assign(partitions)
            c.pause(partitions)  # membership only: never fetch
            joined.set()

        try:
            input_partitions(consumer, self.settings, self.topics)  # they exist, or exit 3
            consumer.subscribe(list(self.topics), on_assign=on_assign)
            deadline = time.monotonic() + self.settings.timeout_s + self.SESSION_TIMEOUT_MS / 1000
            while not joined.is_set():
                consumer.poll(0.2)
                if time.monotonic() > deadline:
                    raise ServiceUnavailableError(
                        f"Kafka at `{self.settings.bootstrap_servers}` did not let the guard "
                        f"join consumer group `{self.group}` in time."
                    )
            members = self._members(self.group)
            if len(members) > 1:
                raise ConfigError(
                    f"Another lineage-guard is already running with `--group-id {group}` "
                    f"({len(members) - 1} other member(s) in `{self.group}`): stop it, or "
                    "give this guard its own `--group-id`."
                )
        except BaseException:
            self._close()
            raise
        self._thread = threading.Thread(target=self._keep, name="group-membership", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._close()

    def _keep(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while not self._stop.wait(0.5):
            consumer.poll(0)  # serves heartbeats' rebalances; partitions are paused

    def _close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()  # leaves the group at once
            self._consumer = None

    def _members(self, group: str) -> list[str]:
        """The ids of `group`'s active members' clients (hosts)."""
        admin = self.settings.admin()  # kept alive until its futures are answered

        def describe() -> Any:
            futures = admin.describe_consumer_groups(
                [group], request_timeout=self.settings.timeout_s
            )
            return futures[group].result(timeout=self.settings.timeout_s)

        try:  # a fresh broker answers COORDINATOR_LOAD_IN_PROGRESS for a while: retried
            description = retrying(describe, self.settings.timeout_s)
        except (KafkaException, concurrent.futures.TimeoutError) as exc:
            raise ServiceUnavailableError(
                f"Kafka at `{self.settings.bootstrap_servers}` did not describe consumer group "
                f"`{group}`: {exc.args[0] if exc.args else 'no answer'}. "
                "Check `--bootstrap-servers`."
            ) from exc
        return [f"{m.client_id}@{m.host}" for m in description.members or ()]


def read_range(
    consumer: Consumer,
    part: PartitionRange,
    batch_size: int,
    timeout_s: float,
    stop: Callable[[], bool] = lambda: False,
) -> Iterator[GuardBatch]:
    """Reads `part` into batches of up to `batch_size` messages, in offset order, until its
    end or until `stop()` is true. Raises when Kafka sends nothing for `timeout_s` while this
    reader waits (time spent downstream of a `yield`, e.g. retrying the lineage store, is not
    waiting for Kafka)."""
    consumer.assign([TopicPartition(part.topic, part.partition, part.start)])
    try:
        next_offset = part.start
        idle_since = time.monotonic()
        while next_offset < part.end and not stop():
            messages = consumer.consume(
                num_messages=min(batch_size, part.end - next_offset), timeout=1.0
            )
            data = []
            reached_eof = False
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        reached_eof = True
                        continue
                    if error.retriable() or error.code() in BROKER_DOWN:
                        continue  # librdkafka reconnects; the idle timeout bounds the wait
                    raise ServiceUnavailableError(
                        f"Reading `{part.topic}`[{part.partition}] failed: {error.str()}"
                    )
                offset = message.offset()
                assert offset is not None  # data messages always carry their offset
                if offset >= part.end:
                    reached_eof = True
                    break
                data.append(message)
                next_offset = offset + 1
            if data:
                yield from_kafka(part.topic, part.partition, data)
                # From when the stages downstream gave control back: time they spent (e.g.
                # retrying the lineage store) is not Kafka being idle.
                idle_since = time.monotonic()
            if reached_eof:
                break
            if time.monotonic() - idle_since > timeout_s:
                raise ServiceUnavailableError(
                    f"No messages from `{part.topic}`[{part.partition}] for {timeout_s:.0f} s "
                    f"while expecting offsets up to {part.end - 1}."
                )
    finally:
        consumer.unassign()


# Errors with which a broker (or the client, before sending) refuses one record for good: the
# record is poison for that topic, not a sign of an outage.
REFUSALS = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.POLICY_VIOLATION,
    }
)
OUTPUT_REFUSED = "output_refused"  # the output topic cannot take it: quarantined instead
QUARANTINE_REFUSED = "quarantine_refused"  # quarantine cannot take it: a reference instead
FRAMING_BYTES = 1024  # Kafka's record batch and record framing, with room to spare
KAFKA_MAX_MESSAGE_BYTES = 1_048_588  # the broker's default `max.message.bytes`
LIBRDKAFKA_MESSAGE_MAX_BYTES = 1_000_000  # librdkafka's default `message.max.bytes`


def message_size(key: bytes | None, value: bytes | None, headers: Any) -> int:
    """Bytes of a message as a producer counts them: key, value, header names and values
    (with a few bytes of framing per header)."""
    size = len(key or b"") + len(value or b"")
    for name, data in headers or ():
        size += len(name.encode() if isinstance(name, str) else name) + len(data or b"") + 8
    return size


def topic_limits(settings: KafkaSettings, topics: list[str]) -> dict[str, int]:
    """The largest message each topic takes: the smaller of the producer's
    `message.max.bytes` and the topic's `max.message.bytes` (less framing), read with the
    AdminClient. A topic that does not exist yet gets the broker's default."""
    local = int(settings.client.get("message.max.bytes", LIBRDKAFKA_MESSAGE_MAX_BYTES))
    admin = settings.admin()  # kept alive until its futures are answered
    futures = admin.describe_configs(
        [ConfigResource(ResourceType.TOPIC, topic) for topic in topics],
        request_timeout=settings.timeout_s,
    )
    limits = {}
    for resource, future in futures.items():
        try:
            entry = future.result(timeout=settings.timeout_s).get("max.message.bytes")
            topic_max = int(entry.value) if entry is not None and entry.value else None
        except concurrent.futures.TimeoutError as exc:
            raise ServiceUnavailableError(
                f"Kafka at `{settings.bootstrap_servers}` did not describe topic "
                f"`{resource.name}` within {settings.timeout_s:.0f} s."
            ) from exc
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if not (
                isinstance(error, KafkaError) and error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
            ):
                raise ServiceUnavailableError(
                    f"Kafka at `{settings.bootstrap_servers}` did not describe topic "
                    f"`{resource.name}`: {error}."
                ) from exc
            topic_max = None
        limits[resource.name] = min(local, (topic_max or KAFKA_MAX_MESSAGE_BYTES) - FRAMING_BYTES)
    return limits


def refuse(item: Item, rule: str, message: str) -> Item:
    """`item`, stopped at the write stage (unless an earlier stage stopped it) with `rule`."""
    return dataclasses.replace(
        item,
        stopped_at=item.stopped_at or Stage.WRITE,
        violations=(*item.violations, Violation(rule=rule, column=None, message=message)),
    )


def is_reference(item: Item) -> bool:
    """Quarantine holds only a reference to this record (`reference_value`)."""
    return any(v.rule == QUARANTINE_REFUSED for v in item.violations)


def reference_value(item: Item) -> bytes:
    """What quarantine holds for a record too large for it: where it is, and its digest."""
    s = item.source
    return json.dumps(
        {
            "source_topic": s.topic,
            "source_partition": s.partition,
            "source_offset": s.offset,
            "value_sha256": hashlib.sha256(s.value or b"").hexdigest(),
            "value_bytes": len(s.value or b""),
            "key_sha256": hashlib.sha256(s.key).hexdigest() if s.key is not None else None,
        }
    ).encode()


@dataclass(kw_only=True)
class _Pending:
    next_offset: int
    remaining: int
    count: int
    receipt: Any = None  # the batch's lineage entry, confirmed once every record is answered
    failures: list[Failure] = field(default_factory=list)  # records not in their destination
    fatal: Failure | None = None  # a failure that must stop the run (an outage, not a refusal)
    refused: list[Failure] = field(default_factory=list)  # the broker refused them (size…)


# Called with (receipt, records answered, refusals) of each batch whose every record the
# broker answered, in offset order per partition, before those offsets are committed.
Answered = Callable[[list[tuple[Any, int, list[Failure]]]], None]


class KafkaSink:
    """Produces guarded batches and commits each partition once all before it is delivered.

    `prepare` decides, before lineage is recorded, where a record too large for its topic
    goes; `write` produces; `flush` waits for the broker and commits. With
    `settings.exactly_once`, `write` is one transaction per batch, offsets included.
    """

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
        self.limits = topic_limits(settings, [output_topic, quarantine_topic])
        # A batch of records must fit the smallest topic too, not only each record.
        batch_bytes = int(settings.client.get("batch.size", PRODUCER_DEFAULTS["batch.size"]))
        self._producer_config = {"batch.size": min(batch_bytes, *self.limits.values())}
        self._producer = settings.producer(**self._producer_config)
        self._transactional: dict[tuple[str, int], Producer] = {}
        self._abandoned: list[Producer] = []  # stopped answering (`_bounded`)
        self._committer = settings.consumer()
        self._pending: dict[tuple[str, int], deque[_Pending]] = {}
        self._reroutes: list[tuple[Item, _Pending]] = []
        self._to_commit: dict[tuple[str, int], int] = {}
        self._commit_interval_s = commit_interval_s
        self._last_commit = time.monotonic()

    def prepare(self, batch: GuardBatch) -> GuardBatch:
        """`batch` with every record routed where it fits, decided before lineage is recorded:
        a record the output topic cannot take is quarantined (`output_refused`); one that
        quarantine cannot take either is marked `quarantine_refused`, and only a reference to
        it (`reference_value`) is written there. Sizes are column lengths; Python looks at a
        record on its own only when it has headers or is stopped."""
        n = len(batch)
        sizes = np.zeros(n, dtype=np.int64)
        for name in ("key", "value"):
            sizes += pc.fill_null(pc.binary_length(batch.column(name)), 0).to_numpy(
                zero_copy_only=False
            )
        if batch.headers is not None and any(batch.headers):
            keys, values = batch.column("key").to_pylist(), batch.column("value").to_pylist()
            for i, headers in enumerate(batch.headers):
                if headers:
                    sizes[i] = message_size(keys[i], values[i], input_headers(headers))
        allowed = np.asarray(batch.allowed_mask(), dtype=bool)
        limit = self.limits[self.output_topic]
        offsets = batch.column("offset")
        where = f"Message `{batch.topic}`[{batch.partition}]@"
        batch = guard_chain.refuse(
            batch,
            {
                i: Violation(
                    rule=OUTPUT_REFUSED,
                    column=None,
                    message=f"{where}{offsets[i].as_py()} has {int(sizes[i])} bytes; output "
                    f"topic `{self.output_topic}` takes at most {limit}.",
                )
                for i in np.flatnonzero(allowed & (sizes > limit)).tolist()
            },
        )
        limit = self.limits[self.quarantine_topic]
        too_large = {}
        stopped = pc.indices_nonzero(pc.invert(batch.allowed_mask())).to_pylist()
        for i, item in zip(stopped, batch.items_at(stopped), strict=True):
            size = self._quarantine_size(item)
            if size > limit:
                too_large[i] = Violation(
                    rule=QUARANTINE_REFUSED,
                    column=None,
                    message=f"{where}{offsets[i].as_py()} would have {size} bytes in quarantine"
                    f" topic `{self.quarantine_topic}`, which takes at most {limit}: only its "
                    "source position and SHA-256 are there.",
                )
        return guard_chain.refuse(batch, too_large)

    def write(self, batch: GuardBatch, receipt: Any = None) -> None:
        if self.settings.exactly_once:
            self._write_transaction(batch, receipt)
            return
        pending = _Pending(
            next_offset=batch.next_offset, remaining=len(batch), count=len(batch), receipt=receipt
        )
        self._pending.setdefault((batch.topic, batch.partition), deque()).append(pending)
        self._send_batch(self._producer, batch, pending)
        self._producer.poll(0)
        self._reroute()
        self._advance()
        if time.monotonic() - self._last_commit >= self._commit_interval_s:
            self._commit()

    def flush(self) -> None:
        """Waits for every produced record, then commits what is delivered."""
        if self.settings.exactly_once:
            return  # every batch was committed by its own transaction
        deadline = time.monotonic() + self.settings.timeout_s
        while True:
            remaining = self._producer.flush(max(deadline - time.monotonic(), 0.0))
            if not self._reroutes:
                break
            self._reroute()
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

    def _quarantine_size(self, item: Item) -> int:
        s = item.source
        return message_size(s.key, s.value, [*input_headers(s.headers), *quarantine_headers(item)])

    def _send_batch(self, producer: Producer, batch: GuardBatch, pending: _Pending) -> None:
        """Produces every row of `batch`: allowed ones straight from the columns, stopped ones
        (few) as `Item`s with their quarantine headers."""
        allowed = np.asarray(batch.allowed_mask(), dtype=bool).tolist()
        keys = batch.column("key").to_pylist()
        values = batch.column("value").to_pylist()
        stamps = batch.column("timestamp_ms").to_pylist()
        offsets = batch.column("offset").to_pylist()
        headers = batch.headers if batch.headers is not None else (None,) * len(batch)
        topic = self.output_topic
        # One callback per batch, and per row only a `partial` of it: a closure per row made
        # about ten objects per record for the garbage collector to track.
        answer = partial(self._answer_row, pending, topic, batch, offsets)
        stopped = [i for i, ok in enumerate(allowed) if not ok]
        items = dict(zip(stopped, batch.items_at(stopped), strict=True))
        for i, ok in enumerate(allowed):
            if not ok:
                self._send(producer, items[i], pending)
                continue
            own = headers[i]
            self._produce(
                producer,
                topic,
                keys[i],
                values[i],
                input_headers(own) if own else None,
                stamps[i],
                partial(answer, i),
            )

    def _send(self, producer: Producer, item: Item, pending: _Pending) -> None:
        s = item.source
        if item.allowed:
            topic, key, value, headers = self.output_topic, s.key, s.value, input_headers(s.headers)
        elif is_reference(item):
            topic, value = self.quarantine_topic, reference_value(item)
            key = s.key if s.key is None or len(s.key) <= 1024 else None
            headers = [*quarantine_headers(item), (HEADER_PREFIX + "reference", b"true")]
        else:
            topic, key, value = self.quarantine_topic, s.key, s.value
            headers = [*input_headers(s.headers), *quarantine_headers(item)]
        answer = self._answer(pending, topic, s.offset, lambda: item)
        self._produce(producer, topic, key, value, headers, s.timestamp_ms, answer)

    def _answer(
        self, pending: _Pending, topic: str, offset: int, item: Callable[[], Item]
    ) -> Callable[[KafkaError | None, Any], None]:
        """The delivery callback of one record (`item`: the record, built only if refused)."""

        def delivered(err: KafkaError | None, _msg: Any) -> None:
            if err is None:
                pending.remaining -= 1
                return
            self._undelivered(pending, topic, offset, item, err)

        return delivered

    def _answer_row(
        self,
        pending: _Pending,
        topic: str,
        batch: GuardBatch,
        offsets: list[int],
        i: int,
        err: KafkaError | None,
        _msg: Any,
    ) -> None:
        """The delivery callback of row `i` of `batch`, an allowed row produced from the columns
        (`_send_batch`): its `Item` is built only if it was refused."""
        if err is None:
            pending.remaining -= 1
            return
        self._undelivered(pending, topic, offsets[i], lambda: batch.item(i), err)

    def _undelivered(
        self,
        pending: _Pending,
        topic: str,
        offset: int,
        item: Callable[[], Item],
        err: KafkaError,
    ) -> None:
        failure = Failure(offset=offset, error=f"`{topic}` refused it: {err.str()}")
        if err.code() in REFUSALS:
            pending.refused.append(failure)
        fallback = self._fallback(item(), err) if err.code() in REFUSALS else None
        if fallback is not None and not self.settings.exactly_once:
            pending.failures.append(failure)  # not where its lineage said it would go
            self._reroutes.append((fallback, pending))  # answered once the fallback is
            return
        pending.remaining -= 1
        pending.failures.append(failure)
        pending.fatal = pending.fatal or failure

    def _fallback(self, item: Item, err: KafkaError) -> Item | None:
        """Where a record goes that its topic refused: from the output topic to quarantine,
        from quarantine to a reference in quarantine; None for a refused reference."""
        s = item.source
        where = f"Message `{s.topic}`[{s.partition}]@{s.offset}"
        if item.allowed:
            item = refuse(
                item, OUTPUT_REFUSED, f"{where}: `{self.output_topic}` refused it: {err.str()}."
            )
            if self._quarantine_size(item) <= self.limits[self.quarantine_topic]:
                return item
        elif is_reference(item):
            return None
        return refuse(
            item,
            QUARANTINE_REFUSED,
            f"{where}: `{self.quarantine_topic}` refused it ({err.str()}): only its source "
            "position and SHA-256 are there.",
        )

    def _reroute(self) -> None:
        while self._reroutes:
            item, pending = self._reroutes.pop(0)
            self._send(self._producer, item, pending)
        self._producer.poll(0)

    def _write_transaction(self, batch: GuardBatch, receipt: Any) -> None:
        """One transaction: the batch's records and its input offset, committed together;
        lineage confirms the batch only after the commit.

        A broker restart or a moving transaction coordinator interrupts it (`NOT_COORDINATOR`,
        a time-out, the producer fenced once the coordinator came back): the transaction is
        aborted, or its producer replaced (`init_transactions` ends what the old one left
        open), and once the broker says where the group stands the batch is written again in
        a new transaction, unless its commit did land. Each wait is a line on stderr; after
        `settings.outage_s` the run ends (exit 4). read_committed readers see each record
        once either way. A record the broker refuses stops the run, as before."""
        where = f"`{batch.topic}`[{batch.partition}]"
        deadline = time.monotonic() + self.settings.outage_s
        delay = 0.5
        interrupted: KafkaError | None = None
        while True:
            try:
                if interrupted is not None:  # did the interrupted commit land?
                    committed = self._committed(batch)
                    if committed == batch.next_offset:
                        log.warning("Kafka transaction for %s had committed", where)
                        break
                    if committed > batch.next_offset:  # only we commit it, batch by batch
                        raise ServiceUnavailableError(
                            f"The group's offset of {where} is {committed}, past this batch's"
                            f" end ({batch.next_offset}): another writer commits it. Nothing of"
                            " this batch is committed; stop the other guard, then rerun."
                        )
                self._transaction(batch)
                break
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                interrupted = error if isinstance(error, KafkaError) else KafkaError(-1, str(exc))
                self._reset_transaction(batch.topic, batch.partition)
                if time.monotonic() + delay > deadline:
                    raise ServiceUnavailableError(
                        f"Kafka transaction for {where} failed: {interrupted.str()}; retried for"
                        f" {self.settings.outage_s:.0f} s. Nothing of it is visible to"
                        " read_committed readers and its offsets are not committed."
                    ) from None
                log.warning(
                    "Kafka transaction for %s interrupted (%s): waiting for the broker, then"
                    " writing the batch again (in %.1f s)",
                    where,
                    interrupted.str(),
                    delay,
                )
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        if receipt is not None and self.on_answered is not None:
            self.on_answered([(receipt, len(batch), [])])

    def _transaction(self, batch: GuardBatch) -> None:
        """Writes `batch` in one transaction. Raises `KafkaException` when the broker
        interrupts it, `ServiceUnavailableError` (after aborting) when it refuses a record."""
        producer = self._transaction_producer(batch.topic, batch.partition)
        pending = _Pending(next_offset=batch.next_offset, remaining=len(batch), count=len(batch))
        timeout = self.settings.timeout_s
        producer.begin_transaction()
        self._send_batch(producer, batch, pending)
        unanswered = producer.flush(timeout)
        if pending.refused:
            self._abort(producer)
            raise ServiceUnavailableError(
                f"Kafka did not accept records from `{batch.topic}`[{batch.partition}] before"
                f" offset {batch.next_offset} ({pending.refused[0].error}); their transaction"
                " was aborted and their offsets are not committed."
            )
        if unanswered or pending.failures:
            why = pending.failures[0].error if pending.failures else f"{unanswered} unanswered"
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, why))
        offsets = [TopicPartition(batch.topic, batch.partition, batch.next_offset)]
        metadata = self._committer.consumer_group_metadata()
        self._bounded(
            producer, lambda: producer.send_offsets_to_transaction(offsets, metadata, timeout)
        )
        self._bounded(producer, lambda: producer.commit_transaction(timeout))

    def _bounded(self, producer: Producer, call: Callable[[], T]) -> T:
        """`call()` (a transactional call on `producer`), given up after `timeout_s` + 5 s.
        librdkafka's transactional calls can block past their own time-out when the broker
        restarted under them (2.16's `send_offsets_to_transaction` waited forever for a
        coordinator that had rolled the transaction back): the producer is then abandoned,
        its successor's `init_transactions` fences it, and `KafkaException` says so."""
        outcome: list[tuple[bool, Any]] = []

        def run() -> None:
            try:
                outcome.append((True, call()))
            except BaseException as exc:  # handed to the caller's thread
                outcome.append((False, exc))

        thread = threading.Thread(target=run, name="kafka-transaction", daemon=True)
        thread.start()
        thread.join(self.settings.timeout_s + 5)
        if not outcome:
            for key, known in list(self._transactional.items()):
                if known is producer:
                    del self._transactional[key]
            self._abandoned.append(producer)  # kept alive: a thread is still inside it
            raise KafkaException(
                KafkaError(KafkaError._TIMED_OUT, "the transactional producer stopped answering")
            )
        done, value = outcome[0]
        if not done:
            raise value
        return cast(T, value)

    def _committed(self, batch: GuardBatch) -> int:
        """The group's committed offset of the batch's partition, as the broker has it now
        (no transaction holds it: the one interrupted was aborted or fenced). Raises
        `KafkaException` while the broker cannot say."""
        producer = self._transaction_producer(batch.topic, batch.partition)  # fences first
        assert producer is not None
        [tp] = self._committer.committed(
            [TopicPartition(batch.topic, batch.partition)], timeout=self.settings.timeout_s
        )
        if tp.error is not None:
            raise KafkaException(tp.error)
        return int(tp.offset)

    def _reset_transaction(self, topic: str, partition: int) -> None:
        """Aborts the partition's open transaction; a producer that cannot (fenced, its
        coordinator gone) is dropped, and its successor's `init_transactions` ends it."""
        producer = self._transactional.get((topic, partition))
        if producer is None:
            return
        try:
            self._bounded(producer, lambda: producer.abort_transaction(self.settings.timeout_s))
        except KafkaException as exc:
            log.debug("aborting a Kafka transaction failed (%s): a new producer ends it", exc)
            if producer in self._abandoned:
                return
            self._transactional.pop((topic, partition), None)
            # A producer in a fatal state (fenced, INVALID_TXN_STATE) raises from these too.
            with contextlib.suppress(KafkaException):
                producer.purge()
                producer.flush(0)

    def _transaction_producer(self, topic: str, partition: int) -> Producer:
        producer = self._transactional.get((topic, partition))
        if producer is None:
            producer = self.settings.producer(
                **self._producer_config,
                **{
                    "transactional.id": self.settings.transactional_id(topic, partition),
                    "linger.ms": 5,
                },
            )
            # Fences a killed (or our own fenced) producer of this partition, ending its
            # open transaction. A `KafkaException` here is waited out by the caller.
            self._transactional[(topic, partition)] = producer
            try:
                self._bounded(producer, lambda: producer.init_transactions(self.settings.timeout_s))
            except KafkaException:
                self._transactional.pop((topic, partition), None)
                raise
        return producer

    def _abort(self, producer: Producer) -> None:
        try:
            producer.abort_transaction(self.settings.timeout_s)
        except KafkaException as exc:  # the next run's init_transactions aborts it anyway
            log.warning("aborting a Kafka transaction failed: %s", exc)

    def _produce(
        self,
        producer: Producer,
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
                producer.produce(topic, **kwargs)
                return
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.05)
            except KafkaException as exc:  # refused before sending (size): a delivery report
                error = exc.args[0] if exc.args else None
                if not isinstance(error, KafkaError):
                    raise
                callback(error, None)
                return

    def _advance(self) -> None:
        answered: list[tuple[Any, int, list[Failure]]] = []
        refused: tuple[tuple[str, int], _Pending] | None = None
        for key, queue in self._pending.items():
            while queue and queue[0].remaining == 0:
                done = queue.popleft()
                answered.append((done.receipt, done.count, done.failures))
                if done.fatal is not None:
                    refused = refused or (key, done)
                    queue.clear()  # nothing after a failure is committed in this run
                    break
                self._to_commit[key] = done.next_offset
        if answered and self.on_answered is not None:
            # What the broker acknowledged (and refused) is recorded before any commit.
            self.on_answered([a for a in answered if a[0] is not None])
        if refused is not None:
            (topic, partition), done = refused
            assert done.fatal is not None
            raise ServiceUnavailableError(
                f"Kafka did not accept records from `{topic}`[{partition}] "
                f"before offset {done.next_offset}: {done.fatal.error}; their offsets "
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
RESERVED_HEADER_PREFIXES = (HEADER_PREFIX, "__rule.")
INPUT_HEADER_PREFIX = "x-input-"


def input_headers(headers: Any) -> list[tuple[str, Any]]:
    """An input message's headers as the guard passes them on: a header in the namespaces
    the guard writes (`lineage-guard.*`, Confluent's DLQ `__rule.*`; compared ignoring case)
    is renamed `x-input-NAME`, so no input can forge our reasons or source position; the
    others are kept as they are, in order."""
    return [
        (INPUT_HEADER_PREFIX + name, value)
        if name.lower().startswith(RESERVED_HEADER_PREFIXES)
        else (name, value)
        for name, value in headers or ()
    ]


def quarantine_headers(item: Item) -> list[tuple[str, bytes]]:
    """Our headers (every reason, the stage, the source position) and Confluent's DLQ headers.

    Confluent's data-contract `DlqAction` marks a record it sends to a dead-letter queue with
    `__rule.name` (the rule that failed), `__rule.mode` (`READ` when a consumer's check failed
    and the original bytes are passed on verbatim, as here), `__rule.subject` (the value's
    Schema Registry subject: `{topic}-value` under Confluent's default TopicNameStrategy),
    `__rule.topic` (the topic the record was read from) and `__rule.exception` (why it failed).
    One rule per record there: `__rule.name` is the first violation's rule, `__rule.exception`
    carries every violation's message. `__rule.subject` cannot be the subject the producer
    used under another naming strategy: a Confluent-framed value carries only a schema id
    (which several subjects may share), single-object and raw Avro no subject at all.
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
