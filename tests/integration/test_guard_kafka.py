"""The guard on the real broker: byte-for-byte delivery, quarantine reasons, offsets, restarts."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from lineage_guard.generate import CONTACT, EMAIL_ACTIVITY, MEDIA_ASSET, generate
from lineage_guard.io.decode import encode_raw, encode_single_object
from tests.integration.kafka_helpers import (
    committed,
    drain,
    end_offsets,
    guard_args,
    guard_cli,
    new_topics,
    produce,
)


def _run(
    bootstrap: str, src: str, out: str, quarantine: str, group: str, tmp: Path, *extra: str
) -> Any:
    return guard_cli(
        *guard_args(bootstrap, src, out, quarantine, group),
        "--batch-size",
        "300",
        "--lineage-store",
        f"sqlite:///{tmp}/lineage.db",
        *extra,
    )


def test_valid_records_of_every_class_pass_byte_for_byte(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    src, out, quarantine = new_topics(kafka_bootstrap, "src", "out", "q", partitions=3)
    generated = list(generate(900, seed=31))
    classes = Counter(g.record["provenance"]["content_class"] for g in generated)
    assert set(classes) == {"HUMAN", "AI_ASSISTED", "SYNTHETIC"}
    sent = [
        (
            g.record["record_id"].encode(),
            encode_single_object(g.record, g.schema),
            [("trace-id", f"t{n}".encode()), ("empty", b"")],
        )
        for n, g in enumerate(generated)
    ]
    produce(kafka_bootstrap, src, sent, partitions=3)

    result = _run(kafka_bootstrap, src, out, quarantine, "g1", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "read 900, allowed 900, quarantined 0, blocked 0" in result.stderr

    delivered = drain(kafka_bootstrap, out, 900)
    assert Counter((m.key, m.value, m.headers) for m in delivered) == Counter(
        (k, v, tuple(h)) for k, v, h in sent
    )
    assert sum(end_offsets(kafka_bootstrap, quarantine).values()) == 0
    assert committed(kafka_bootstrap, "g1", src) == end_offsets(kafka_bootstrap, src)

    again = _run(kafka_bootstrap, src, out, quarantine, "g1", tmp_path)
    assert again.returncode == 0, again.stderr
    assert "read 0, allowed 0" in again.stderr
    assert len(drain(kafka_bootstrap, out)) == 900


def _strip(record: dict[str, Any]) -> dict[str, Any]:
    record = copy.deepcopy(record)
    record["provenance"].update(generator=None, generated_at=None, disclosure=None)
    return record


def test_bad_records_reach_quarantine_with_their_reasons(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    src, out, quarantine = new_topics(kafka_bootstrap, "src", "out", "q")
    good = [g for g in generate(400, seed=32)]
    ai = [g for g in good if g.record["provenance"]["content_class"] != "HUMAN"]
    expected: dict[bytes, set[str]] = {}  # key → the rules its quarantine headers must name
    sent: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
    for n, g in enumerate(good):
        record, rules = g.record, None
        if g in ai[:20]:
            record = _strip(record)
            rules = {"generator_required", "generated_at_required"} | (
                {"disclosure_required"}
                if record["provenance"]["content_class"] == "SYNTHETIC"
                else set()
            )
        elif n % 25 == 1:
            record = copy.deepcopy(record)
            record["provenance"]["origin_env"] = "TEST"
            rules = {"leak_test_origin"}
        elif n % 25 == 2:
            record = copy.deepcopy(record)
            record["provenance"]["origin_env"] = "STAGING"
            rules = {"leak_staging_origin"}
        elif n % 25 == 3:
            record = copy.deepcopy(record)
            record["tenant_id"] = "globex"
            rules = {"tenant_mismatch"}
        key = f"k{n}".encode()
        sent.append((key, encode_single_object(record, g.schema), [("n", str(n).encode())]))
        if rules:
            expected[key] = rules
    junk = [
        (b"junk-1", b"\x01\x02not avro", []),
        (b"junk-2", b"\xc3\x01" + b"\x00" * 8, []),
        (b"junk-3", encode_single_object(good[0].record, good[0].schema)[:-4], []),
        (b"tombstone", None, []),
    ]
    for key, _, _ in junk:
        expected[key] = {"undecodable"}
    sent += junk
    produce(kafka_bootstrap, src, sent)

    result = _run(
        kafka_bootstrap,
        src,
        out,
        quarantine,
        "g2",
        tmp_path,
        "--sink-policy",
        "production",
        "--sink-policy",
        "tenant:acme",
    )
    assert result.returncode == 0, result.stderr

    delivered = drain(kafka_bootstrap, out)
    stopped = drain(kafka_bootstrap, quarantine)
    assert len(delivered) + len(stopped) == len(sent)
    assert {m.key for m in delivered} == {k for k, _, _ in sent} - set(expected)
    by_key = {m.key: m for m in stopped}
    assert set(by_key) == set(expected)
    originals = {k: v for k, v, _ in sent}
    for key, rules in expected.items():
        message = by_key[key]
        assert message.value == originals[key]  # the original bytes, untouched
        reasons = json.loads(message.header("lineage-guard.reasons") or b"[]")
        assert {r["rule"] for r in reasons} == rules, key
        assert message.header("lineage-guard.source-topic") == src.encode()
        assert message.header("lineage-guard.source-partition") == b"0"
        offset = int(message.header("lineage-guard.source-offset") or b"-1")
        assert sent[offset][0] == key
        stage = message.header("lineage-guard.stage")
        assert stage == (
            b"decode"
            if rules == {"undecodable"}
            else b"enforce"
            if rules & {"leak_test_origin", "leak_staging_origin", "tenant_mismatch"}
            else b"validate"
        )
    assert committed(kafka_bootstrap, "g2", src) == end_offsets(kafka_bootstrap, src)


def test_raw_avro_with_a_named_schema(kafka_bootstrap: str, tmp_path: Path) -> None:
    src, out, quarantine = new_topics(kafka_bootstrap, "src", "out", "q")
    contacts = [g.record for g in generate(50, seed=33, entities=(MEDIA_ASSET,))]
    produce(kafka_bootstrap, src, [(None, encode_raw(r, MEDIA_ASSET), []) for r in contacts])
    result = _run(kafka_bootstrap, src, out, quarantine, "g3", tmp_path, "--schema", "media_asset")
    assert result.returncode == 0, result.stderr
    assert len(drain(kafka_bootstrap, out)) == 50

    # The same bytes without --schema cannot be decoded: all quarantined, none lost.
    src2, out2, q2 = new_topics(kafka_bootstrap, "src", "out", "q")
    produce(kafka_bootstrap, src2, [(None, encode_raw(r, MEDIA_ASSET), []) for r in contacts])
    result = _run(kafka_bootstrap, src2, out2, q2, "g3", tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(drain(kafka_bootstrap, q2)) == 50
    assert sum(end_offsets(kafka_bootstrap, out2).values()) == 0


def test_killed_run_redelivers_on_restart(kafka_bootstrap: str, tmp_path: Path) -> None:
    src, out, quarantine = new_topics(kafka_bootstrap, "src", "out", "q", partitions=2)
    generated = list(generate(30000, seed=34, entities=(CONTACT, EMAIL_ACTIVITY)))
    keys = {g.record["record_id"].encode() for g in generated}
    produce(
        kafka_bootstrap,
        src,
        [
            (g.record["record_id"].encode(), encode_single_object(g.record, g.schema), [])
            for g in generated
        ],
        partitions=2,
    )
    args = [
        *guard_args(kafka_bootstrap, src, out, quarantine, "g4"),
        "--batch-size",
        "200",
        "--lineage-store",
        f"sqlite:///{tmp_path}/lineage.db",
    ]
    process = subprocess.Popen(
        [sys.executable, "-c", "from lineage_guard.cli.main import main; main()", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and sum(end_offsets(kafka_bootstrap, out).values()) < 2000:
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    written_before = sum(end_offsets(kafka_bootstrap, out).values())
    done_before = committed(kafka_bootstrap, "g4", src)
    assert 2000 <= written_before < 30000, "the kill must land mid-run"
    assert sum(max(o, 0) for o in done_before.values()) < 30000

    result = guard_cli(*args)
    assert result.returncode == 0, result.stderr
    delivered = drain(kafka_bootstrap, out)
    assert {m.key for m in delivered} == keys  # nothing missing after the restart
    # Nothing was acknowledged that was not delivered: what the killed run committed is no
    # more than what it had written (no record is quarantined in this test).
    assert sum(max(o, 0) for o in done_before.values()) <= written_before
    assert sum(end_offsets(kafka_bootstrap, quarantine).values()) == 0
    assert committed(kafka_bootstrap, "g4", src) == end_offsets(kafka_bootstrap, src)


def test_unreachable_broker_exits_4_with_one_line(tmp_path: Path) -> None:
    result = guard_cli(
        "run",
        "--bootstrap-servers",
        "127.0.0.1:1",
        "--input-topic",
        "x",
        "--output-topic",
        "y",
        "--quarantine-topic",
        "z",
        "--until-caught-up",
        "--kafka-config",
        "socket.connection.setup.timeout.ms=1000",
        "--lineage-store",
        f"sqlite:///{tmp_path}/l.db",
        timeout=120,
    )
    assert result.returncode == 4, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "127.0.0.1:1" in result.stderr


def test_missing_input_topic_is_a_config_error(kafka_bootstrap: str, tmp_path: Path) -> None:
    result = guard_cli(
        "run",
        "--bootstrap-servers",
        kafka_bootstrap,
        "--input-topic",
        "t-does-not-exist-x",
        "--output-topic",
        "y",
        "--quarantine-topic",
        "z",
        "--until-caught-up",
        "--lineage-store",
        f"sqlite:///{tmp_path}/l.db",
    )
    assert result.returncode == 3, result.stderr
    assert "t-does-not-exist-x" in result.stderr
