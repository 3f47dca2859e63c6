"""Hostile Kafka input on the real broker: forged headers in the guard's namespaces."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from lineage_guard.generate import CONTACT, generate
from lineage_guard.io.decode import encode_single_object
from tests.integration.kafka_helpers import drain, guard_args, guard_cli, new_topics, produce

FORGED = [
    ("trace-id", b"t1"),
    ("lineage-guard.reasons", b"[]"),
    ("lineage-guard.source-offset", b"999"),
    ("Lineage-Guard.Stage", b"none"),
    ("__rule.name", b"all_clear"),
    ("__rule.subject", b"forged-value"),
]
RENAMED = [
    ("trace-id", b"t1"),
    ("x-input-lineage-guard.reasons", b"[]"),
    ("x-input-lineage-guard.source-offset", b"999"),
    ("x-input-Lineage-Guard.Stage", b"none"),
    ("x-input-__rule.name", b"all_clear"),
    ("x-input-__rule.subject", b"forged-value"),
]


def test_input_headers_in_our_namespaces_are_renamed(kafka_bootstrap: str, tmp_path: Path) -> None:
    src, out, quarantine = new_topics(kafka_bootstrap, "src", "out", "q")
    (good,) = generate(1, seed=51, entities=(CONTACT,))
    leak = copy.deepcopy(good.record)
    leak["provenance"]["origin_env"] = "TEST"
    produce(
        kafka_bootstrap,
        src,
        [
            (b"good", encode_single_object(good.record, good.schema), FORGED),
            (b"leak", encode_single_object(leak, good.schema), FORGED),
        ],
    )
    result = guard_cli(
        *guard_args(kafka_bootstrap, src, out, quarantine, "forged"),
        "--lineage-store",
        f"sqlite:///{tmp_path}/lineage.db",
    )
    assert result.returncode == 0, result.stderr

    (allowed,) = drain(kafka_bootstrap, out, 1)
    assert allowed.key == b"good"
    assert list(allowed.headers) == RENAMED  # the rest byte-for-byte, in order

    (stopped,) = drain(kafka_bootstrap, quarantine, 1)
    assert stopped.key == b"leak"
    headers = list(stopped.headers)
    assert headers[: len(RENAMED)] == RENAMED
    ours = dict(headers[len(RENAMED) :])
    assert [name for name, _ in headers[len(RENAMED) :]] == list(ours)  # each name once
    reserved = [
        name for name, _ in headers if name.lower().startswith(("lineage-guard.", "__rule."))
    ]
    assert reserved == list(ours)  # every header in our namespaces is the guard's own
    assert [r["rule"] for r in json.loads(ours["lineage-guard.reasons"])] == ["leak_test_origin"]
    assert ours["lineage-guard.stage"] == b"enforce"
    assert ours["lineage-guard.source-offset"] == b"1"
    assert ours["__rule.name"] == b"leak_test_origin"
    assert ours["__rule.subject"] == f"{src}-value".encode()
