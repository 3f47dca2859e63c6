"""The streaming source's look-ups on the real broker: where a partition resumes."""

from __future__ import annotations

from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions

from lineage_guard.io.kafka import KafkaSettings
from lineage_guard.io.kafka_source import start_offset
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
