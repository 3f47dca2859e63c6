"""`lineage-guard gateway` on a real server, broker and PostgreSQL: the stream's verdicts,
hostile bodies, limits, admission with lineage and Kafka, `Idempotency-Key`, tenants, scopes."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fastavro
import pytest
import requests

from lineage_guard.contract.schemas import load_schema
from lineage_guard.generate import Faults, generate
from lineage_guard.io.decode import encode_single_object
from lineage_guard.io.file_io import json_line
from lineage_guard.lineage.hops import Delivery
from lineage_guard.lineage.store import open_store
from lineage_guard.web.bodies import Limits
from lineage_guard.web.gateway import Gateway, GatewaySettings
from tests.cli import run_cli
from tests.gateway_server import Served
from tests.gateway_server import serve as serve_app
from tests.integration.kafka_helpers import drain, guard_args, guard_cli, new_topics, produce

NDJSON = "application/x-ndjson"
SINGLE = "application/vnd.apache.avro.single-object"
CONTAINER = "application/vnd.apache.avro.container"
VERDICTS_FILE = Path(__file__).resolve().parents[2] / "build" / "test-artifacts" / "gateway.json"


@contextmanager
def gateway(
    settings: GatewaySettings, *, scopes: tuple[str, ...] = ("records:check", "records:admit"),
    tenant: str | None = None, name: str = "crm-api",
) -> Iterator[tuple[Served, dict[str, str]]]:  # fmt: skip
    """A gateway server and the headers of a client with `scopes`, bound to `tenant`."""
    from lineage_guard.web.gateway import build_app

    gw = Gateway(settings)
    app, headers = build_app(settings, gateway=gw), {}
    headers = add_client(settings.lineage_store, name=name, scopes=scopes, tenant=tenant)
    with serve_app(app, gw) as served:
        yield served, headers


def add_client(store: str, *, name: str, scopes: tuple[str, ...], tenant: str | None) -> Any:
    """An API key for `name` in `store` (as `lineage-guard keys add` makes one)."""
    from lineage_guard.web.auth import add_api_key

    with open_store(store) as opened:
        key = add_api_key(opened, name=name, scopes=scopes, tenants=(tenant,) if tenant else ())
    return {"Authorization": f"Bearer {key}"}


def _records(count: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    """(schema, record): valid ones of every class, leaks, other tenants, children of
    generated parents (some claiming a lower class than theirs), and records whose
    provenance a faulty sync stripped."""
    out = []
    faults = Faults(test_origin=0.1, other_tenant=0.1)
    for n, g in enumerate(generate(count, seed=seed, faults=faults)):
        record = g.record
        if n % 7 == 3:
            record = copy.deepcopy(record)
            record["provenance"].update(generator=None, generated_at=None, disclosure=None)
        elif record["provenance"]["parent_record_ids"] and n % 2:
            record = copy.deepcopy(record)  # a human record derived from generated ones
            record["provenance"].update(
                content_class="HUMAN", generator=None, generated_at=None, disclosure=None
            )
        out.append((g.schema, record))
    return out


def _verdict(entry: dict[str, Any]) -> tuple[bool, list[dict[str, Any]]]:
    return entry["allowed"], entry["violations"]


def test_same_verdicts_as_validate_and_the_kafka_guard(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The same 600 records through the gateway (Avro single-object and JSON Lines bodies),
    `lineage-guard validate` and the Kafka guard: the same verdict, rule and message for
    every record."""
    records = _records(600, seed=61)
    policies = ("production", "tenant:acme")

    # The Kafka guard.
    src, out, quarantine = new_topics(kafka_bootstrap, "src", "out", "q")
    produce(
        kafka_bootstrap,
        src,
        [(r["record_id"].encode(), encode_single_object(r, s), []) for s, r in records],
    )
    policy_args = [arg for p in policies for arg in ("--sink-policy", p)]
    ran = guard_cli(
        *guard_args(kafka_bootstrap, src, out, quarantine, f"g-{uuid.uuid4().hex}"),
        "--lineage-store",
        f"sqlite:///{tmp_path}/guard.db",
        *policy_args,
    )
    assert ran.returncode == 0, ran.stderr
    by_kafka: dict[str, tuple[bool, list[dict[str, Any]]]] = {
        m.key.decode(): (True, []) for m in drain(kafka_bootstrap, out) if m.key
    }
    for m in drain(kafka_bootstrap, quarantine):
        assert m.key is not None
        by_kafka[m.key.decode()] = (False, json.loads(m.header("lineage-guard.reasons") or b""))
    assert len(by_kafka) == len(records)

    # `lineage-guard validate` (the suites alone: no sink policies).
    lines = tmp_path / "records.jsonl"
    lines.write_text("".join(json_line(r) + "\n" for _, r in records))
    validated = run_cli("validate", "--format", "json", lines)
    assert validated.returncode == 1, validated.stderr
    by_validate = {r["index"]: r["violations"] for r in json.loads(validated.stdout)["rejected"]}

    store = f"sqlite:///{tmp_path}/gateway.db"
    body = b"".join(encode_single_object(r, s) for s, r in records)
    with gateway(GatewaySettings(lineage_store=store, policies=policies)) as (served, headers):
        answer = requests.post(
            f"{served.url}/v1/records:check",
            data=body,
            headers={**headers, "Content-Type": SINGLE},
            timeout=60,
        )
    assert answer.status_code == 200, answer.text
    as_kafka = answer.json()["records"]
    with gateway(GatewaySettings(lineage_store=store, policies=())) as (served, headers):
        answer = requests.post(
            f"{served.url}/v1/records:check",
            data=lines.read_bytes(),
            headers={**headers, "Content-Type": NDJSON},
            timeout=60,
        )
    assert answer.status_code == 200, answer.text
    as_validate = answer.json()["records"]

    assert [v["index"] for v in as_kafka] == list(range(len(records)))
    assert [v["record_id"] for v in as_kafka] == [r["record_id"] for _, r in records]
    kafka_same = sum(by_kafka[v["record_id"]] == _verdict(v) for v in as_kafka)
    validate_same = sum(
        v["violations"] == by_validate.get(v["index"], [])
        and v["allowed"] == (v["index"] not in by_validate)
        for v in as_validate
    )
    rules = sorted({x["rule"] for v in as_kafka for x in v["violations"]})
    figures = {
        "records": len(records),
        "kafka_guard": {
            "allowed": sum(a for a, _ in by_kafka.values()),
            "stopped": sum(not a for a, _ in by_kafka.values()),
            "gateway_allowed": sum(v["allowed"] for v in as_kafka),
            "same_verdict_rules_messages": kafka_same,
        },
        "validate": {
            "rejected": len(by_validate),
            "gateway_rejected": sum(not v["allowed"] for v in as_validate),
            "same_verdict_rules_messages": validate_same,
        },
        "rules": rules,
    }
    VERDICTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    VERDICTS_FILE.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures))
    assert kafka_same == len(records), figures
    assert validate_same == len(records), figures
    # The records exercise every kind of stop the guard makes here.
    assert {
        "leak_test_origin",
        "tenant_mismatch",
        "generator_required",
        "class_below_parent",
    } <= set(rules), rules
    assert 0 < figures["kafka_guard"]["allowed"] < len(records)
