"""Fault injection on the real broker and databases, each case checked record by record.

Every case counts, by record key, what the output and quarantine topics hold (read as a
`read_committed` consumer would) against what was produced: nothing lost, duplicates counted
and bounded, lineage rows against messages, `lineage verify` clean. Each case writes its
figures to `build/test-artifacts/faults.json`; `python3 -m tests.integration.faults_table`
prints them as one table.

Services that a case stops (the broker, PostgreSQL) are instances of its own, started from
`infra/` on other ports: the shared ones are never touched. Kill moments are random; the seed
is in the figures (`FAULT_SEED` replays one).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from lineage_guard.generate import CONTACT, EMAIL_ACTIVITY, generate
from lineage_guard.io.decode import encode_single_object
from lineage_guard.lineage.hops import Delivery
from lineage_guard.lineage.store import open_store
from tests.cli import run_cli
from tests.integration import faults_table
from tests.integration.kafka_helpers import Message, committed, end_offsets, guard_args
from tests.integration.services import control, local_kafka, local_postgres

SEED = int(os.environ.get("FAULT_SEED", time.time_ns() % 1_000_000))
OWN_KAFKA_PORT = 19192  # and 19193: never the shared broker's 19092
OWN_PG_PORT = 15532  # never the shared 15432
GUARD = [sys.executable, "-c", "from lineage_guard.cli.main import main; main()"]
Sent = list[tuple[bytes, bytes, list[tuple[str, bytes]]]]


def _command(request: pytest.FixtureRequest) -> str:
    return f"FAULT_SEED={SEED} python3 -m pytest {request.node.nodeid}"


def _topics(
    bootstrap: str,
    partitions: int = 3,
    source_config: dict[str, str] | None = None,
    output_config: dict[str, str] | None = None,
) -> tuple[str, str, str]:
    """Source, output and quarantine topics (by default with the broker's defaults)."""
    suffix = uuid.uuid4().hex
    names = (f"t-src-{suffix}", f"t-out-{suffix}", f"t-q-{suffix}")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [
            NewTopic(
                n,
                num_partitions=partitions,
                replication_factor=1,
                config={names[0]: source_config, names[1]: output_config}.get(n) or {},
            )
            for n in names
        ]
    )
    for future in futures.values():
        future.result(timeout=30)
    return names


def _records(count: int, seed: int) -> Sent:
    return [
        (g.record["record_id"].encode(), encode_single_object(g.record, g.schema), [])
        for g in generate(count, seed=seed, entities=(CONTACT, EMAIL_ACTIVITY))
    ]


def _produce(bootstrap: str, topic: str, sent: Sent, **config: Any) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, **config})
    for key, value, headers in sent:
        producer.produce(topic, key=key, value=value, headers=headers or None)
        producer.poll(0)
    assert producer.flush(60) == 0


def _read_all(bootstrap: str, topic: str, isolation: str = "read_committed") -> list[Message]:
    """Everything a `read_committed` consumer (or `isolation`) sees in `topic`, to each
    partition's end.

    The end is the high watermark (`ends`, every record and transaction marker written), not
    the first end-of-partition a `read_committed` consumer reports: that one is the last
    stable offset, which stops short of a committed transaction whose markers the
    coordinator has not written yet (it writes them after `commit_transaction` returned, later
    still after a broker restart). So a partition is read once its position passed its
    high watermark."""
    ends = end_offsets(bootstrap, topic)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": isolation,
            "fetch.message.max.bytes": 10_000_000,
        }
    )
    try:
        parts = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        waiting, out = {p for p in parts if ends.get(p, 0) > 0}, []
        deadline = time.monotonic() + 120
        while waiting and time.monotonic() < deadline:
            for m in consumer.consume(num_messages=2000, timeout=1.0):
                error = m.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        [at] = consumer.position([TopicPartition(topic, m.partition())])
                        if at.offset >= ends[m.partition()]:
                            waiting.discard(m.partition())
                    continue
                out.append(
                    Message(m.key(), m.value(), tuple(m.headers() or ()), m.partition(), m.offset())
                )
        assert not waiting, f"could not read {topic} to its end"
        return out
    finally:
        consumer.close()


def _total(offsets: dict[int, int]) -> int:
    return sum(max(o, 0) for o in offsets.values())


def _args(bootstrap: str, topics: tuple[str, str, str], group: str, store: str) -> list[str]:
    return [
        *guard_args(bootstrap, *topics, group),
        "--batch-size",
        "500",
        "--lineage-store",
        store,
    ]


def _figures(
    bootstrap: str, sent: Sent, topics: tuple[str, str, str], store: str, fault: str
) -> dict[str, Any]:
    """What the topics hold against what was sent, and the lineage against both."""
    _, out, quarantine = topics
    delivered, stopped = _read_all(bootstrap, out), _read_all(bootstrap, quarantine)
    copies = Counter(m.key for m in [*delivered, *stopped])
    keys = {key for key, _, _ in sent}
    verify = run_cli("lineage", "verify", "--lineage-store", store, "--format", "json")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    verified = json.loads(verify.stdout)
    with open_store(store, create=False) as lineage:
        hops = lineage.hops([key.decode() for key in keys])
    confirmed = Counter(h.hop.record_id for h in hops if h.delivery is Delivery.CONFIRMED)
    lost = keys - set(copies)
    if lost:  # written and aborted (in the topic uncommitted), or never written?
        written = {
            m.key: (m.partition, m.offset) for m in _read_all(bootstrap, out, "read_uncommitted")
        }
        where = sorted(written[k] for k in lost if k in written)
        lost_detail = {
            "lost_written_uncommitted": len(where),
            "lost_offsets": f"{where[0]}..{where[-1]}" if where else None,
            "lost_confirmed_in_lineage": sum(1 for k in lost if confirmed[k.decode()]),
        }
    else:
        lost_detail = {}
    return {
        "fault": fault,
        "seed": SEED,
        "records_in": len(sent),
        "out": len(delivered),
        "quarantined": len(stopped),
        "duplicates": sum(n - 1 for n in copies.values()),
        "lost": len(lost),
        **lost_detail,
        "foreign": len(set(copies) - keys),
        "lineage_rows": len(hops),
        "lineage_confirmed": sum(confirmed.values()),
        "lineage_confirmed_records": len(confirmed),
        "messages": len(delivered) + len(stopped),
        "verify": f"ok ({verified['batches']} batches, {verified['hops']} hops)",
    }


def _assert_complete(figures: dict[str, Any]) -> None:
    """Nothing lost or invented; every record's delivery confirmed at least once; lineage
    never claims more deliveries than the topics hold, and covers every message."""
    assert figures["lost"] == 0, figures
    assert figures["foreign"] == 0, figures
    assert figures["lineage_confirmed_records"] == figures["records_in"], figures
    assert figures["lineage_confirmed"] <= figures["messages"] <= figures["lineage_rows"], figures


def _wait_written(
    bootstrap: str, topic: str, at_least: int, process: subprocess.Popen[bytes], timeout: float
) -> bool:
    """Until `topic` holds `at_least` messages (True) or the guard ended (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _total(end_offsets(bootstrap, topic)) >= at_least:
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.1)
    raise AssertionError(f"{topic} did not reach {at_least} messages in {timeout:.0f} s")


def _kill_runs(
    bootstrap: str,
    topics: tuple[str, str, str],
    args: list[str],
    group: str,
    kills: int,
    rng: random.Random,
) -> tuple[int, int]:
    """Runs the guard `kills` times, each killed with SIGKILL after a random number of
    written records; returns (kills that landed mid-run, records written past the offsets
    the killed runs committed: what a rerun must deliver again)."""
    src, out, _ = topics
    landed = redelivered = 0
    for _ in range(kills):
        out_before = _total(end_offsets(bootstrap, out))
        done_before = _total(committed(bootstrap, group, src))
        process = subprocess.Popen(
            [*GUARD, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        reached = _wait_written(bootstrap, out, out_before + rng.randint(800, 6000), process, 180)
        time.sleep(rng.uniform(0.0, 0.3))
        process.send_signal(signal.SIGKILL)
        _, stderr = process.communicate(timeout=60)
        if reached and process.returncode == -signal.SIGKILL:
            landed += 1
        else:
            assert process.returncode == 0, stderr.decode()
        written = _total(end_offsets(bootstrap, out)) - out_before
        redelivered += written - (_total(committed(bootstrap, group, src)) - done_before)
    return landed, redelivered


def test_kill9_at_random_points_at_least_once(
    kafka_bootstrap: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    rng = random.Random(SEED)
    topics = _topics(kafka_bootstrap)
    sent = _records(20_000, seed=41)
    _produce(kafka_bootstrap, topics[0], sent)
    group, store = f"g-{uuid.uuid4().hex}", f"sqlite:///{tmp_path}/lineage.db"
    args = _args(kafka_bootstrap, topics, group, store)

    landed, redelivered = _kill_runs(kafka_bootstrap, topics, args, group, 3, rng)
    final = run_cli(*args)
    assert final.returncode == 0, final.stderr

    figures = _figures(kafka_bootstrap, sent, topics, store, "kill -9 x3, at-least-once")
    _assert_complete(figures)
    assert landed >= 1, "at least one kill must land mid-run"
    # Exactly the records the killed runs wrote past their committed offsets came twice.
    assert figures["duplicates"] == redelivered, figures
    assert figures["quarantined"] == 0
    assert committed(kafka_bootstrap, group, topics[0]) == end_offsets(kafka_bootstrap, topics[0])
    figures.update(
        command=_command(request),
        notes=f"{landed} kills mid-run; duplicates = records written past committed offsets",
    )
    faults_table.record("kill9_at_least_once", figures)


def test_kill9_at_random_points_exactly_once(
    kafka_bootstrap: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    rng = random.Random(SEED + 1)
    topics = _topics(kafka_bootstrap)
    sent = _records(20_000, seed=42)
    _produce(kafka_bootstrap, topics[0], sent)
    group, store = f"g-{uuid.uuid4().hex}", f"sqlite:///{tmp_path}/lineage.db"
    args = [*_args(kafka_bootstrap, topics, group, store), "--exactly-once"]

    landed, _ = _kill_runs(kafka_bootstrap, topics, args, group, 3, rng)
    final = run_cli(*args)
    assert final.returncode == 0, final.stderr

    figures = _figures(kafka_bootstrap, sent, topics, store, "kill -9 x3, --exactly-once")
    assert landed >= 1, "at least one kill must land mid-run"
    assert figures["duplicates"] == 0, figures  # as a read_committed reader sees the topics
    assert figures["lost"] == 0 and figures["foreign"] == 0, figures
    assert figures["out"] == len(sent), figures
    # Lineage confirms a batch only after its transaction committed: never more than the
    # topics hold; a kill between commit and confirmation leaves at most one batch (500) per
    # partition unconfirmed, shown as `sending`, never as delivered.
    assert figures["lineage_confirmed"] <= figures["messages"] <= figures["lineage_rows"]
    assert figures["lineage_confirmed_records"] >= len(sent) - landed * 3 * 500, figures
    assert committed(kafka_bootstrap, group, topics[0]) == end_offsets(kafka_bootstrap, topics[0])
    figures.update(command=_command(request), notes=f"{landed} kills mid-run")
    faults_table.record("kill9_exactly_once", figures)


@pytest.fixture(scope="module")
def own_kafka() -> Iterator[str]:
    with local_kafka(port=OWN_KAFKA_PORT) as servers:
        yield servers


def test_broker_stop_and_start_mid_run(
    own_kafka: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    broker = control(own_kafka)
    assert broker is not None and own_kafka.endswith(f":{OWN_KAFKA_PORT}")
    topics = _topics(own_kafka)
    sent = _records(20_000, seed=43)
    _produce(own_kafka, topics[0], sent)
    group, store = f"g-{uuid.uuid4().hex}", f"sqlite:///{tmp_path}/lineage.db"
    args = _args(own_kafka, topics, group, store)

    process = subprocess.Popen([*GUARD, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert _wait_written(own_kafka, topics[1], 2000, process, 180), "the guard ended too early"
    broker.stop()
    time.sleep(5)
    broker.start()
    _, stderr = process.communicate(timeout=300)
    outage_exit, said = process.returncode, stderr.decode().strip().splitlines()
    # It rides out the outage (exit 0) or, past its 30 s timeouts, stops as an outage (exit 4)
    # with nothing unacknowledged committed.
    # (Beam still logs the worker's exception above our one line: issue 12's CLI part.)
    assert outage_exit in (0, 4), stderr.decode()
    written = _total(end_offsets(own_kafka, topics[1]))
    redelivered = written - _total(committed(own_kafka, group, topics[0]))
    final = run_cli(*args)  # picks up whatever the outage run did not commit
    assert final.returncode == 0, final.stderr

    figures = _figures(own_kafka, sent, topics, store, "broker stop 5 s + start")
    _assert_complete(figures)
    # Exactly the records written past the committed offsets came twice.
    assert figures["duplicates"] == redelivered, figures
    last = said[-1] if outage_exit and said else ""
    figures.update(
        command=_command(request),
        notes=f"own broker on :{OWN_KAFKA_PORT}; the run across the outage exited "
        f"{outage_exit} {last}".strip(),
    )
    faults_table.record("broker_stop_start", figures)


# An open defect, seen in about 3 of 7 runs on a busy machine (diagnosed, not fixed): after the
# broker restart, a batch whose `commit_transaction` librdkafka reported successful keeps its
# records and offsets in a transaction the restarted coordinator neither commits nor ends
# (no commit marker follows its records; `InitProducerId` of later producers does not end it).
# Then either the next batch's abort sweeps those records away although lineage confirmed
# them, or, when no later transaction touches the partition, the group's offset never settles
# and the run exits 4. Each way is marked xfail below by its exact signature (records written
# and left uncommitted; the offsets look-up timing out): any other loss still fails the test.
OPEN_TRANSACTION_DEFECT = (
    "known open defect: a transaction reported committed was left open by the restarted "
    "broker's coordinator (README, Faults: exactly-once across a broker restart)"
)


def test_exactly_once_rides_out_a_10_s_broker_restart(
    own_kafka: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Issue 19.8: `--exactly-once` exited 4 after `NOT_COORDINATOR` then `_FENCED`, with 20
    tracebacks and 10,212 lines on stderr, where at-least-once rode the restart out (and
    librdkafka 2.16 could leave `send_offsets_to_transaction` waiting forever). Now the
    interrupted transaction is aborted or its producer replaced, and the batch written again:
    exit 0, every record exactly once as a read_committed reader sees, a few lines."""
    broker = control(own_kafka)
    assert broker is not None and own_kafka.endswith(f":{OWN_KAFKA_PORT}")
    topics = _topics(own_kafka)
    sent = _records(20_000, seed=48)
    _produce(own_kafka, topics[0], sent)
    group, store = f"g-{uuid.uuid4().hex}", f"sqlite:///{tmp_path}/lineage.db"
    args = [*_args(own_kafka, topics, group, store), "--exactly-once"]

    process = subprocess.Popen([*GUARD, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert _wait_written(own_kafka, topics[1], 2000, process, 180), "the guard ended too early"
    broker.stop()
    time.sleep(10)
    broker.start()
    _, stderr = process.communicate(timeout=600)
    said = stderr.decode()
    if process.returncode == 4 and "Failed to get committed offsets" in said:
        pytest.xfail(OPEN_TRANSACTION_DEFECT)  # the same defect, when no later batch aborts it
    assert process.returncode == 0, said
    assert "Traceback" not in said, said
    lines = said.strip().splitlines()
    assert len(lines) <= 40, said
    assert "read 20000, allowed 20000, quarantined 0" in said, said
    print(said)  # shown when an assertion below fails

    figures = _figures(own_kafka, sent, topics, store, "broker restart 10 s, --exactly-once")
    if figures["lost"] and figures.get("lost_written_uncommitted") == figures["lost"]:
        pytest.xfail(f"{OPEN_TRANSACTION_DEFECT} {figures}")
    _assert_complete(figures)
    assert figures["duplicates"] == 0 and figures["out"] == len(sent), figures
    assert figures["lineage_confirmed"] == figures["messages"] == len(sent), figures
    assert committed(own_kafka, group, topics[0]) == end_offsets(own_kafka, topics[0])
    figures.update(
        command=_command(request),
        notes=f"own broker on :{OWN_KAFKA_PORT}; the run across the restart exited 0 with"
        f" {len(lines)} lines on stderr, no traceback",
    )
    faults_table.record("broker_restart_exactly_once", figures)


def test_database_stop_and_start_mid_run(
    kafka_bootstrap: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with local_postgres(port=OWN_PG_PORT) as dsn:
        database = control(dsn)
        assert database is not None and f":{OWN_PG_PORT}/" in dsn
        topics = _topics(kafka_bootstrap)
        sent = _records(20_000, seed=44)
        _produce(kafka_bootstrap, topics[0], sent)
        group = f"g-{uuid.uuid4().hex}"
        args = _args(kafka_bootstrap, topics, group, dsn)

        process = subprocess.Popen(
            [*GUARD, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        assert _wait_written(kafka_bootstrap, topics[1], 2000, process, 180)
        database.stop()
        time.sleep(1)
        frozen = _total(end_offsets(kafka_bootstrap, topics[1]))
        time.sleep(4)
        # Fails closed: nothing is delivered while its lineage cannot be recorded.
        assert _total(end_offsets(kafka_bootstrap, topics[1])) == frozen
        database.start()
        _, stderr = process.communicate(timeout=300)
        # Every stage that uses the store (the write step, and Validate looking up parents'
        # classes) waits the outage out through the same retry: the run ends normally.
        outage_exit = process.returncode
        assert outage_exit == 0, stderr.decode()
        written = _total(end_offsets(kafka_bootstrap, topics[1]))
        redelivered = written - _total(committed(kafka_bootstrap, group, topics[0]))
        final = run_cli(*args)
        assert final.returncode == 0, final.stderr

        figures = _figures(kafka_bootstrap, sent, topics, dsn, "database stop 5 s + start")
    _assert_complete(figures)
    assert figures["duplicates"] == redelivered, figures
    figures.update(
        command=_command(request),
        notes=f"own PostgreSQL on :{OWN_PG_PORT}; the run across the outage exited {outage_exit}",
    )
    faults_table.record("database_stop_start", figures)


def test_disk_full_under_the_sqlite_store(
    kafka_bootstrap: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    disk = tmp_path / "small-disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        topics = _topics(kafka_bootstrap)
        sent = _records(20_000, seed=45)
        _produce(kafka_bootstrap, topics[0], sent)
        group, store = f"g-{uuid.uuid4().hex}", f"sqlite:///{disk}/lineage.db"
        args = _args(kafka_bootstrap, topics, group, store)
        log = tmp_path / "guard.stderr"
        with log.open("wb") as stderr:
            process = subprocess.Popen([*GUARD, *args], stdout=subprocess.DEVNULL, stderr=stderr)
            deadline = time.monotonic() + 180
            while b"lineage store unavailable" not in log.read_bytes():
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "the store never filled up"
                time.sleep(0.2)
            time.sleep(1)
            frozen = _total(end_offsets(kafka_bootstrap, topics[1]))
            time.sleep(3)
            assert _total(end_offsets(kafka_bootstrap, topics[1])) == frozen  # fails closed
            assert frozen < len(sent)
            subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
            process.wait(timeout=300)
        assert process.returncode == 0, log.read_text()
        figures = _figures(kafka_bootstrap, sent, topics, store, "disk full (1 MiB tmpfs)")
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
    _assert_complete(figures)
    assert figures["duplicates"] == 0, figures
    figures.update(
        command=_command(request),
        notes=f"delivery stopped at {frozen} records while the store was full; resumed "
        "after the tmpfs grew to 64 MiB",
    )
    faults_table.record("disk_full", figures)


def test_oversized_records_go_to_quarantine_and_the_partition_moves_on(
    kafka_bootstrap: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    topics = _topics(
        kafka_bootstrap,
        partitions=1,
        source_config={"max.message.bytes": "8000000"},
        output_config={"max.message.bytes": "500000"},  # quarantine: the default, ~1 MB
    )
    src, out, quarantine = topics

    generated = list(generate(203, seed=46, entities=(CONTACT,)))
    big = [g for g in generated[:3]]
    big[0].record["first_name"] = "x" * 600_000  # quarantine takes it, the output topic not
    # 1,000,000 characters: more than the producer's `message.max.bytes`: only a reference
    big[1].record["first_name"] = "y" * 1_000_000
    sent: Sent = [
        (g.record["record_id"].encode(), encode_single_object(g.record, g.schema), [])
        for g in generated
    ]
    junk = (b"junk-5mb", os.urandom(5_000_000), [])  # 5 MB, undecodable: only a reference
    sent.insert(100, junk)
    _produce(kafka_bootstrap, src, sent, **{"message.max.bytes": 8_000_000})
    group, store = f"g-{uuid.uuid4().hex}", f"sqlite:///{tmp_path}/lineage.db"
    args = _args(kafka_bootstrap, topics, group, store)

    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "read 204, allowed 201, quarantined 3" in result.stderr, result.stderr

    delivered, stopped = _read_all(kafka_bootstrap, out), _read_all(kafka_bootstrap, quarantine)
    keys = [key for key, _, _ in sent]
    big_keys = [g.record["record_id"].encode() for g in big[:2]]
    assert sorted(m.key for m in delivered) == sorted(set(keys) - {*big_keys, junk[0]})
    by_key = {m.key: m for m in stopped}
    assert set(by_key) == {*big_keys, junk[0]}
    originals = {key: value for key, value, _ in sent}

    def rules(m: Message) -> list[str]:
        return [r["rule"] for r in json.loads(m.header("lineage-guard.reasons") or b"[]")]

    whole = by_key[big_keys[0]]  # quarantine holds the record itself
    assert whole.value == originals[big_keys[0]]
    assert rules(whole) == ["output_refused"]
    assert whole.header("lineage-guard.stage") == b"write"
    for key, expected in (
        (big_keys[1], ["output_refused", "quarantine_refused"]),
        (junk[0], ["undecodable", "quarantine_refused"]),
    ):
        reference = by_key[key]
        assert rules(reference) == expected
        assert reference.header("lineage-guard.reference") == b"true"
        body = json.loads(reference.value or b"{}")
        assert body["value_sha256"] == hashlib.sha256(originals[key]).hexdigest()
        assert body["source_topic"] == src and body["source_partition"] == 0
        assert keys[body["source_offset"]] == key
    assert committed(kafka_bootstrap, group, src) == end_offsets(kafka_bootstrap, src)

    again = run_cli(*args)  # the partition moved on: nothing to do, nothing loops
    assert again.returncode == 0 and "read 0, allowed 0" in again.stderr, again.stderr

    # The lineage says where the big record went: quarantined at write, and confirmed there.
    trace = run_cli(
        "lineage", "trace", big_keys[0].decode(), "--lineage-store", store, "--format", "json"
    )
    assert trace.returncode == 0, trace.stderr
    written = [e for e in json.loads(trace.stdout)["events"] if e["stage"] == "write"]
    assert [(e["decision"], e["destination"]) for e in written] == [("quarantined", quarantine)]
    assert [r["rule"] for r in written[0]["reasons"]] == ["output_refused"]

    valid = [s for s in sent if s[0] != junk[0]]
    figures = _figures(kafka_bootstrap, valid, topics, store, "oversized records (0.6, 1, 5 MB)")
    figures["records_in"] = len(sent)
    figures["lost"] = len(set(keys) - {m.key for m in [*delivered, *stopped]})
    assert figures["lost"] == 0 and figures["duplicates"] == 0, figures
    assert figures["lineage_rows"] == figures["lineage_confirmed"] == len(valid), figures
    figures.update(
        command=_command(request),
        notes="0.6 MB record (output topic takes 0.5 MB): whole in quarantine (output_refused); "
        "1,000,000-character record and 5 MB junk: references (quarantine_refused); lineage "
        "rows counted for the 203 decodable records",
    )
    faults_table.record("oversized_records", figures)


def _members(bootstrap: str, group: str) -> int:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    description = admin.describe_consumer_groups([group])[group].result(timeout=30)
    return len(description.members or ())


def test_two_guards_in_one_group_never_read_twice(
    kafka_bootstrap: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    topics = _topics(kafka_bootstrap)
    sent = _records(30_000, seed=47)
    _produce(kafka_bootstrap, topics[0], sent)
    group, store = f"g-{uuid.uuid4().hex}", f"sqlite:///{tmp_path}/lineage.db"
    args = _args(kafka_bootstrap, topics, group, store)
    members = f"{group}.lineage-guard-members"

    first = subprocess.Popen([*GUARD, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while _members(kafka_bootstrap, members) < 1:  # the first guard has joined
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        second = run_cli(*args, timeout=120)
        assert first.poll() is None, "the first guard must still run when the second starts"
    finally:
        _, first_stderr = first.communicate(timeout=300)
    assert second.returncode == 3, second.stderr
    assert second.stderr.strip().splitlines() == [
        f"lineage-guard: error: Another lineage-guard is already running with "
        f"`--group-id {group}` (1 other member(s) in `{members}`): "
        "stop it, or give this guard its own `--group-id`."
    ]
    assert first.returncode == 0, first_stderr.decode()
    third = run_cli(*args, timeout=120)  # the group is free again once the first one ended
    assert third.returncode == 0, third.stderr
    assert "read 0," in third.stderr, third.stderr

    figures = _figures(kafka_bootstrap, sent, topics, store, "two guards, one group")
    _assert_complete(figures)
    assert figures["duplicates"] == 0 and figures["out"] == len(sent), figures
    figures.update(
        command=_command(request),
        notes="the second guard, started while the first ran, exited 3 with one line",
    )
    faults_table.record("two_members_one_group", figures)


# A guard killed between `send_offsets_to_transaction` and `commit_transaction`: its
# transaction (records and input offset) stays open on the broker until it times out.
_KILLED_IN_A_TRANSACTION = """
import os, signal, sys
from confluent_kafka import Consumer, Producer, TopicPartition
bootstrap, group, source, output, transactional_id = sys.argv[1:6]
producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": transactional_id,
                     "transaction.timeout.ms": 600000})
producer.init_transactions(30)
producer.begin_transaction()
for n in range(10):
    producer.produce(output, key=b"never-committed", value=b"x", partition=0)
assert producer.flush(30) == 0
consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
producer.send_offsets_to_transaction(
    [TopicPartition(source, 0, 700)], consumer.consumer_group_metadata(), 30
)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _kill_in_a_transaction(bootstrap: str, group: str, topics: tuple[str, str, str]) -> None:
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            _KILLED_IN_A_TRANSACTION,
            bootstrap,
            group,
            topics[0],
            topics[1],
            f"lineage-guard.{group}.{topics[0]}.0",
        ],
        capture_output=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()


def test_exactly_once_rerun_ends_a_killed_runs_open_transaction_first(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A rerun fences the killed run's producers before it reads where to resume: the open
    transaction is aborted, its offset never counts, and nothing waits for it to time out."""
    topics = _topics(kafka_bootstrap, partitions=1)
    sent = _records(1_000, seed=44)
    _produce(kafka_bootstrap, topics[0], sent)
    group, store = f"g-{uuid.uuid4().hex}", f"sqlite:///{tmp_path}/lineage.db"
    _kill_in_a_transaction(kafka_bootstrap, group, topics)

    rerun = run_cli(*_args(kafka_bootstrap, topics, group, store), "--exactly-once")
    assert rerun.returncode == 0, rerun.stderr

    figures = _figures(kafka_bootstrap, sent, topics, store, "open transaction, rerun")
    _assert_complete(figures)
    assert figures["duplicates"] == 0 and figures["foreign"] == 0, figures
    assert figures["out"] + figures["quarantined"] == len(sent), figures
    assert committed(kafka_bootstrap, group, topics[0]) == {0: len(sent)}


def test_an_at_least_once_run_behind_an_open_transaction_says_what_to_do(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Without `--exactly-once` the guard does not touch transactions: it cannot learn where
    to resume, and says why in one line (exit 4) instead of a bare time-out."""
    topics = _topics(kafka_bootstrap, partitions=1)
    _produce(kafka_bootstrap, topics[0], _records(100, seed=45))
    group, store = f"g-{uuid.uuid4().hex}", f"sqlite:///{tmp_path}/lineage.db"
    _kill_in_a_transaction(kafka_bootstrap, group, topics)

    run = run_cli(*_args(kafka_bootstrap, topics, group, store))
    assert run.returncode == 4, run.stderr
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr, run.stderr
    assert "its open transaction holds the offsets: rerun with `--exactly-once`" in run.stderr
    assert _read_all(kafka_bootstrap, topics[1]) == []  # nothing delivered
    rerun = run_cli(*_args(kafka_bootstrap, topics, group, store), "--exactly-once")
    assert rerun.returncode == 0, rerun.stderr
    assert committed(kafka_bootstrap, group, topics[0]) == {0: 100}
