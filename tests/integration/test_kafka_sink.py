"""`KafkaSink` on the real broker: a refusal the broker reports only after the fact."""

from __future__ import annotations

import json
import os
import time
from typing import Any
from uuid import uuid4

from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from lineage_guard.arrow_batch import from_items
from lineage_guard.io.kafka import KafkaSettings, KafkaSink
from lineage_guard.items import Batch, Item, Source
from tests.integration.kafka_helpers import committed, drain, end_offsets, new_topics


def _lower_limit(bootstrap: str, topic: str, limit: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    entry = ConfigEntry(
        "max.message.bytes", str(limit), incremental_operation=AlterConfigOpType.SET
    )
    resource = ConfigResource("topic", topic, incremental_configs=[entry])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)


def test_a_record_refused_after_the_fact_is_quarantined_and_recorded_as_failed(
    kafka_bootstrap: str,
) -> None:
    src, out, quarantine = new_topics(kafka_bootstrap, "src", "out", "q")
    group = f"g-{uuid4().hex}"
    answered: list[tuple[Any, int, list[Any]]] = []
    sink = KafkaSink(
        KafkaSettings(bootstrap_servers=kafka_bootstrap, group_id=group),
        output_topic=out,
        quarantine_topic=quarantine,
        on_answered=answered.extend,
    )
    # The output topic's limit drops after the sink read it: only the broker can refuse now.
    _lower_limit(kafka_bootstrap, out, 10_000)
    time.sleep(2)  # the broker applies a topic's new config asynchronously
    value = os.urandom(50_000)  # incompressible: the broker limits compressed batches
    batch = from_items(
        Batch(
            topic=src,
            partition=0,
            items=(Item(source=Source(topic=src, partition=0, offset=7, key=b"k7", value=value)),),
        )
    )
    assert sink.prepare(batch) == batch  # within the limits the sink knows
    sink.write(batch, "receipt-1")
    sink.flush()
    sink.close()

    [(receipt, count, failures)] = answered
    assert (receipt, count) == ("receipt-1", 1)
    assert [f.offset for f in failures] == [7]
    assert failures[0].error.startswith(f"`{out}` refused it: ")
    assert "too large" in failures[0].error.lower()
    assert sum(end_offsets(kafka_bootstrap, out).values()) == 0
    [stopped] = drain(kafka_bootstrap, quarantine, 1)
    assert (stopped.key, stopped.value) == (b"k7", value)
    reasons = json.loads(stopped.header("lineage-guard.reasons") or b"[]")
    assert [r["rule"] for r in reasons] == ["output_refused"]
    assert stopped.header("lineage-guard.stage") == b"write"
    assert committed(kafka_bootstrap, group, src) == {0: 8}  # the partition moved on
