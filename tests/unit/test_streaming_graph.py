"""The endless guard's graph has no shuffle but the write step's key: the stages run fused with
the read. Each shuffle is a runner's scheduling round (on Prism 50 ms to several hundred ms);
the job used to group micro-batches (`GroupIntoBatches`, keyed state and a timer) and reshuffle
them before validation, which held a record about half a second under a steady load."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2

from lineage_guard.guard import GuardConfig, KafkaIO
from lineage_guard.io.kafka import KafkaSettings
from lineage_guard.streaming import build_streaming


def test_the_only_keyed_steps_are_partition_discovery_and_the_write() -> None:
    config = GuardConfig(
        io=KafkaIO(
            settings=KafkaSettings(bootstrap_servers="127.0.0.1:1", group_id="g"),
            input_topics=("in",),
            output_topic="out",
            quarantine_topic="q",
        )
    )
    pipeline = beam.Pipeline(runner="FnApiRunner")
    build_streaming(pipeline, config)
    transforms = pipeline.to_runner_api().components.transforms
    shuffles = [
        t.unique_name
        for t in transforms.values()
        if t.spec.urn == common_urns.primitives.GROUP_BY_KEY.urn
    ]
    keyed = []
    for t in transforms.values():
        if t.spec.urn != common_urns.primitives.PAR_DO.urn:
            continue
        payload = beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload)
        if payload.state_specs or payload.timer_family_specs:
            keyed.append(t.unique_name)
    assert shuffles == []
    assert sorted(keyed) == ["ReadKafka/FirstSighting", "Write"]
