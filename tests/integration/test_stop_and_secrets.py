"""On the real broker and PostgreSQL: a clean stop on SIGTERM, Kafka's idle timer, and the
database password kept out of a run's output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from uuid import uuid4

import pytest

from lineage_guard.generate import generate
from lineage_guard.io.decode import encode_single_object
from lineage_guard.io.kafka import KafkaSettings, PartitionRange, read_range
from tests.integration.kafka_helpers import (
    committed,
    drain,
    end_offsets,
    guard_args,
    guard_cli,
    new_topics,
    produce,
)


def _produce(bootstrap: str, topic: str, count: int, partitions: int) -> list[bytes]:
    generated = list(generate(count, seed=41))
    sent = [
        (g.record["record_id"].encode(), encode_single_object(g.record, g.schema), [])
        for g in generated
    ]
    produce(bootstrap, topic, sent, partitions=partitions)
    return [key for key, _, _ in sent]


@pytest.mark.parametrize(
    ("workers", "ctrl_c"),
    [(["--", "--direct_num_workers=1"], False), ([], False), ([], True)],
    ids=["in-process-sigterm", "worker-processes-sigterm", "worker-processes-ctrl-c"],
)  # 3 partitions: the guard's own choice is one worker process per core, which learn of the
# signal through the stop file their stages carry (`RunStop`); Ctrl-C reaches the process group
def test_sigterm_stops_cleanly_and_a_rerun_finishes_with_nothing_lost_or_doubled(
    kafka_bootstrap: str, tmp_path: Path, workers: list[str], ctrl_c: bool
) -> None:
    src, out, quarantine = new_topics(kafka_bootstrap, "src", "out", "q", partitions=3)
    keys = _produce(kafka_bootstrap, src, 20_000, partitions=3)
    group = f"g-{uuid4().hex}"
    args = [
        *guard_args(kafka_bootstrap, src, out, quarantine, group),
        "--batch-size", "200", "--lineage-store", f"sqlite:///{tmp_path / 'lineage.db'}",
    ]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-c", "from lineage_guard.cli.main import main; main()", *args, *workers],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=ctrl_c,  # its own process group, as a terminal gives it
    )
    deadline = time.monotonic() + 120
    while sum(end_offsets(kafka_bootstrap, out).values()) < 1000:
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    if ctrl_c:
        os.killpg(process.pid, signal.SIGINT)
    else:
        process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=120)[1]
    if workers == []:
        assert "Worker subprocess exited" not in stderr, stderr  # the workers stopped cleanly

    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    summary = [line for line in stderr.splitlines() if line.startswith("lineage-guard run `")]
    assert len(summary) == 1, stderr
    name = "SIGINT" if ctrl_c else "SIGTERM"
    # what the stop left in flight, from the lineage store: the batches in hand were
    # finished and committed, so the rerun below doubles nothing, as the message says
    assert f"lineage-guard: stopped by {name}." in stderr
    assert (
        "A restart delivers nothing twice: every record this run delivered is behind the "
        "committed offsets." in " ".join(stderr.split())
    ), stderr
    delivered = sum(end_offsets(kafka_bootstrap, out).values()) + sum(
        end_offsets(kafka_bootstrap, quarantine).values()
    )
    assert 1000 <= delivered < 20_000  # it stopped mid-run
    allowed = int(summary[0].split("allowed ")[1].split(",")[0])
    quarantined = int(summary[0].split("quarantined ")[1].split(",")[0])
    assert allowed + quarantined == delivered  # the summary counts what reached the topics
    # Offsets only behind delivered records: every source record before a committed offset
    # is in an output topic.
    behind = sum(max(offset, 0) for offset in committed(kafka_bootstrap, group, src).values())
    assert 0 < behind <= delivered

    rerun = guard_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    got = Counter(m.key for m in drain(kafka_bootstrap, out) + drain(kafka_bootstrap, quarantine))
    assert sum(got.values()) == 20_000  # nothing doubled
    assert set(got) == set(keys)  # nothing lost
    assert committed(kafka_bootstrap, group, src) == end_offsets(kafka_bootstrap, src)


def test_time_spent_downstream_does_not_count_as_kafka_being_idle(kafka_bootstrap: str) -> None:
    (src,) = new_topics(kafka_bootstrap, "idle", partitions=1)
    _produce(kafka_bootstrap, src, 600, partitions=1)
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap, group_id=f"g-{uuid4().hex}")
    consumer = settings.consumer()
    try:
        part = PartitionRange(topic=src, partition=0, start=0, end=600)
        seen = 0
        for batch in read_range(consumer, part, batch_size=200, timeout_s=1.0):
            seen += len(batch)
            time.sleep(2.5)  # e.g. the write stage retrying the lineage store
        assert seen == 600
    finally:
        consumer.close()


def test_the_database_password_is_never_printed(
    kafka_bootstrap: str, pg_store_url: str, tmp_path: Path
) -> None:
    password = "S3cretPW"
    # The test server trusts its clients: any password is accepted, so the run succeeds.
    url = pg_store_url.replace("postgresql://postgres@", f"postgresql://postgres:{password}@")
    assert password in url
    src, out, quarantine = new_topics(kafka_bootstrap, "src", "out", "q")
    _produce(kafka_bootstrap, src, 300, partitions=1)
    result = guard_cli(
        *guard_args(kafka_bootstrap, src, out, quarantine, f"g-{uuid4().hex}"),
        "--lineage-store", url, "--batch-size", "100",
        "--openlineage", f"file:{tmp_path / 'ol.jsonl'}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "lineage in `postgresql://postgres:***@" in result.stderr
    report = tmp_path / "report"
    audit = guard_cli("lineage", "report", "--lineage-store", url, "--out", report)
    assert audit.returncode == 0, audit.stderr
    bad = guard_cli("lineage", "verify", "--lineage-store", url.replace("/lineage_guard", "/nodb"))
    assert bad.returncode == 3, bad.stderr
    texts = [result.stdout, result.stderr, audit.stdout, audit.stderr, bad.stdout, bad.stderr]
    texts += [(tmp_path / "ol.jsonl").read_text()]
    texts += [path.read_text() for path in report.iterdir()]
    assert all(password not in text for text in texts)
