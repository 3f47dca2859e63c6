"""`lineage-guard gateway` on a real server, broker and PostgreSQL: the stream's verdicts,
hostile bodies, limits, admission with lineage and Kafka, `Idempotency-Key`, tenants, scopes."""

from __future__ import annotations

import copy
import io
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fastavro
import requests

from lineage_guard.contract.schemas import load_schema
from lineage_guard.generate import CONTACT, Faults, generate
from lineage_guard.io.decode import encode_single_object
from lineage_guard.io.file_io import json_line
from lineage_guard.io.kafka import KafkaSettings
from lineage_guard.lineage.hops import Delivery
from lineage_guard.lineage.store import open_store
from lineage_guard.web.auth import new_api_key, utcnow
from lineage_guard.web.bodies import Limits
from lineage_guard.web.gateway import Gateway, GatewaySettings, build_app
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
    """A gateway server, and the headers of a client holding an API key with `scopes`
    (bound to `tenant`) in the gateway's store, as `lineage-guard keys add` makes one."""
    gw = Gateway(settings)
    made = new_api_key(name, scopes, (tenant,) if tenant else None, now=utcnow())
    gw.accounts().add_api_key(made.record)
    with serve_app(build_app(settings, gateway=gw), gw) as served:
        yield served, {"Authorization": f"Bearer {made.key}"}


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


def _single_objects(records: list[tuple[str, dict[str, Any]]]) -> bytes:
    return b"".join(encode_single_object(r, s) for s, r in records)


def _container(records: list[dict[str, Any]]) -> bytes:
    """An Avro object container file of contacts."""
    buffer = io.BytesIO()
    fastavro.writer(buffer, load_schema(CONTACT), records)
    return buffer.getvalue()


VALID = [(g.schema, g.record) for g in generate(6, seed=5)]
CONTACTS = [g.record for g in generate(6, seed=6, entities=(CONTACT,))]
TWO = _single_objects(VALID[:2])
CONTAINED = _container(CONTACTS)

BAD_JSON = "The body is not valid JSON"
BAD_MESSAGE = f"The message at byte {len(TWO)} of the body (message 2) has the schema fingerprint"
HOSTILE = [
    ("application/json", b"{\"a\": ", 400, f"{BAD_JSON}: Expecting value at line 1 column 7."),
    ("application/json", b"42", 400, "The body is a JSON int: send one JSON object or an array"),
    ("application/json", b'[{}, "x"]', 400, "Element 1 of the body's array is a JSON str, not an"),
    ("application/json", b"[" * 100_000 + b"]" * 100_000, 400, f"{BAD_JSON} (RecursionError)."),
    ("application/json", b'{"a": "\xff"}', 400, f"{BAD_JSON} (UnicodeDecodeError)."),
    ("application/json", b"", 400, f"{BAD_JSON}: Expecting value at line 1 column 1."),
    ("application/json", b"[]", 400, "The body holds no record: send at least one."),
    (NDJSON, b'{"a": 1}\n\n{"b": 2}\n{"c": \n', 400, "Line 4 of the body is not valid JSON: Expec"),
    (NDJSON, b'{"a": 1}\n\n{"b": 2}\n{"c": \n', 400, "Expecting value at column 7."),
    (NDJSON, b'{"a": 1}\n[1]\n', 400, "Line 2 of the body is a JSON list, not an object"),
    (SINGLE, b"garbage", 400, "No Avro single-object message starts at byte 0 of the body"),
    (SINGLE, TWO + b"\xc3\x01" + b"\x00" * 8 + b"x", 400, BAD_MESSAGE),
    (SINGLE, TWO[:-4], 400, "(message 1) does not decode as"),
    (CONTAINER, b"Obj\x01garbage", 400, "Cannot decode Avro file `the request body` at its header"),
    (CONTAINER, CONTAINED[:-40], 400, "Cannot decode Avro file `the request body`"),
    ("text/plain", b"{}", 415, "Cannot read a body of type `text/plain`"),
    ("", b"{}", 415, "Cannot read a body of type `none`"),
]  # fmt: skip


def test_hostile_bodies_get_one_line_problems_naming_where(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/lineage.db"
    with gateway(GatewaySettings(lineage_store=store)) as (served, headers):
        for route in ("check", "admit"):
            for content_type, body, status, detail in HOSTILE:
                answer = requests.post(
                    f"{served.url}/v1/records:{route}",
                    data=body,
                    headers={**headers, "Content-Type": content_type},
                    timeout=30,
                )
                assert answer.status_code == status, (content_type, body[:40], answer.text)
                assert answer.headers["content-type"] == "application/problem+json"
                problem = answer.json()
                assert problem["status"] == status
                assert detail in problem["detail"], (detail, problem)
                assert "Traceback" not in answer.text
        # A lone surrogate (legal JSON, not UTF-8) is a record like any other.
        odd = json.dumps({**VALID[0][1], "record_id": "\ud800"}, default=str).encode()
        answer = requests.post(
            f"{served.url}/v1/records:admit",
            data=odd,
            headers={**headers, "Content-Type": "application/json"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["records"][0]["record_id"] == "\ud800"
    with open_store(store) as opened:
        assert opened.verify().ok
        assert [h.hop.outcome for h in opened.scan()] == ["quarantined"]  # only the odd one


def test_limits_413_before_judging(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/lineage.db"
    limits = Limits(max_body_bytes=4000, max_records=3)
    records = [r for _, r in VALID[:4]]
    with gateway(GatewaySettings(lineage_store=store, limits=limits)) as (served, headers):
        url = f"{served.url}/v1/records:admit"
        json_headers = {**headers, "Content-Type": "application/json"}
        big = json.dumps([records[0]] * 20, default=str).encode()
        assert len(big) > 4000
        declared = requests.post(url, data=big, headers=json_headers, timeout=30)
        chunked = requests.post(url, data=iter([big[:3000], big[3000:]]), headers=json_headers)
        many = requests.post(url, data=json.dumps(records, default=str), headers=json_headers)
        contained = requests.post(
            url, data=_container(CONTACTS), headers={**headers, "Content-Type": CONTAINER}
        )
        one = requests.post(url, data=json.dumps(records[:3], default=str), headers=json_headers)
    for answer in (declared, chunked):
        assert answer.status_code == 413, answer.text
        assert answer.json()["detail"] == (
            "The body is larger than 4000 bytes: send fewer records per request."
        )
    assert many.status_code == 413
    assert many.json()["detail"] == (
        "The body holds 4 records, more than 3: send them in several requests."
    )
    assert contained.status_code == 413, contained.text
    assert one.status_code == 200, one.text
    with open_store(store) as opened:
        assert len(list(opened.scan())) == 3  # only the request within the limits


def _drained(bootstrap: str, topic: str) -> dict[str, Any]:
    return {m.key.decode(): m for m in drain(bootstrap, topic) if m.key is not None}


def test_admit_records_hops_then_produces_and_confirms_after_acks(
    kafka_bootstrap: str, pg_store_url: str
) -> None:
    out, quarantine = new_topics(kafka_bootstrap, "out", "q")
    records = _records(60, seed=71)
    body = _single_objects(records)
    settings = GatewaySettings(
        lineage_store=pg_store_url,
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, group_id="unused"),
        output_topic=out,
        quarantine_topic=quarantine,
    )
    with gateway(settings, name="crm-api") as (served, headers):
        answer = requests.post(
            f"{served.url}/v1/records:admit?stage=crm-ingest",
            data=body,
            headers={**headers, "Content-Type": SINGLE},
            timeout=60,
        )
    assert answer.status_code == 200, answer.text
    verdicts = answer.json()["records"]
    allowed = {v["record_id"] for v in verdicts if v["allowed"]}
    stopped = {v["record_id"]: v for v in verdicts if not v["allowed"]}
    assert allowed and stopped
    delivered, quarantined = _drained(kafka_bootstrap, out), _drained(kafka_bootstrap, quarantine)
    sent = {r["record_id"]: encode_single_object(r, s) for s, r in records}
    assert set(delivered) == allowed
    assert all(m.value == sent[k] for k, m in delivered.items())  # byte for byte
    assert set(quarantined) == set(stopped)
    for record_id, m in quarantined.items():
        violations = stopped[record_id]["violations"]
        assert m.value == sent[record_id]
        assert m.header("__rule.name") == violations[0]["rule"].encode()
        assert m.header("__rule.mode") == b"READ"
        assert m.header("__rule.topic") == b"api:crm-api"
        assert json.loads(m.header("lineage-guard.reasons") or b"") == violations
    with open_store(pg_store_url) as opened:
        hops = opened.hops(list(sent))
        assert opened.verify().ok
    assert len(hops) == len(records)
    by_id = {h.hop.record_id: h for h in hops}
    for v in verdicts:
        stored = by_id[v["record_id"]]
        assert v["hop_id"] == f"{stored.chain_id}#{stored.seq}/{stored.index}"
        assert stored.pipeline == "crm-ingest" and stored.source_topic == "api:crm-api"
        assert stored.delivery is Delivery.CONFIRMED
        assert stored.destination == (out if v["allowed"] else quarantine)
        assert [r.rule for r in stored.hop.reasons] == [x["rule"] for x in v["violations"]]


def test_idempotency_key_replays_the_answer_and_admits_nothing_twice(
    kafka_bootstrap: str, pg_store_url: str
) -> None:
    out, quarantine = new_topics(kafka_bootstrap, "out", "q")
    records = _records(20, seed=72)
    body = "".join(json_line(r) + "\n" for _, r in records)
    settings = GatewaySettings(
        lineage_store=pg_store_url,
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, group_id="unused"),
        output_topic=out,
        quarantine_topic=quarantine,
    )
    with gateway(settings) as (served, headers):
        url, key = f"{served.url}/v1/records:admit", {"Idempotency-Key": "order-7"}
        sent = {**headers, **key, "Content-Type": NDJSON}
        first = requests.post(url, data=body, headers=sent, timeout=60)
        again = requests.post(url, data=body, headers=sent, timeout=60)
        other = requests.post(url, data=body + "\n", headers=sent, timeout=60)
        fresh = requests.post(url, data=body, headers={**sent, "Idempotency-Key": "order-8"})
    assert first.status_code == again.status_code == fresh.status_code == 200, first.text
    assert again.json() == first.json()
    assert other.status_code == 422, other.text
    assert "`order-7` was used before with another body" in other.json()["detail"]
    ids = [r["record_id"] for _, r in records]
    messages = [*drain(kafka_bootstrap, out), *drain(kafka_bootstrap, quarantine)]
    copies = Counter(m.key.decode() for m in messages if m.key)
    assert copies == Counter({i: 2 for i in ids})  # order-7 once, order-8 once
    with open_store(pg_store_url) as opened:
        hops = opened.hops(ids)
    assert Counter(h.hop.record_id for h in hops) == Counter({i: 2 for i in ids})
    assert all(h.delivery is Delivery.CONFIRMED for h in hops)


def test_openapi_no_5xx_and_every_response_matches_its_schema(tmp_path: Path) -> None:
    """Schemathesis, from the served `/openapi.json`: bounded examples of every operation,
    valid and invalid, each answered without a 5xx and as the document says."""
    import schemathesis
    from hypothesis.errors import Unsatisfiable

    store = f"sqlite:///{tmp_path}/lineage.db"
    with gateway(GatewaySettings(lineage_store=store)) as (served, headers):
        document = requests.get(f"{served.url}/openapi.json", headers=headers, timeout=30).json()
        assert document["openapi"].startswith("3.1")
        schema = schemathesis.openapi.from_dict(document)
        operations = [result.ok() for result in schema.get_all_operations()]
        called: Counter[str] = Counter()
        for operation in operations:
            for mode in (
                schemathesis.GenerationMode.POSITIVE,
                schemathesis.GenerationMode.NEGATIVE,
            ):
                try:
                    _explore(
                        operation.as_strategy(generation_mode=mode), served.url, headers, called
                    )
                except Unsatisfiable:  # nothing invalid to send (`/readyz` takes nothing)
                    assert mode is schemathesis.GenerationMode.NEGATIVE
    assert {label.split(" ")[0] for label in called} >= {"POST", "GET"}
    print(dict(called))


def _explore(cases: Any, url: str, headers: dict[str, str], called: Counter[str]) -> None:
    """25 derandomized examples from `cases`, each sent and checked."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.specs.openapi import checks

    session = requests.Session()
    wanted = [
        schemathesis.checks.not_a_server_error,
        checks.status_code_conformance,
        checks.content_type_conformance,
        checks.response_schema_conformance,
        checks.response_headers_conformance,
    ]

    @settings(
        max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    @given(case=cases)
    def call(case: Any) -> None:
        response = case.call(base_url=url, session=session, headers=headers)
        assert response.status_code < 500, response.text
        case.validate_response(response, checks=wanted)
        called[f"{case.operation.label} {response.status_code}"] += 1

    call()


def test_a_tenant_bound_key_gets_tenant_mismatch_for_another_tenants_record(
    tmp_path: Path,
) -> None:
    store = f"sqlite:///{tmp_path}/lineage.db"
    acme = next(iter(generate(1, seed=1, tenant="acme"))).record
    globex = next(iter(generate(1, seed=2, tenant="globex"))).record
    body = json.dumps([acme, globex], default=str)
    with gateway(GatewaySettings(lineage_store=store), tenant="acme") as (served, headers):
        sent = {**headers, "Content-Type": "application/json"}
        checked = requests.post(f"{served.url}/v1/records:check", data=body, headers=sent)
        admitted = requests.post(f"{served.url}/v1/records:admit", data=body, headers=sent)
    for answer in (checked, admitted):
        assert answer.status_code == 200, answer.text
        first, second = answer.json()["records"]
        assert first["allowed"] and first["violations"] == []
        assert not second["allowed"]
        assert second["violations"] == [
            {
                "rule": "tenant_mismatch",
                "column": "tenant_id",
                "message": f"Record `{globex['record_id']}`: tenant `globex` may not reach the"
                " sink of tenant `acme`.",
            }
        ]
    with open_store(store) as opened:
        hops = opened.hops([acme["record_id"], globex["record_id"]])
    assert sorted((h.hop.tenant_id, str(h.hop.outcome)) for h in hops) == [
        ("acme", "delivered"),
        ("globex", "blocked"),
    ]


def test_scopes_and_credentials(tmp_path: Path) -> None:
    """A key without `records:admit` gets 403 from admit (and nothing is recorded); no key or
    a wrong one 401; a key bound to two tenants 403."""
    store = f"sqlite:///{tmp_path}/lineage.db"
    body = json.dumps(VALID[0][1], default=str)
    settings = GatewaySettings(lineage_store=store)
    with gateway(settings, scopes=("records:check",)) as (served, headers):
        sent = {**headers, "Content-Type": "application/json"}
        checked = requests.post(f"{served.url}/v1/records:check", data=body, headers=sent)
        refused = requests.post(f"{served.url}/v1/records:admit", data=body, headers=sent)
        anonymous = requests.post(
            f"{served.url}/v1/records:admit",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        wrong = requests.post(
            f"{served.url}/v1/records:check",
            data=body,
            headers={"Content-Type": "application/json", "Authorization": "Bearer lgk_x_y"},
        )
        two = new_api_key("two", ("records:check",), ("acme", "globex"), now=utcnow())
        served.gateway.accounts().add_api_key(two.record)
        both = requests.post(
            f"{served.url}/v1/records:check",
            data=body,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {two.key}"},
        )
    assert checked.status_code == 200, checked.text
    assert refused.status_code == 403, refused.text
    assert refused.json()["detail"] == (
        "`crm-api` may not do `records:admit`: ask an admin for access."
    )
    assert anonymous.status_code == wrong.status_code == 401
    assert both.status_code == 403
    assert "bound to 2 tenants" in both.json()["detail"]
    with open_store(store) as opened:
        assert list(opened.scan()) == []
