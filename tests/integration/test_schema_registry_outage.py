"""A Schema Registry outage is an outage, never a verdict on the records (issue 19.2).

The registry here is a minimal HTTP server written for the test (no registry server installs
from our package registries): it serves the Confluent Schema Registry REST shape the guard
uses, `GET /schemas/ids/{id}` → `{"schema": "…"}`, and can refuse connections (not listening),
answer 503, or answer 404 (`error_code` 40403) for ids it holds, as Karapace does for a moment
after a restart. The guard talks to it with confluent-kafka's own `SchemaRegistryClient`, and
reads and writes the real broker.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from lineage_guard.contract.schemas import load_schema
from lineage_guard.generate import CONTACT, generate
from lineage_guard.io.decode import encode_confluent
from tests.integration import faults_table
from tests.integration.kafka_helpers import (
    committed,
    drain,
    guard_args,
    guard_cli,
    new_topics,
    produce,
)

HELD_ID, UNKNOWN_ID = 7, 8
GUARD = [sys.executable, "-c", "from lineage_guard.cli.main import main; main()"]


class Registry:
    """The registry's REST shape on 127.0.0.1:`port`: holds `HELD_ID` (the contact schema).
    `start()` begins listening (until then connections are refused); `unavailable` answers
    503 to that many requests; with `not_yet`, the first request for `HELD_ID` on each
    connection (each client: the guard's decoders each have one) is answered 404."""

    def __init__(self, port: int, *, unavailable: int = 0, not_yet: bool = False) -> None:
        self.port = port
        self.unavailable = unavailable
        self.not_yet = not_yet
        self.asked: Counter[int] = Counter()
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        registry = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: one connection per client
            held_asked = 0  # requests for HELD_ID on this connection

            def do_GET(self) -> None:
                prefix = "/schemas/ids/"
                schema_id = int(self.path.split("?")[0][len(prefix) :])
                registry.asked[schema_id] += 1
                if registry.unavailable > 0:
                    registry.unavailable -= 1
                    self._answer(503, {"error_code": 50003, "message": "starting"})
                elif schema_id == HELD_ID and registry.not_yet and not self.held_asked:
                    self.held_asked += 1
                    self._answer(404, {"error_code": 40403, "message": "Schema not found"})
                elif schema_id == HELD_ID:
                    self._answer(200, {"schema": json.dumps(load_schema(CONTACT))})
                else:
                    self._answer(404, {"error_code": 40403, "message": "Schema not found"})

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def registry() -> Iterator[Registry]:
    made = Registry(_free_port())
    yield made
    made.stop()


def _confluent_records(count: int, schema_id: int, seed: int) -> list[Any]:
    generated = generate(count, seed=seed, entities=(CONTACT,))
    return [(None, encode_confluent(g.record, CONTACT, schema_id), []) for g in generated]


def _args(bootstrap: str, topics: list[str], registry: Registry, tmp_path: Path) -> list[str]:
    src, out, quarantine = topics
    return [
        *guard_args(bootstrap, src, out, quarantine, f"g-{src}"),
        "--schema-registry",
        registry.url,
        "--lineage-store",
        f"sqlite:///{tmp_path}/lineage.db",
    ]


def test_a_registry_down_at_the_start_is_waited_out_with_a_line_then_everything_decodes(
    kafka_bootstrap: str, registry: Registry, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Before: the records were quarantined as `undecodable` ("connection refused") and the
    offsets committed past them, exit 0; or the guard waited silently."""
    topics = new_topics(kafka_bootstrap, "src", "out", "q")
    produce(kafka_bootstrap, topics[0], _confluent_records(30, HELD_ID, seed=1921))
    registry.unavailable = 2  # once listening, it still answers 503 twice
    log = tmp_path / "guard.stderr"
    with log.open("wb") as stderr:
        guard = subprocess.Popen(
            [*GUARD, *_args(kafka_bootstrap, topics, registry, tmp_path), "--service-wait", "120"],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            deadline = time.monotonic() + 120
            while b"Schema Registry at" not in log.read_bytes():
                assert guard.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "no line on stderr while waiting"
                time.sleep(0.1)
            time.sleep(3)  # down for a while longer: the guard keeps waiting
            assert guard.poll() is None, log.read_text()
            registry.start()
            guard.wait(timeout=180)
        finally:
            if guard.poll() is None:
                guard.kill()
    said = log.read_text()
    assert guard.returncode == 0, said
    assert "Traceback" not in said
    assert "read 30, allowed 30, quarantined 0" in said, said
    waits = [line for line in said.splitlines() if "lineage_guard.io.registry" in line]
    assert waits and all(
        f"Schema Registry at `{registry.url}` unavailable" in line
        and f"waiting to resolve schema id {HELD_ID}" in line
        for line in waits
    ), said
    assert any("HTTP 503" in line for line in waits), said
    assert len(drain(kafka_bootstrap, topics[1])) == 30
    assert committed(kafka_bootstrap, f"g-{topics[0]}", topics[0]) == {0: 30}
    faults_table.record(
        "schema_registry_down_then_up",
        {
            "fault": "Schema Registry refusing, then 503 x2, then up",
            "records_in": 30, "out": 30, "quarantined": 0, "duplicates": 0, "lost": 0,
            "messages": 30, **faults_table.lineage_figures(f"sqlite:///{tmp_path}/lineage.db"),
            "command": f"python3 -m pytest {request.node.nodeid}",
            "notes": f"exit 0; {len(waits)} waiting lines on stderr; nothing quarantined",
        },
    )  # fmt: skip


def test_a_registry_down_longer_than_the_service_wait_ends_the_run_committing_nothing(
    kafka_bootstrap: str, registry: Registry, tmp_path: Path
) -> None:
    topics = new_topics(kafka_bootstrap, "src", "out", "q")
    produce(kafka_bootstrap, topics[0], _confluent_records(30, HELD_ID, seed=1922))
    args = _args(kafka_bootstrap, topics, registry, tmp_path)

    result = guard_cli(*args, "--service-wait", "3", timeout=120)
    assert result.returncode == 4, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"lineage-guard: error: The Schema Registry at `{registry.url}` did not answer for 3 s"
    ), result.stderr
    assert "offsets not committed" in last
    assert drain(kafka_bootstrap, topics[1]) == [] and drain(kafka_bootstrap, topics[2]) == []
    assert committed(kafka_bootstrap, f"g-{topics[0]}", topics[0]) == {0: -1001}

    registry.start()  # the rerun, with the registry back, guards every record
    rerun = guard_cli(*args, timeout=120)
    assert rerun.returncode == 0 and "read 30, allowed 30, quarantined 0" in rerun.stderr


def test_an_id_the_registry_does_not_hold_is_asked_again_once_before_it_is_a_verdict(
    kafka_bootstrap: str, registry: Registry, tmp_path: Path
) -> None:
    """Right after a restart Karapace answers 404 for ids it holds: one 404 is not a verdict.
    An id still not held on the second ask makes its records undecodable, asked about twice
    in all, not once per record."""
    topics = new_topics(kafka_bootstrap, "src", "out", "q")
    sent = [
        *_confluent_records(20, HELD_ID, seed=1923),
        *_confluent_records(10, UNKNOWN_ID, seed=1924),
    ]
    produce(kafka_bootstrap, topics[0], sent)
    registry.not_yet = True
    registry.start()

    result = guard_cli(*_args(kafka_bootstrap, topics, registry, tmp_path), timeout=120)
    assert result.returncode == 0, result.stderr
    assert "read 30, allowed 20, quarantined 10" in result.stderr, result.stderr
    assert len(drain(kafka_bootstrap, topics[1])) == 20
    stopped = drain(kafka_bootstrap, topics[2])
    source_offsets = sorted(int(m.header("lineage-guard.source-offset") or -1) for m in stopped)
    assert source_offsets == list(range(20, 30))
    reasons = json.loads(stopped[0].header("lineage-guard.reasons") or b"[]")
    assert [r["rule"] for r in reasons] == ["undecodable"]
    assert "does not hold it (HTTP 404, error code 40403" in reasons[0]["message"], reasons
    # Twice per decoder (the run reads the source twice, for the parents' index and to guard
    # it, each with its own decoder), not once per record (10 records, 20 reads).
    assert registry.asked[UNKNOWN_ID] in (2, 4), registry.asked
