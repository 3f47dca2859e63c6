"""The gateway under load while its broker or its PostgreSQL stops: 503s with `Retry-After`,
no record recorded as delivered that is not on the topic, nothing admitted twice when the
client retries with the same `Idempotency-Key`.

The services stopped are instances of this module's own, on `test_faults.py`'s fixed ports:
run it only under `flock /tmp/faults.lock`, as `test_faults.py`. Figures go to
`build/test-artifacts/faults.json` (`python3 -m tests.integration.faults_table`).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import requests

from lineage_guard.generate import CONTACT, generate
from lineage_guard.io.decode import encode_single_object
from lineage_guard.io.kafka import KafkaSettings
from lineage_guard.lineage.hops import Delivery
from lineage_guard.lineage.store import open_store
from lineage_guard.web.gateway import GatewaySettings
from tests.integration import faults_table
from tests.integration.kafka_helpers import new_topics
from tests.integration.services import control, local_kafka, local_postgres
from tests.integration.test_faults import OWN_KAFKA_PORT, OWN_PG_PORT, _read_all
from tests.integration.test_gateway import SINGLE, gateway

CLIENTS = 4
REQUESTS = 40  # per client
PER_REQUEST = 10


class Load:
    """`CLIENTS` threads, each admitting `REQUESTS` bodies of `PER_REQUEST` records, each body
    under its own `Idempotency-Key`, retried with that key after a 503 until it is admitted."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        records = list(generate(CLIENTS * REQUESTS * PER_REQUEST, seed=81, entities=(CONTACT,)))
        self.ids = [g.record["record_id"] for g in records]
        self.bodies = [
            b"".join(
                encode_single_object(g.record, g.schema)
                for g in records[n * PER_REQUEST : (n + 1) * PER_REQUEST]
            )
            for n in range(CLIENTS * REQUESTS)
        ]
        self.url, self.headers = url, headers
        self.statuses: Counter[int] = Counter()
        self.retry_after: set[str] = set()
        self.answers: dict[int, dict[str, Any]] = {}
        self.replays = 0
        self._lock = threading.Lock()
        self.done = 0

    def run(self, during: Callable[[], None]) -> None:
        threads = [threading.Thread(target=self._client, args=(c,)) for c in range(CLIENTS)]
        for thread in threads:
            thread.start()
        while self.done < REQUESTS // 4:  # the fault strikes a quarter of the way in
            time.sleep(0.05)
        during()
        for thread in threads:
            thread.join(timeout=600)
            assert not thread.is_alive()

    def _admit(self, session: requests.Session, n: int, headers: dict[str, str]) -> Any:
        """Body `n` admitted: sent, and after a 503 sent again with the same key."""
        deadline = time.monotonic() + 300
        while True:
            answer = session.post(self.url, data=self.bodies[n], headers=headers, timeout=60)
            with self._lock:
                self.statuses[answer.status_code] += 1
            if answer.status_code == 200:
                return answer.json()
            assert answer.status_code == 503, answer.text
            assert "Traceback" not in answer.text
            with self._lock:
                self.retry_after.add(answer.headers.get("Retry-After", ""))
            assert time.monotonic() < deadline, "not admitted within 300 s"
            time.sleep(0.5)

    def _client(self, client: int) -> None:
        session = requests.Session()
        key_base = uuid.uuid4().hex
        for n in range(client * REQUESTS, (client + 1) * REQUESTS):
            headers = {
                **self.headers,
                "Content-Type": SINGLE,
                "Idempotency-Key": f"{key_base}-{n}",
            }
            first = self._admit(session, n, headers)
            again = self._admit(session, n, headers)  # a retry whose answer was lost
            assert again == first
            with self._lock:
                self.answers[n] = first
                self.replays += 1
                self.done += client == 0


def _figures(
    load: Load, bootstrap: str, topics: tuple[str, str], store: str, fault: str
) -> dict[str, Any]:
    out, quarantine = topics
    messages = [*_read_all(bootstrap, out), *_read_all(bootstrap, quarantine)]
    copies = Counter(m.key.decode() for m in messages if m.key)
    with open_store(store, create=False) as lineage:
        hops = lineage.hops(load.ids)
        verified = lineage.verify()
    assert verified.ok, verified.broken
    hop_counts = Counter(h.hop.record_id for h in hops)
    confirmed = {h.hop.record_id for h in hops if h.delivery is Delivery.CONFIRMED}
    return {
        "fault": fault,
        "records_in": len(load.ids),
        "out": len(messages),
        "quarantined": 0,
        "duplicates": sum(n - 1 for n in copies.values()),
        "lost": len(set(load.ids) - set(copies)),
        "lineage_rows": len(hops),
        "lineage_confirmed": len(confirmed),
        "messages": len(messages),
        "verify": f"ok ({verified.batches} batches, {verified.hops} hops)",
        "admitted_twice": sum(n > 1 for n in hop_counts.values()),
        "confirmed_not_on_topic": len(confirmed - set(copies)),
        "http": dict(sorted(load.statuses.items())),
        "retry_after": sorted(load.retry_after),
        "replays": load.replays,
        "command": "flock /tmp/faults.lock python3 -m pytest tests/integration/"
        "test_gateway_faults.py",
        "notes": f"HTTP {dict(sorted(load.statuses.items()))} over {CLIENTS} clients (each body"
        " retried with its Idempotency-Key after a 503, then once more after its 200);"
        f" admitted twice {sum(n > 1 for n in hop_counts.values())}, confirmed but not on the"
        f" topic {len(confirmed - set(copies))}",
    }


def _assert_held(figures: dict[str, Any]) -> None:
    assert figures["http"].get(503, 0) > 0, figures  # the fault was felt
    assert figures["retry_after"] == ["5"], figures
    assert figures["lost"] == 0, figures
    assert figures["duplicates"] == 0, figures
    assert figures["admitted_twice"] == 0, figures
    assert figures["confirmed_not_on_topic"] == 0, figures
    assert figures["lineage_rows"] == figures["records_in"] == figures["lineage_confirmed"]


def test_broker_stop_during_a_load(pg_store_url: str) -> None:
    with local_kafka(port=OWN_KAFKA_PORT) as own_kafka:
        broker = control(own_kafka)
        assert broker is not None
        topics = (out, quarantine) = tuple(new_topics(own_kafka, "out", "q"))
        settings = GatewaySettings(
            lineage_store=pg_store_url,
            kafka=KafkaSettings(bootstrap_servers=own_kafka, group_id="unused"),
            output_topic=out,
            quarantine_topic=quarantine,
            ack_timeout_s=3.0,
        )
        with gateway(settings) as (served, headers):
            load = Load(f"{served.url}/v1/records:admit", headers)

            def outage() -> None:
                broker.stop()
                time.sleep(5)
                broker.start()

            load.run(outage)
        figures = _figures(load, own_kafka, topics, pg_store_url, "gateway: broker stop 5 s")
    print(figures)
    _assert_held(figures)
    faults_table.record("gateway_broker_stop", figures)


def test_database_stop_during_a_load(kafka_bootstrap: str) -> None:
    with local_postgres(port=OWN_PG_PORT) as dsn:
        database = control(dsn)
        assert database is not None
        topics = (out, quarantine) = tuple(new_topics(kafka_bootstrap, "out", "q"))
        settings = GatewaySettings(
            lineage_store=dsn,
            kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, group_id="unused"),
            output_topic=out,
            quarantine_topic=quarantine,
        )
        with gateway(settings) as (served, headers):
            load = Load(f"{served.url}/v1/records:admit", headers)

            def outage() -> None:
                database.stop()
                time.sleep(5)
                database.start()

            load.run(outage)
        figures = _figures(load, kafka_bootstrap, topics, dsn, "gateway: database stop 5 s")
    print(figures)
    _assert_held(figures)
    faults_table.record("gateway_database_stop", figures)
