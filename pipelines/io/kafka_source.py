"""An unbounded Kafka source for Beam streaming runners: a splittable DoFn on confluent-kafka.

    PeriodicImpulse ──► DiscoverPartitions ──► (topic, partition), each once ──► ReadPartitions

Each element of `ReadPartitions` is one topic-partition; its restriction is the offset range
`[committed, ∞)`, starting at the consumer group's committed offset (or the partition's first
offset when the group has none). A `process()` call polls, claims each offset it emits, then
defers the rest of the range (a checkpoint): the runner resumes it later, on any worker, from
the first unclaimed offset. A call never waits for records once it has one: it waits at most
`poll_s` for a first record, then takes only what the consumer has already fetched (at most
`max_chunk`) and returns them as one chunk. A runner hands a call's output on only when its
bundle ends, and Prism puts every partition's call in one bundle, one after another: a call
that waited for more would hold the other partitions' records too. The chunks' size follows
the rate (what arrived since the partition's last call), and a caught-up partition is read
again at once, an idle one after `idle_resume_s`. Only checkpoints split a partition's range:
its records are read by one reader at a time, in offset order.

A partition is read at most `max_ahead` records past the group's committed offset: the
runner holds what the write step has not taken yet, and Prism (2.77) hands a stage everything
that waits for it as one bundle. Without the bound, a write step behind a backlog got ever
larger bundles (234 chunks, 468,000 records, about 220 MB in one bundle while 1,000,000 records
drained) and waited 15 s for its first element. Once that far ahead, a call reads nothing and
looks again after `idle_resume_s`; the write step's commits let it on.

The output is `Chunk`s: records of one partition plus the offset span they cover, including
offsets the broker skipped (transaction markers, compacted records). The write step commits a
partition's offset only up to the end of a gap-free run of delivered spans (`Frontier`).

The watermark follows the records' own timestamps (never backwards); an idle partition moves it
to the wall clock so that a quiet partition does not hold the others back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import pyarrow.compute as pc
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.transforms.periodicsequence import PeriodicImpulse
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp
from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, TopicPartition

from lineage_guard.arrow_batch import GuardBatch, from_kafka
from lineage_guard.io.kafka import PARTITION_NOT_YET_KNOWN, KafkaSettings, retrying
from lineage_guard.lineage.errors import ConfigError, ServiceUnavailableError

log = logging.getLogger(__name__)

UNBOUNDED = 2**63 - 1  # the end of a partition's range: Kafka offsets are signed 64-bit
MAX_AHEAD = 30_000  # records of a partition read but not yet committed, at most (see above)
NAMESPACE = "lineage_guard"

TopicPartitionKey = tuple[str, int]
# Beam's DoFn parameters are declared as defaults; module-level, as ruff's B008 asks.
RESTRICTION = beam.DoFn.RestrictionParam()  # the DoFn is its own restriction provider
WATERMARK = beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider())
SEEN = ReadModifyWriteStateSpec("seen", beam.coders.BooleanCoder())
SEEN_STATE = beam.DoFn.StateParam(SEEN)


@dataclass(frozen=True, kw_only=True)
class Chunk:
    """Records of one partition in offset order, covering offsets `[start, stop)`."""

    start: int
    stop: int
    batch: GuardBatch


def start_offset(consumer: Consumer, topic: str, partition: int, timeout_s: float) -> int:
    """Where the group resumes `topic`[`partition`]: its committed offset, else the first one.
    A partition added moments ago may not be in the client's metadata yet, nor have a
    leader: the look-up is retried on fresh metadata until `timeout_s`."""
    tp = TopicPartition(topic, partition)

    def look_up() -> int:
        [committed] = consumer.committed([tp], timeout=timeout_s)
        if committed.error is not None:
            raise KafkaException(committed.error)
        if committed.offset != OFFSET_INVALID and committed.offset >= 0:
            return int(committed.offset)
        low, _high = consumer.get_watermark_offsets(tp, timeout=timeout_s)
        return int(low)

    try:
        return retrying(
            look_up,
            timeout_s,
            also=PARTITION_NOT_YET_KNOWN,
            before_retry=lambda: consumer.list_topics(topic, timeout=timeout_s),
        )
    except KafkaException as exc:
        raise ServiceUnavailableError(
            f"Kafka did not tell where to resume `{topic}`[{partition}]: {exc.args[0]}"
        ) from exc


def partitions_of(consumer: Consumer, topics: Sequence[str], timeout_s: float) -> list[Any]:
    try:
        metadata = consumer.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise ServiceUnavailableError(f"Kafka did not answer: {exc.args[0]}") from exc
    found = []
    for topic in topics:
        info = metadata.topics.get(topic)
        if info is None or info.error is not None:
            raise ConfigError(f"Input topic `{topic}` does not exist.")
        found += [(topic, p) for p in sorted(info.partitions)]
    return found


class PartitionTracker(OffsetRestrictionTracker):
    """An offset range that may be endless; it splits only at checkpoints (fraction 0), so one
    partition is never read by two readers at once and its records stay in offset order."""

    def try_split(self, fraction_of_remainder: float) -> Any:
        if fraction_of_remainder != 0:
            return None
        return super().try_split(0)

    def is_bounded(self) -> bool:
        return bool(self.current_restriction().stop != UNBOUNDED)


class ReadPartitions(beam.DoFn, RestrictionProvider):
    """Reads each topic-partition element from its committed offset, forever; its own
    restriction provider: `[committed, ∞)` per topic-partition."""

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        max_chunk: int = 2000,
        poll_s: float = 0.01,
        process_s: float = 1.0,
        idle_resume_s: float = 0.1,
        max_ahead: int = MAX_AHEAD,
    ) -> None:
        self.settings = settings
        self.max_chunk = max_chunk
        self.poll_s = poll_s
        self.process_s = process_s
        self.idle_resume_s = idle_resume_s
        self.max_ahead = max_ahead

    def setup(self) -> None:
        self.consumers: dict[TopicPartitionKey, tuple[Consumer, list[int]]] = {}
        # The group's committed offset per partition, as last looked up (or, before the group
        # committed any, where this worker first read it).
        self.committed: dict[TopicPartitionKey, int] = {}
        self.read = Metrics.counter(NAMESPACE, "read")

    def teardown(self) -> None:
        for consumer, _next in self.consumers.values():
            consumer.close()
        self.consumers.clear()

    def _consumer_at(self, topic: str, partition: int, offset: int) -> tuple[Consumer, list[int]]:
        """A consumer of this one partition, positioned at `offset` (kept between calls)."""
        key = (topic, partition)
        entry = self.consumers.get(key)
        if entry is None:
            consumer = self.settings.consumer()
            consumer.assign([TopicPartition(topic, partition, offset)])
            entry = self.consumers[key] = (consumer, [offset])
        elif entry[1][0] != offset:  # resumed elsewhere meanwhile, or retried: go back
            entry[0].seek(TopicPartition(topic, partition, offset))
            entry[1][0] = offset
        return entry

    def initial_restriction(self, element: TopicPartitionKey) -> OffsetRange:
        topic, partition = element
        consumer = self.settings.consumer()
        try:
            start = start_offset(consumer, topic, partition, self.settings.timeout_s)
        finally:
            consumer.close()
        return OffsetRange(start, UNBOUNDED)

    def create_tracker(self, restriction: OffsetRange) -> PartitionTracker:
        return PartitionTracker(restriction)

    def split(self, element: TopicPartitionKey, restriction: OffsetRange) -> Iterator[OffsetRange]:
        yield restriction  # a partition's records keep their order: never split up front

    def restriction_size(self, element: TopicPartitionKey, restriction: OffsetRange) -> int:
        if restriction.stop == UNBOUNDED:
            return 1  # unknown backlog; every partition weighs the same
        return int(restriction.size())

    def truncate(self, element: TopicPartitionKey, restriction: OffsetRange) -> None:
        return None  # on drain, an endless partition has nothing left that must be read

    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        element: TopicPartitionKey,
        tracker: Any = RESTRICTION,
        watermark: Any = WATERMARK,
    ) -> Iterator[Any]:
        topic, partition = element
        position = tracker.current_restriction().start
        consumer, next_offset = self._consumer_at(topic, partition, position)
        if self._ahead(consumer, topic, partition, position) >= self.max_ahead:
            tracker.defer_remainder(Duration(seconds=self.idle_resume_s))
            return  # far enough ahead of the write step: read on once it committed
        deadline = time.monotonic() + self.process_s
        wait = self.poll_s  # only the call's first poll waits; the others take what is fetched
        stopped = False
        data: list[Any] = []
        while len(data) < self.max_chunk and time.monotonic() < deadline:
            messages = consumer.consume(num_messages=self.max_chunk - len(data), timeout=wait)
            wait = 0.0
            claimed = len(data)
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise ServiceUnavailableError(
                        f"Reading `{topic}`[{partition}] failed: {error.str()}"
                    )
                offset = message.offset()
                assert offset is not None  # data messages always carry their offset
                if not tracker.try_claim(offset):
                    # The runner checkpointed this element meanwhile: the rest is not ours.
                    # The consumer read past it, so the next call must seek.
                    stopped = True
                    break
                data.append(message)
            if stopped or len(data) == claimed:
                break  # caught up (or checkpointed): hand on what this call read
        if stopped:
            next_offset[0] = -1  # the consumer read past the checkpoint: the next call seeks
        if data:
            batch = from_kafka(topic, partition, data)
            if not stopped:
                next_offset[0] = batch.next_offset
            self.read.inc(len(data))
            chunk = Chunk(start=position, stop=batch.next_offset, batch=batch)
            yield TimestampedValue(chunk, self._advance(watermark, batch))
        if not stopped:  # (when stopped, the residual is already the runner's)
            if not data:
                # Nothing new: an idle partition must not hold back the pipeline's watermark.
                now = Timestamp.now() - Duration(seconds=1)
                current = watermark.current_watermark()
                if current is None or now > current:
                    watermark.set_watermark(now)
            tracker.defer_remainder(Duration(seconds=0 if data else self.idle_resume_s))

    def _ahead(self, consumer: Consumer, topic: str, partition: int, position: int) -> int:
        """How many records before `position` the group has not committed yet. Kafka is asked
        only when the last answer puts this partition `max_ahead` records ahead; an answer
        that does not come in time leaves the last one standing."""
        key = (topic, partition)
        committed = self.committed.setdefault(key, position)
        if position - committed >= self.max_ahead:
            tp = TopicPartition(topic, partition)
            try:
                [answer] = consumer.committed([tp], timeout=self.settings.timeout_s)
            except KafkaException as exc:
                log.info("the committed offset of `%s`[%d] did not come: %s", topic, partition, exc)
                return position - committed
            if answer.error is None and answer.offset >= 0:
                committed = self.committed[key] = max(committed, int(answer.offset))
        return position - committed

    @staticmethod
    def _advance(watermark: Any, batch: GuardBatch) -> Timestamp:
        """The chunk's event time (its newest record, never before the watermark)."""
        newest = max(0, pc.max(batch.column("timestamp_ms")).as_py() or 0)
        stamp = Timestamp(micros=newest * 1000)
        current = watermark.current_watermark()
        if current is not None and stamp < current:
            stamp = current
        watermark.set_watermark(stamp)
        return stamp


class DiscoverPartitions(beam.DoFn):
    """On every tick, lists the input topics' partitions (new ones included)."""

    def __init__(self, settings: KafkaSettings, topics: Sequence[str]) -> None:
        self.settings = settings
        self.topics = tuple(topics)

    def setup(self) -> None:
        self.consumer = self.settings.consumer()

    def teardown(self) -> None:
        self.consumer.close()

    def process(self, _tick: Any) -> Iterator[tuple[str, TopicPartitionKey]]:
        for topic, partition in partitions_of(self.consumer, self.topics, self.settings.timeout_s):
            yield f"{topic}/{partition}", (topic, partition)


class FirstSighting(beam.DoFn):
    """Passes each topic-partition on once: the first time discovery reports it."""

    def process(
        self,
        element: tuple[str, TopicPartitionKey],
        seen: Any = SEEN_STATE,
    ) -> Iterator[TopicPartitionKey]:
        if not seen.read():
            seen.write(True)
            yield element[1]


class ReadFromKafka(beam.PTransform):
    """Unbounded `Chunk`s from `topics`, from the group's committed offsets on; partitions
    added later are found within `discovery_interval_s`; a caught-up partition is polled
    again after `idle_poll_s`."""

    def __init__(
        self,
        settings: KafkaSettings,
        topics: Sequence[str],
        *,
        max_chunk: int = 500,
        discovery_interval_s: float = 10.0,
        idle_poll_s: float = 0.1,
        max_ahead: int = MAX_AHEAD,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.topics = tuple(topics)
        self.max_chunk = max_chunk
        self.discovery_interval_s = discovery_interval_s
        self.idle_poll_s = idle_poll_s
        self.max_ahead = max_ahead

    def expand(self, pbegin: Any) -> Any:
        return (
            pbegin
            | "Tick" >> PeriodicImpulse(fire_interval=self.discovery_interval_s)
            | "Discover" >> beam.ParDo(DiscoverPartitions(self.settings, self.topics))
            | "FirstSighting" >> beam.ParDo(FirstSighting())
            | "Read"
            >> beam.ParDo(
                ReadPartitions(
                    self.settings,
                    max_chunk=self.max_chunk,
                    idle_resume_s=self.idle_poll_s,
                    max_ahead=self.max_ahead,
                )
            )
        )
