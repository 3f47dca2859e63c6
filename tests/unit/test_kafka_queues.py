"""The Kafka clients' queues are bounded (peak memory does not grow with a run's length), and
the producer's queue always has room for the largest record it may send."""

from __future__ import annotations

from typing import Any

import pytest

from lineage_guard.io import kafka
from lineage_guard.io.kafka import KafkaSettings


@pytest.fixture
def configs(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    made: list[dict[str, Any]] = []
    monkeypatch.setattr(kafka, "_client", lambda kind, config: made.append(config))
    return made


def settings(**client: Any) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers="127.0.0.1:9", group_id="g", client=client)


def test_the_queues_are_bounded_by_default(configs: list[dict[str, Any]]) -> None:
    settings().producer()
    settings().consumer()
    producer, consumer = configs
    assert producer["queue.buffering.max.messages"] == 20_000
    assert producer["queue.buffering.max.kbytes"] == 16_384
    assert consumer["queued.max.messages.kbytes"] == 4_096
    assert consumer["queued.min.messages"] == 20_000
    # and a full queue does not hold the next fetch back for librdkafka's default second
    assert consumer["fetch.queue.backoff.ms"] == 10


def test_the_producer_queue_holds_two_of_the_largest_records(
    configs: list[dict[str, Any]],
) -> None:
    settings(**{"message.max.bytes": "52428800"}).producer()  # 50 MiB records
    assert configs[-1]["queue.buffering.max.kbytes"] == 2 * (52_428_800 // 1024 + 1)
    settings(**{"message.max.bytes": 52428800, "queue.buffering.max.kbytes": 4096}).producer()
    assert configs[-1]["queue.buffering.max.kbytes"] == 4096  # the user's own choice stands
    settings(**{"message.max.bytes": "lots"}).producer()  # librdkafka refuses it, not us
    assert configs[-1]["queue.buffering.max.kbytes"] == 16_384


def test_the_users_settings_override_the_consumer_prefetch(configs: list[dict[str, Any]]) -> None:
    settings(**{"queued.max.messages.kbytes": 65_536}).consumer()
    assert configs[-1]["queued.max.messages.kbytes"] == 65_536
