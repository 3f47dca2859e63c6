"""The streaming source on the real broker: where a partition resumes, how far it reads ahead."""

from __future__ import annotations

from apache_beam.io.restriction_trackers import OffsetRange
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.runners.sdf_utils import RestrictionTrackerView, ThreadsafeRestrictionTracker
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions

from lineage_guard.io.kafka import KafkaSettings
from lineage_guard.io.kafka_source import (
    UNBOUNDED,
    PartitionTracker,
    ReadPartitions,
    start_offset,
)
from tests.integration.kafka_helpers import new_topics


def test_a_partition_added_after_the_client_read_the_topic_resumes_at_its_start(
    kafka_bootstrap: str,
) -> None:
    """The write step's long-lived consumer knows the topic with 3 partitions; a fourth is
    added and its first batch arrives: the look-up refreshes the metadata and answers (it
    raised `_UNKNOWN_PARTITION`, which failed the streaming job with exit 4)."""
    (topic,) = new_topics(kafka_bootstrap, "grow", partitions=3)
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap, group_id=f"g-{topic}")
    consumer = settings.consumer()
    try:
        assert [start_offset(consumer, topic, p, 10) for p in range(3)] == [0, 0, 0]
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        [future] = admin.create_partitions([NewPartitions(topic, 5)]).values()
        future.result(timeout=30)
        assert start_offset(consumer, topic, 3, 10) == 0
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        producer.list_topics(topic, timeout=10)
        for _ in range(3):
            producer.produce(topic, value=b"x", partition=4)
        assert producer.flush(10) == 0
        consumer.commit(offsets=[TopicPartition(topic, 4, 2)], asynchronous=False)
        assert start_offset(consumer, topic, 4, 10) == 2  # the group's committed offset
    finally:
        consumer.close()


def _read_until_it_rests(reader: ReadPartitions, topic: str, start: int) -> int:
    """Calls the reader on `topic`[0] from `start` as a runner does, resuming each call's
    residual where its chunk ended, until three calls in a row read nothing; returns where
    the next call would begin."""
    position, idle = start, 0
    while idle < 3:
        tracker = ThreadsafeRestrictionTracker(PartitionTracker(OffsetRange(position, UNBOUNDED)))
        watermark = ManualWatermarkEstimator(None)
        emitted = list(reader.process((topic, 0), RestrictionTrackerView(tracker), watermark))
        residual, _delay = tracker.deferred_status()
        assert residual is not None, "an endless partition always defers its remainder"
        if emitted:
            position, idle = emitted[-1].value.stop, 0
        else:
            idle += 1
        assert residual.start == position
    return position


def test_a_partition_is_read_at_most_max_ahead_records_past_the_committed_offset(
    kafka_bootstrap: str,
) -> None:
    """The write step commits behind what it delivered; the reader reads no further than
    `max_ahead` records past that, so a backlog waits in Kafka, not in the runner (where Prism
    handed a write step that fell behind 468,000 records as one bundle)."""
    (topic,) = new_topics(kafka_bootstrap, "ahead", partitions=1)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5})
    for n in range(5000):
        producer.produce(topic, value=b"m%d" % n, partition=0)
    assert producer.flush(30) == 0
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap, group_id=f"g-{topic}")
    reader = ReadPartitions(settings, max_chunk=500, max_ahead=1000)
    reader.setup()
    committer = settings.consumer()
    try:
        # No commit yet: up to 1000 past where this reader began (chunks of up to 500).
        first = _read_until_it_rests(reader, topic, 0)
        assert 1000 <= first < 1500, first
        # The write step delivered and committed the first 1000: the reader goes on.
        committer.commit(offsets=[TopicPartition(topic, 0, 1000)], asynchronous=False)
        second = _read_until_it_rests(reader, topic, first)
        assert 2000 <= second < 2500, second
        committer.commit(offsets=[TopicPartition(topic, 0, 5000)], asynchronous=False)
        assert _read_until_it_rests(reader, topic, second) == 5000
    finally:
        committer.close()
        reader.teardown()
