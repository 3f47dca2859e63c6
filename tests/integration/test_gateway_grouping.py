"""The gateway judges the requests that wait together in one pass of the guard chain, on real
stores (SQLite, PostgreSQL) and a real broker: fewer chain passes than requests, and for each
request the verdicts, hops and messages it gets when sent alone."""

from __future__ import annotations

import copy
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from lineage_guard import guard_chain
from lineage_guard.generate import Faults, generate
from lineage_guard.io.decode import encode_single_object
from lineage_guard.io.file_io import json_line
from lineage_guard.io.kafka import KafkaSettings
from lineage_guard.lineage.hops import Delivery
from lineage_guard.lineage.store import open_store
from lineage_guard.web.auth import new_api_key, utcnow
from lineage_guard.web.gateway import Gateway, GatewaySettings, build_app
from tests.gateway_server import Served, serve
from tests.integration.kafka_helpers import drain, new_topics

JSON = "application/json"
SINGLE = "application/vnd.apache.avro.single-object"
SCOPES = ("records:check", "records:admit")


@contextmanager
def served(
    settings: GatewaySettings, clients: dict[str, str | None]
) -> Iterator[tuple[Served, dict[str, dict[str, str]]]]:
    """A gateway server and, per client name, the headers of its API key (bound to the
    tenant given, or to none)."""
    gw = Gateway(settings)
    keys = {}
    for name, tenant in clients.items():
        made = new_api_key(name, SCOPES, (tenant,) if tenant else None, now=utcnow())
        gw.accounts().add_api_key(made.record)
        keys[name] = {"Authorization": f"Bearer {made.key}"}
    with serve(build_app(settings, gateway=gw), gw) as server:
        yield server, keys


class Gate:
    """Counts the chain's passes (`guard_chain.validate`, each batch's rows) and holds the
    first one until `expected` requests reached `Gateway.prepare`: the others arrive while
    it runs."""

    def __init__(self, gateway: Gateway, expected: int) -> None:
        self.passes: list[int] = []
        self.expected = expected
        self.judged = 0
        self.first_started = threading.Event()
        self._lock = threading.Lock()
        prepare, validate = gateway.prepare, guard_chain.validate

        def counted_prepare(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.judged += 1
            return prepare(*args, **kwargs)

        def counted_validate(batch: Any, *args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.passes.append(len(batch))
                first = len(self.passes) == 1
            if first:
                self.first_started.set()
                deadline = time.monotonic() + 30
                while self.judged < self.expected and time.monotonic() < deadline:
                    time.sleep(0.01)
                time.sleep(0.3)  # from `prepare` to waiting in line: microseconds
            return validate(batch, *args, **kwargs)

        gateway.prepare = counted_prepare  # type: ignore[method-assign]
        self.validate = counted_validate


def send_together(
    url: str, requests_: list[dict[str, Any]], gate: Gate, monkeypatch: pytest.MonkeyPatch
) -> list[requests.Response]:
    """The first request alone until its chain pass began, then the others at once."""
    monkeypatch.setattr(guard_chain, "validate", gate.validate)
    answers: list[requests.Response | None] = [None] * len(requests_)

    def send(k: int) -> None:
        answers[k] = post(url, requests_[k])

    threads = [threading.Thread(target=send, args=(k,)) for k in range(len(requests_))]
    threads[0].start()
    assert gate.first_started.wait(30)
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join(60)
    assert all(a is not None for a in answers)
    return answers  # type: ignore[return-value]


def post(url: str, request: dict[str, Any]) -> requests.Response:
    return requests.post(
        f"{url}/v1/records:{request['route']}",
        params=request.get("params"),
        data=request["body"],
        headers={**request["headers"], "Content-Type": request["type"]},
        timeout=60,
    )


@pytest.fixture(params=["sqlite", "postgresql", "postgresql+kafka"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> GatewaySettings:
    if request.param == "sqlite":
        return GatewaySettings(lineage_store=f"sqlite:///{tmp_path}/gateway.db")
    store = request.getfixturevalue("pg_store_url")
    if request.param == "postgresql":
        return GatewaySettings(lineage_store=store)
    bootstrap = request.getfixturevalue("kafka_bootstrap")
    out, quarantine = new_topics(bootstrap, "out", "q")
    return GatewaySettings(
        lineage_store=store,
        kafka=KafkaSettings(bootstrap_servers=bootstrap, group_id="unused"),
        output_topic=out,
        quarantine_topic=quarantine,
    )


def test_concurrent_admits_share_one_pass_of_the_chain(
    settings: GatewaySettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten single-record admits: the first is judged alone, the nine that arrive meanwhile
    in one pass (two passes for ten requests); each answer holds its own record and hop,
    lineage holds one confirmed hop per record, and with output topics each record is on
    its topic."""
    records = [g.record for g in generate(10, seed=81)]
    with served(settings, {"crm-api": None}) as (server, keys):
        gate = Gate(server.gateway, expected=10)
        sent = [
            {"route": "admit", "body": json_line(r), "type": JSON, "headers": keys["crm-api"]}
            for r in records
        ]
        answers = send_together(server.url, sent, gate, monkeypatch)
    assert [a.status_code for a in answers] == [200] * 10, [a.text for a in answers]
    assert gate.passes == [1, 9]
    verdicts = [a.json()["records"] for a in answers]
    assert [[v["record_id"] for v in vs] for vs in verdicts] == [[r["record_id"]] for r in records]
    assert all(vs[0]["allowed"] and vs[0]["index"] == 0 for vs in verdicts)
    with open_store(settings.lineage_store) as store:
        hops = {h.hop.record_id: h for h in store.hops([r["record_id"] for r in records])}
    assert len(hops) == 10
    for r, [v] in zip(records, verdicts, strict=True):
        stored = hops[r["record_id"]]
        assert v["hop_id"] == f"{stored.chain_id}#{stored.seq}/{stored.index}"
        assert stored.delivery is Delivery.CONFIRMED
    if settings.output_topic is not None:
        assert settings.kafka is not None
        on_topic = drain(settings.kafka.bootstrap_servers, settings.output_topic)
        assert sorted(m.key for m in on_topic if m.key) == sorted(
            r["record_id"].encode() for r in records
        )


def _mixed(keys: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    """Requests of three clients (`acme` bound to tenant `acme`, `any` and `kin` to none):
    checks and admits, JSON and Avro bodies, allowed records, one whose provenance was
    stripped, one of another tenant, and a child sent in one request whose parent is in
    another (the parent's class counts only where it is known: the store)."""
    made = list(generate(40, seed=83, faults=Faults(other_tenant=0.3)))
    acme = [g for g in made if g.record["tenant_id"] == "acme"]
    other = [g for g in made if g.record["tenant_id"] != "acme"]
    stripped = copy.deepcopy(acme[1].record)
    stripped["provenance"].update(generator=None, generated_at=None, disclosure=None)
    parent = next(g.record for g in made if g.record["provenance"]["content_class"] == "SYNTHETIC")
    child = copy.deepcopy(acme[2].record)
    child["record_id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, parent["record_id"]))
    child["provenance"].update(
        content_class="HUMAN",
        generator=None,
        generated_at=None,
        disclosure=None,
        parent_record_ids=[parent["record_id"]],
    )

    def req(client: str, route: str, body: str | bytes, kind: str = JSON, **extra: Any) -> Any:
        return {"route": route, "body": body, "type": kind, "headers": keys[client], **extra}

    return [
        req("acme", "check", json_line(acme[0].record)),
        req("acme", "admit", json_line(other[0].record), params={"stage": "crm-ingest"}),
        req(
            "acme",
            "admit",
            encode_single_object(stripped, acme[1].schema)
            + encode_single_object(acme[3].record, acme[3].schema),
            SINGLE,
        ),
        req(
            "any", "admit", "[" + json_line(acme[4].record) + "," + json_line(other[1].record) + "]"
        ),
        req("any", "check", json_line(stripped)),
        req("kin", "check", json_line(parent)),
        req("kin", "check", json_line(child)),
    ]


def _without_hops(answer: dict[str, Any]) -> dict[str, Any]:
    return {
        **answer,
        "records": [{k: v for k, v in r.items() if k != "hop_id"} for r in answer["records"]],
    }


def test_a_mixed_group_gets_the_verdicts_of_requests_sent_alone(
    tmp_path: Path, pg_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same requests one at a time (SQLite) and at once (PostgreSQL): the same answers,
    hop ids aside. At once, the requests of each client are judged in one pass, except the
    two whose records are parent and child (each alone: the parent's class is not known
    to the child's request), and a replay of an `Idempotency-Key` gets its first answer."""
    clients = {"acme": "acme", "any": None, "kin": None}
    with served(GatewaySettings(lineage_store=f"sqlite:///{tmp_path}/g.db"), clients) as (
        server,
        keys,
    ):
        alone = [post(server.url, r) for r in _mixed(keys)]
    assert [a.status_code for a in alone] == [200] * 7, [a.text for a in alone]
    rules = [[[v["rule"] for v in r["violations"]] for r in a.json()["records"]] for a in alone]
    assert rules == [
        [[]],
        [["tenant_mismatch"]],
        [["generator_required", "generated_at_required"], []],
        [[], []],
        [["generator_required", "generated_at_required"]],
        [[]],
        [[]],
    ]

    with served(GatewaySettings(lineage_store=pg_store_url), clients) as (server, keys):
        mixed = _mixed(keys)
        replay = {**mixed[1], "headers": {**mixed[1]["headers"], "Idempotency-Key": "k-1"}}
        original = post(server.url, replay)
        assert original.status_code == 200, original.text
        gate = Gate(server.gateway, expected=len(mixed))
        together = send_together(server.url, [*mixed, replay], gate, monkeypatch)
    assert [a.status_code for a in together] == [200] * 8, [a.text for a in together]
    assert [_without_hops(a.json()) for a in together[:7]] == [
        _without_hops(a.json()) for a in alone
    ]
    assert together[7].json() == original.json()  # the kept answer, hop ids and all
    assert all("hop_id" in v for a in together[1:4] for v in a.json()["records"])
    # the first (acme's check) alone; then acme's two admits (3 records) in one pass, any's
    # two (3 records) in one, kin's two alone
    assert gate.passes[0] == 1 and sorted(gate.passes[1:]) == [1, 1, 3, 3]
