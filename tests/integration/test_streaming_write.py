"""The streaming job's write step (`DeliverAndCommit`) on the real broker: a bundle's batches
are written as they come, and the bundle ends with one wait for Kafka's acknowledgements and
one offset commit, never a commit before every record of the bundle was acknowledged.

(It used to wait and commit after every batch: one wait and one synchronous commit per
micro-batch, which made the write step the queue that held records under a steady load.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from lineage_guard.arrow_batch import from_kafka
from lineage_guard.guard import GuardConfig, KafkaIO
from lineage_guard.io.kafka import KafkaSettings
from lineage_guard.streaming import DeliverAndCommit, Part, stages_of
from tests.integration.kafka_helpers import committed, drain, end_offsets, new_topics
from tests.integration.test_streaming_guard import _produce, _values

OFFSET_INVALID = -1001  # what Kafka answers for a partition the group never committed


class State:
    """A keyed state cell as the runner hands one to the DoFn (one per key)."""

    def __init__(self) -> None:
        self.value: Any = None

    def read(self) -> Any:
        return self.value

    def write(self, value: Any) -> None:
        self.value = value


class CountingCommits:
    """The write step's own Kafka consumer, with its `commit` calls counted."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.commits: list[list[TopicPartition]] = []

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> Any:
        self.commits.append(offsets)
        return self.consumer.commit(offsets=offsets, asynchronous=asynchronous)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.consumer, name)


def _parts(bootstrap: str, src: str, config: GuardConfig, size: int) -> list[Part]:
    """`src`'s messages as the source hands them on (chunks of `size` per partition), checked
    by the job's stages, interleaved across partitions as one bundle may hold them."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "parts"})
    ends = end_offsets(bootstrap, src)
    consumer.assign([TopicPartition(src, p, 0) for p in ends])
    read: dict[int, list[Any]] = {p: [] for p in ends}
    while sum(map(len, read.values())) < sum(ends.values()):
        for m in consumer.consume(num_messages=1000, timeout=1.0):
            if m.error() is None:
                read[m.partition()].append(m)
    consumer.close()
    stages = [stage for _, stage in stages_of(config)]
    for stage in stages:
        stage.setup()
    by_partition = []
    for p, messages in read.items():
        parts = []
        for at in range(0, len(messages), size):
            batch = from_kafka(src, p, messages[at : at + size])
            for stage in stages:
                batch = stage.check(batch, None)
            parts.append(Part(key=f"{src}/{p}", spans=((at, batch.next_offset),), batch=batch))
        by_partition.append(parts)
    return [part for row in zip(*by_partition, strict=True) for part in row]


def test_a_bundle_commits_once_after_every_record_is_acknowledged(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    src, out, q = new_topics(kafka_bootstrap, "src", "out", "q", partitions=3)
    values = _values(300, seed=61)  # every 10th undecodable: quarantined
    _produce(kafka_bootstrap, src, values)
    group = f"g-{src}"
    config = GuardConfig(
        io=KafkaIO(
            settings=KafkaSettings(bootstrap_servers=kafka_bootstrap, group_id=group),
            input_topics=(src,),
            output_topic=out,
            quarantine_topic=q,
        ),
        lineage_store=f"sqlite:///{tmp_path}/lineage.db",
    )
    parts = _parts(kafka_bootstrap, src, config, size=25)
    assert len(parts) == 12  # 4 batches of each of the 3 partitions

    write = DeliverAndCommit(config)
    write.setup()
    spy = write.committer = CountingCommits(write.committer)
    states = {part.key: (State(), State()) for part in parts}
    try:
        write.start_bundle()
        for part in parts:
            frontier, waiting = states[part.key]
            write.process((part.key, part), frontier_state=frontier, waiting_state=waiting)
        # Written, not yet known to be acknowledged: nothing is committed.
        assert spy.commits == []
        assert committed(kafka_bootstrap, group, src) == dict.fromkeys(range(3), OFFSET_INVALID)
        write.finish_bundle()
    finally:
        write.teardown()

    ends = end_offsets(kafka_bootstrap, src)
    assert ends == {0: 100, 1: 100, 2: 100}
    [offsets] = spy.commits  # one commit for the bundle's twelve batches
    assert {(tp.partition, tp.offset) for tp in offsets} == set(ends.items())
    assert committed(kafka_bootstrap, group, src) == ends
    assert {key: frontier.read() for key, (frontier, _) in states.items()} == {
        f"{src}/{p}": 100 for p in range(3)
    }
    allowed = sorted(m.value for m in drain(kafka_bootstrap, out))
    quarantined = sorted(m.value for m in drain(kafka_bootstrap, q))
    assert allowed == sorted(v for _, v in values if not v.startswith(b"not avro"))
    assert quarantined == sorted(v for _, v in values if v.startswith(b"not avro"))
