"""The endless guard as ONE streaming Beam job on Prism, against the real broker.

Proves: the CLI picks a streaming runner and says so; records produced while it runs arrive
within a bounded latency; a committed offset never passes a record that is not yet in the
allowed or quarantine topic; a kill -9 of the guard (its whole process group, Prism included)
and a restart lose nothing.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from lineage_guard.generate import generate
from lineage_guard.io.decode import encode_single_object
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


def _guard(bootstrap: str, src: str, out: str, q: str, prism: str, tmp: Path, log: Path) -> Any:
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
