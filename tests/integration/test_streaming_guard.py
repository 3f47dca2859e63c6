"""The endless guard as ONE streaming Beam job on Prism, against the real broker.

Proves: the CLI picks a streaming runner and says so; records produced while it runs arrive
within a bounded latency; a committed offset never passes a record that is not yet in the
allowed or quarantine topic; a kill -9 of the guard (its whole process group, Prism included)
and a restart lose nothing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions

from lineage_guard.generate import generate
from lineage_guard.io.decode import encode_single_object
from lineage_guard.lineage.store import open_store
from tests.integration.kafka_helpers import committed, drain, end_offsets, new_topics

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 3


@pytest.fixture(scope="session")
def prism() -> str:
    """The Prism binary: `LINEAGE_GUARD_PRISM` (CI builds it once with infra/prism/prism.sh),
    else built here by that script."""
    if path := os.environ.get("LINEAGE_GUARD_PRISM"):
        return path
    script = ROOT / "infra" / "prism" / "prism.sh"
    assert script.is_file(), "set LINEAGE_GUARD_PRISM or add infra/prism/prism.sh"
    built = subprocess.run(
        ["bash", str(script), "build"], capture_output=True, text=True, check=True
    )
    return built.stdout.strip().splitlines()[-1]


def _values(n: int, seed: int) -> list[tuple[bytes, bytes]]:
    """`n` unique messages: mostly valid records, every 10th undecodable (for quarantine)."""
    out = []
    for i, g in enumerate(generate(n, seed=seed)):
        key = g.record["record_id"].encode()
        if i % 10 == 9:
            out.append((key, b"not avro " + key))
        else:
            out.append((key, encode_single_object(g.record, g.schema)))
    return out


def _child_of_synthetic(seed: int) -> tuple[bytes, bytes, int]:
    """A HUMAN record whose parent is a SYNTHETIC one of `_values(…, seed)`, and the parent's
    partition: a human record cannot derive from synthetic content (`class_below_parent`)."""
    generated = list(generate(100, seed=seed))
    parent_at, parent = next(
        (i, g.record)
        for i, g in enumerate(generated)
        if i % 10 != 9 and g.record["provenance"]["content_class"] == "SYNTHETIC"
    )
    child = next(g for g in generated if g.record["provenance"]["content_class"] == "HUMAN")
    record = {**child.record, "record_id": str(uuid.uuid4())}
    record["provenance"] = {**record["provenance"], "parent_record_ids": [parent["record_id"]]}
    value = encode_single_object(record, child.schema)
    other = (parent_at + 1) % PARTITIONS  # never the parent's partition
    return record["record_id"].encode(), value, other


def _produce(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for n, (key, value) in enumerate(messages):
        producer.produce(topic, key=key, value=value, partition=n % PARTITIONS)
    assert producer.flush(30) == 0


def _guard(
    bootstrap: str, src: str, out: str, q: str, prism: str, tmp: Path, log: Path, *extra: str
) -> Any:
    """The endless guard as a user starts it; its stderr goes to `log` (a pipe could fill)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from lineage_guard.cli.main import main; main()",
            "run",
            "--bootstrap-servers",
            bootstrap,
            "--input-topic",
            src,
            "--output-topic",
            out,
            "--quarantine-topic",
            q,
            "--group-id",
            f"g-{src}",
            "--batch-size",
            "500",
            "--prism-location",
            prism,
            "--lineage-store",
            f"sqlite:///{tmp}/lineage.db",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        start_new_session=True,  # its own process group: kill -9 takes Prism down with it
    )


def _delivered(bootstrap: str, out: str, q: str) -> set[bytes]:
    """The source messages' values found in the allowed or quarantine topic."""
    return {m.value for t in (out, q) for m in drain(bootstrap, t) if m.value is not None}


def _wait_for(condition: Any, timeout_s: float, what: str, state: Any = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {state and state()}"
        time.sleep(0.2)


def _source_offsets(bootstrap: str, src: str) -> dict[bytes, tuple[int, int]]:
    return {m.value: (m.partition, m.offset) for m in drain(bootstrap, src) if m.value}


def _assert_commits_behind_delivery(bootstrap: str, src: str, out: str, q: str) -> int:
    """Reads the group's committed offsets, THEN the outputs: every source record below a
    committed offset must already be delivered. Returns how many offsets were committed."""
    commits = committed(bootstrap, f"g-{src}", src)
    delivered = _delivered(bootstrap, out, q)
    behind = [
        (p, o)
        for value, (p, o) in _source_offsets(bootstrap, src).items()
        if o < commits[p] and value not in delivered
    ]
    assert not behind, f"offsets committed past undelivered records: {behind[:5]}"
    return sum(max(c, 0) for c in commits.values())


def _latencies(bootstrap: str, src: str, out: str, valid: list[tuple[bytes, bytes]]) -> list[float]:
    """Produce → allowed-topic seconds for each of the `valid` records, produced one at a time."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"lat-{out}"})
    consumer.assign([TopicPartition(out, p, end) for p, end in end_offsets(bootstrap, out).items()])
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    seconds = []
    try:
        for i, (key, value) in enumerate(valid):
            producer.produce(src, key=key, value=value, partition=i % PARTITIONS)
            producer.flush(10)
            sent = time.monotonic()
            while True:
                got = [m for m in consumer.consume(num_messages=10, timeout=0.05) if not m.error()]
                if any(m.value() == value for m in got):
                    seconds.append(time.monotonic() - sent)
                    break
                assert time.monotonic() - sent < 30, f"record {i} never arrived"
    finally:
        consumer.close()
    return seconds


@pytest.fixture
def topics(kafka_bootstrap: str) -> Iterator[tuple[str, str, str]]:
    src, out, q = new_topics(kafka_bootstrap, "src", "out", "q", partitions=PARTITIONS)
    yield src, out, q


def test_endless_guard_is_one_streaming_job_that_survives_kill_9(
    kafka_bootstrap: str, topics: tuple[str, str, str], prism: str, tmp_path: Path
) -> None:
    src, out, q = topics
    first = _values(3000, seed=1)
    _produce(kafka_bootstrap, src, first)

    guard = _guard(kafka_bootstrap, src, out, q, prism, tmp_path, tmp_path / "first.log")
    try:
        wanted = {v for _, v in first}
        _wait_for(
            lambda: wanted <= _delivered(kafka_bootstrap, out, q), 120, "the first 3000 records"
        )
        assert guard.poll() is None, "the endless guard must keep running"
        # A child arriving in a later round, in another partition than its SYNTHETIC parent
        # (delivered above), is judged by the parent's class the lineage store recorded.
        child_key, child, child_partition = _child_of_synthetic(seed=1)
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        producer.produce(src, key=child_key, value=child, partition=child_partition)
        assert producer.flush(30) == 0
        _wait_for(lambda: child in {m.value for m in drain(kafka_bootstrap, q)}, 60, "the child")
        (stopped,) = [m for m in drain(kafka_bootstrap, q) if m.value == child]
        assert dict(stopped.headers)["__rule.name"] == b"class_below_parent"
        # Records produced while it runs arrive one by one, each within seconds.
        singles = [m for m in _values(40, seed=77) if not m[1].startswith(b"not avro")][:30]
        seconds = _latencies(kafka_bootstrap, src, out, singles)
        p50, p99 = statistics.median(seconds), max(seconds)
        print(f"prism streaming produce→allowed: p50 {p50:.3f} s, max {p99:.3f} s")
        assert p99 < 5.0, seconds

        # A stream keeps flowing while offsets are checked and the guard is killed.
        second = _values(6000, seed=2)
        feeder = threading.Thread(
            target=lambda: [
                _produce(kafka_bootstrap, src, second[i : i + 200]) or time.sleep(0.3)
                for i in range(0, len(second), 200)
            ]
        )
        feeder.start()
        time.sleep(1.0)
        during = _assert_commits_behind_delivery(kafka_bootstrap, src, out, q)
        assert during >= 3000
        os.killpg(guard.pid, signal.SIGKILL)
        guard.wait(timeout=30)
        # With the guard dead the commits hold still: still none past an undelivered record.
        at_kill = _assert_commits_behind_delivery(kafka_bootstrap, src, out, q)
        assert at_kill >= during
        feeder.join(timeout=120)
    finally:
        if guard.poll() is None:
            os.killpg(guard.pid, signal.SIGKILL)
            guard.wait(timeout=30)

    assert at_kill < sum(end_offsets(kafka_bootstrap, src).values()), "nothing left to resume"

    restarted = _guard(kafka_bootstrap, src, out, q, prism, tmp_path, tmp_path / "second.log")
    try:
        everything = {v for _, v in first + second + singles} | {child}
        _wait_for(
            lambda: everything <= _delivered(kafka_bootstrap, out, q),
            180,
            "every record after the restart",
        )
        _wait_for(
            lambda: (
                committed(kafka_bootstrap, f"g-{src}", src) == end_offsets(kafka_bootstrap, src)
            ),
            60,
            "offsets committed to the end",
            lambda: (
                committed(kafka_bootstrap, f"g-{src}", src),
                end_offsets(kafka_bootstrap, src),
            ),
        )
        _assert_commits_behind_delivery(kafka_bootstrap, src, out, q)
        restarted.send_signal(signal.SIGTERM)  # a normal stop: the guard cancels its job
        restarted.wait(timeout=60)
    finally:
        if restarted.poll() is None:
            os.killpg(restarted.pid, signal.SIGKILL)
            restarted.wait(timeout=30)
    stderr = (tmp_path / "second.log").read_text()
    assert "one streaming job on PrismRunner" in stderr, stderr
    # A stopped run exits 130 with its summary, endless or bounded (the CLI's one stop path).
    assert restarted.returncode == 130, stderr
    assert "lineage-guard: stopped by" in stderr, stderr
    # Nothing lost; what the killed run delivered but had not committed came again.
    allowed = [m.value for m in drain(kafka_bootstrap, out)]
    quarantined = [m.value for m in drain(kafka_bootstrap, q)]
    expected_allowed = {v for _, v in first + second if not v.startswith(b"not avro")}
    assert set(allowed) == expected_allowed | {v for _, v in singles}
    assert set(quarantined) == {v for _, v in first + second if v.startswith(b"not avro")} | {child}


def _summary(stderr: str) -> dict[str, int]:
    """`read N, allowed N, quarantined N, blocked N` from a run's summary line."""
    line = next(line for line in stderr.splitlines() if line.startswith("lineage-guard run `"))
    found = re.findall(r"(read|allowed|quarantined|blocked) (\d+)", line)
    return {name: int(n) for name, n in found}


def _ol_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _sizes(bootstrap: str, out: str, q: str) -> tuple[int, int]:
    return sum(end_offsets(bootstrap, out).values()), sum(end_offsets(bootstrap, q).values())


def test_counts_equal_the_topics_and_the_stop_message_says_what_was_in_flight(
    kafka_bootstrap: str, topics: tuple[str, str, str], prism: str, tmp_path: Path
) -> None:
    """Counts come from the lineage store: every RUNNING event and the final summary equal
    what reached the topics (the runner's metrics lagged: `allowed 30` for 72,041). A SIGTERM
    under load: the stop message says how many records were delivered after the signal and
    how many a restart delivers again, and the restart does exactly that."""
    src, out, q = topics
    store = f"sqlite:///{tmp_path}/lineage.db"
    ol = tmp_path / "ol.jsonl"
    first = _values(3000, seed=31)
    _produce(kafka_bootstrap, src, first)
    guard = _guard(
        kafka_bootstrap, src, out, q, prism, tmp_path, tmp_path / "first.log",
        "--openlineage", f"file:{ol}", "--openlineage-interval", "1",
    )  # fmt: skip
    second = _values(20000, seed=32)
    try:
        _wait_for(lambda: sum(_sizes(kafka_bootstrap, out, q)) == 3000, 180, "3000 records")
        # A RUNNING event emitted from now on counts exactly what is in the topics.
        emitted = len(_ol_events(ol))
        _wait_for(lambda: len(_ol_events(ol)) > emitted + 1, 30, "two more RUNNING events")
        counts = _ol_events(ol)[-1]["run"]["facets"]["lineageGuard_counts"]["byDecision"]
        allowed_n, stopped_n = _sizes(kafka_bootstrap, out, q)
        assert counts["allowed"] == allowed_n
        assert counts["quarantined"] + counts["blocked"] == stopped_n

        # Under a steady load, SIGTERM: bundles in flight go on until the cancel reaches them.
        feeder = threading.Thread(
            target=lambda: [
                _produce(kafka_bootstrap, src, second[i : i + 500]) or time.sleep(0.1)
                for i in range(0, len(second), 500)
            ]
        )
        feeder.start()
        _wait_for(lambda: sum(_sizes(kafka_bootstrap, out, q)) > 6000, 120, "records flowing")
        signalled = datetime.now(UTC)
        guard.send_signal(signal.SIGTERM)
        guard.wait(timeout=120)
        feeder.join(timeout=120)
    finally:
        if guard.poll() is None:
            os.killpg(guard.pid, signal.SIGKILL)
            guard.wait(timeout=30)
    stderr = (tmp_path / "first.log").read_text()
    assert guard.returncode == 130, stderr
    assert "nothing was delivered after it" not in stderr
    said = re.search(
        r"stopped by SIGTERM\. (?:Work already in flight went on: (\d+) records were delivered"
        r" after it(?: and (\d+) more sent without an acknowledgement recorded)?|Nothing was"
        r" delivered after it)\. Offsets are committed only behind delivered records: nothing is"
        r" lost\. (?:A restart delivers nothing twice: every record this run delivered is"
        r" behind the committed offsets|A restart delivers again the (\d+) records this run"
        r" delivered past the committed offsets \(at-least-once; `lineage trace` marks"
        r" re-deliveries\)(?:, and the (\d+) sent without an acknowledgement)?)\.",
        " ".join(stderr.split()),
    )
    assert said, stderr
    after, after_unacked, again, again_unacked = (int(n or 0) for n in said.groups())
    # the message's figures are what the store holds of this run after the signal (which the
    # guard noted within a second of it being sent)
    with open_store(store) as opened:
        since_sent = len(list(opened.scan(since=signalled)))
        a_second_later = len(list(opened.scan(since=signalled + timedelta(seconds=1))))
    assert a_second_later <= after + after_unacked <= since_sent
    # the final summary counts this run's lineage: every record it delivered, and no more
    # than the ones it sent without an acknowledgement besides
    first_run = _summary(stderr)
    stopped = first_run["quarantined"] + first_run["blocked"]
    assert first_run["read"] == first_run["allowed"] + stopped
    delivered = _sizes(kafka_bootstrap, out, q)
    assert first_run["allowed"] >= delivered[0] and stopped >= delivered[1]
    assert first_run["read"] <= sum(delivered) + after_unacked

    before = _sizes(kafka_bootstrap, out, q)
    restarted = _guard(kafka_bootstrap, src, out, q, prism, tmp_path, tmp_path / "second.log")
    try:
        everything = {v for _, v in first + second}
        _wait_for(lambda: everything <= _delivered(kafka_bootstrap, out, q), 240, "every record")
        _wait_for(
            lambda: (
                committed(kafka_bootstrap, f"g-{src}", src) == end_offsets(kafka_bootstrap, src)
            ),
            60,
            "offsets committed to the end",
        )
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(timeout=120)
    finally:
        if restarted.poll() is None:
            os.killpg(restarted.pid, signal.SIGKILL)
            restarted.wait(timeout=30)
    stderr = (tmp_path / "second.log").read_text()
    values = [m.value for t in (out, q) for m in drain(kafka_bootstrap, t)]
    duplicates = len(values) - len(set(values))
    assert again <= duplicates <= again + again_unacked, (again, again_unacked, duplicates)
    # the restarted run's counts: exactly what it added to the topics
    second_run = _summary(stderr)
    now = _sizes(kafka_bootstrap, out, q)
    assert second_run["allowed"] == now[0] - before[0]
    assert second_run["quarantined"] + second_run["blocked"] == now[1] - before[1]
    said = " ".join(stderr.split())  # stopped idle, everything committed
    assert "Nothing was delivered after it." in said, said
    assert "A restart delivers nothing twice" in said, said


def test_partitions_added_under_load_are_read_without_a_failure(
    kafka_bootstrap: str, topics: tuple[str, str, str], prism: str, tmp_path: Path
) -> None:
    """Partitions added to the input topic while the job runs and records flow (3 → 4 → 6),
    each written to at once: the guard finds them (every 10 s), delivers everything and
    commits every partition to its end; the job never fails (it did: `Kafka did not tell
    where to resume s1.in[3]: _UNKNOWN_PARTITION`, exit 4)."""
    src, out, q = topics
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    messages = _values(9000, seed=41)
    guard = _guard(kafka_bootstrap, src, out, q, prism, tmp_path, tmp_path / "guard.log")
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5})
    partitions = PARTITIONS
    try:
        for n, (key, value) in enumerate(messages):
            if n in (1500, 4500):  # add partitions under load, then write to them at once
                partitions += 1 if n == 1500 else 2
                [future] = admin.create_partitions([NewPartitions(src, partitions)]).values()
                future.result(timeout=30)
            if n % 100 == 0:
                assert guard.poll() is None, (tmp_path / "guard.log").read_text()
                time.sleep(0.1)  # about 1000 records/s
            while True:
                try:
                    producer.produce(src, key=key, value=value, partition=n % partitions)
                    break
                except BufferError:
                    producer.poll(0.05)
                except KafkaException as exc:  # the new partition is not in its metadata yet
                    assert exc.args[0].code() == KafkaError._UNKNOWN_PARTITION, exc
                    producer.list_topics(src, timeout=10)
                    producer.poll(0.05)
        assert producer.flush(60) == 0
        wanted = {v for _, v in messages}
        _wait_for(
            lambda: wanted <= _delivered(kafka_bootstrap, out, q) or guard.poll() is not None,
            180,
            "every record, the new partitions' included",
        )
        assert guard.poll() is None, (tmp_path / "guard.log").read_text()
        _wait_for(
            lambda: (
                committed(kafka_bootstrap, f"g-{src}", src) == end_offsets(kafka_bootstrap, src)
            ),
            60,
            "every partition committed to its end",
            lambda: (
                committed(kafka_bootstrap, f"g-{src}", src),
                end_offsets(kafka_bootstrap, src),
            ),
        )
        assert len(end_offsets(kafka_bootstrap, src)) == 6
        assert min(end_offsets(kafka_bootstrap, src).values()) > 0  # each new one written to
    finally:
        guard.send_signal(signal.SIGTERM)
        try:
            guard.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(guard.pid, signal.SIGKILL)
            guard.wait(timeout=30)
    assert guard.returncode == 130, (tmp_path / "guard.log").read_text()
