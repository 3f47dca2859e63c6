"""What a stopped run says about itself: what was in flight when the stop signal came, and
what a restart will deliver again.

A stop never loses a record: offsets are committed only behind delivered records. But a
stop is not instant. The endless guard's streaming job is cancelled through its runner, and
bundles already running go on until the cancel reaches them; a bounded run finishes the
batches in hand. So the message counts, from the lineage store, the records whose lineage
was recorded after the signal (and how many of them the destination acknowledged), and the
records this run delivered past the committed offsets, which a restart reads again.
"""

from __future__ import annotations

import logging
from datetime import datetime

from confluent_kafka import OFFSET_INVALID, KafkaException, TopicPartition

from lineage_guard.guard import GuardConfig, KafkaIO
from lineage_guard.lineage.errors import LineageGuardError

log = logging.getLogger(__name__)


def stop_message(config: GuardConfig, signal_name: str, signal_at: datetime) -> str:
    """One paragraph for stderr; every number in it is read back from the lineage store and
    the group's committed offsets after the job ended."""
    head = f"lineage-guard: stopped by {signal_name}."
    rule = "Offsets are committed only behind delivered records: nothing is lost."
    if not config.lineage_store:
        return (
            f"{head} Work in flight may have delivered records after it (without lineage the "
            f"guard cannot count them). {rule} A restart delivers again whatever this run "
            "delivered past the committed offsets (at-least-once)."
        )
    try:
        after = _delivered(config, since=signal_at)
        committed = _committed(config.io) if isinstance(config.io, KafkaIO) else None
        again = _delivered(config, past=committed) if committed is not None else None
    except (LineageGuardError, KafkaException) as exc:
        log.warning("cannot say what the stop left in flight: %s", exc)
        return f"{head} {rule}"
    acked, unacked = after
    lines = [
        f"{head} Work already in flight went on: {acked} records were delivered after it"
        + (f" and {unacked} more sent without an acknowledgement recorded" if unacked else "")
        + "."
        if acked or unacked
        else f"{head} Nothing was delivered after it.",
        rule,
    ]
    if again is not None and isinstance(config.io, KafkaIO) and config.io.settings.exactly_once:
        lines.append(
            "A restart aborts what this run left in open transactions: `read_committed` "
            "readers see each record once."
        )
    elif again == (0, 0):
        lines.append(
            "A restart delivers nothing twice: every record this run delivered is behind the "
            "committed offsets."
        )
    elif again is not None:
        twice, maybe = again
        lines.append(
            f"A restart delivers again the {twice} records this run delivered past the "
            "committed offsets (at-least-once; `lineage trace` marks re-deliveries)"
            + (f", and the {maybe} sent without an acknowledgement" if maybe else "")
            + "."
        )
    return " ".join(lines)


def _delivered(
    config: GuardConfig,
    *,
    since: datetime | None = None,
    past: dict[tuple[str, int], int] | None = None,
) -> tuple[int, int]:
    """(acknowledged, not acknowledged) hops of this run, from the lineage store."""
    from lineage_guard.lineage.store import open_store

    assert config.lineage_store is not None
    with open_store(config.lineage_store) as store:
        rows = store.run_counts(config.pipeline_name, config.run_id, since=since, past=past)
    acked = sum(row.count for row in rows if row.confirmed)
    return acked, sum(row.count for row in rows) - acked


def _committed(io: KafkaIO) -> dict[tuple[str, int], int]:
    """The group's committed offset per input partition (0 where it has none)."""
    from lineage_guard.io.kafka_source import partitions_of

    timeout_s = io.settings.timeout_s
    consumer = io.settings.consumer()
    try:
        parts = partitions_of(consumer, io.input_topics, timeout_s)
        found = consumer.committed([TopicPartition(t, p) for t, p in parts], timeout=timeout_s)
    finally:
        consumer.close()
    return {
        (tp.topic, tp.partition): tp.offset if tp.offset != OFFSET_INVALID else 0 for tp in found
    }
