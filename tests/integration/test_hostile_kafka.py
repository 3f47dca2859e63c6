"""Hostile Kafka input on the real broker: forged headers in the guard's namespaces."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from lineage_guard.generate import CONTACT, generate
from lineage_guard.io.decode import encode_single_object
from lineage_guard.lineage.store import open_store
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


# -- secrets: from the environment and files, never left in /proc/PID/cmdline ----------------

SASL = {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN", "sasl.username": "guard"}
KAFKA_PASSWORD = "guard-secret"  # infra/kafka/kafka.sh's test user
DB_PASSWORD = "Db-S3cret"  # the test PostgreSQL trusts its clients: any password logs in
OL_KEY = "ol-key-7f3a"


class _OpenLineageEndpoint:
    """An HTTP endpoint that accepts OpenLineage events and keeps their Authorization."""

    def __init__(self) -> None:
        self.authorizations: list[str | None] = []
        received = self.authorizations

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.append(self.headers.get("Authorization"))
                self.send_response(201)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/api/v1/lineage"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _OpenLineageEndpoint:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _run_watching_cmdline(
    args: list[str], env: dict[str, str]
) -> tuple[subprocess.CompletedProcess[str], list[bytes]]:
    """Runs the CLI; returns its result and every distinct `/proc/PID/cmdline` seen meanwhile."""
    command = [sys.executable, "-c", "from lineage_guard.cli.main import main; main()", *args]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    seen: list[bytes] = []
    while process.poll() is None:
        try:
            cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        except OSError:
            break
        if cmdline and (not seen or seen[-1] != cmdline):
            seen.append(cmdline)
        time.sleep(0.01)
    stdout, stderr = process.communicate(timeout=600)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr), seen


def _sasl_works(bootstrap: str) -> None:
    """The listener refuses a wrong password: a run that gets through used the right one."""
    config = {"bootstrap.servers": bootstrap, **SASL, "log_level": 0}
    AdminClient({**config, "sasl.password": KAFKA_PASSWORD}).list_topics(timeout=30)
    with pytest.raises(KafkaException):
        AdminClient({**config, "sasl.password": "wrong"}).list_topics(timeout=3)


def _hops(url: str) -> int:
    with open_store(url, create=False) as store:
        return sum(1 for _ in store.events())


def test_secrets_from_the_environment_and_files(
    kafka_bootstrap: str, kafka_sasl_bootstrap: str, pg_store_url: str, tmp_path: Path
) -> None:
    _sasl_works(kafka_sasl_bootstrap)
    src, out, quarantine = new_topics(kafka_bootstrap, "src", "out", "q")
    records = generate(200, seed=52, entities=(CONTACT,))
    produce(
        kafka_bootstrap,
        src,
        [(None, encode_single_object(g.record, g.schema), []) for g in records],
    )
    config_file = tmp_path / "client.properties"
    lines = [f"{k}={v}" for k, v in SASL.items()] + [f"sasl.password={KAFKA_PASSWORD}"]
    config_file.write_text("# Kafka client settings\n" + "\n".join(lines) + "\n")
    key_file = tmp_path / "ol.key"
    key_file.write_text(OL_KEY + "\n")
    store_url = pg_store_url.replace(
        "postgresql://postgres@", f"postgresql://postgres:{DB_PASSWORD}@"
    )
    env = {
        **os.environ,
        "LINEAGE_GUARD_STORE_URL": store_url,
        "LINEAGE_GUARD_KAFKA_CONFIG_FILE": str(config_file),
    }
    with _OpenLineageEndpoint() as endpoint:
        result, cmdlines = _run_watching_cmdline(
            [
                *guard_args(kafka_sasl_bootstrap, src, out, quarantine, "secrets-env"),
                "--openlineage",
                endpoint.url,
                "--openlineage-api-key-file",
                str(key_file),
            ],
            env,
        )
    assert result.returncode == 0, result.stderr
    assert "read 200, allowed 200" in result.stderr
    assert len(drain(kafka_bootstrap, out, 200)) == 200
    assert _hops(store_url) > 0  # the store came from LINEAGE_GUARD_STORE_URL
    assert endpoint.authorizations and set(endpoint.authorizations) == {f"Bearer {OL_KEY}"}
    for secret in (KAFKA_PASSWORD, DB_PASSWORD, OL_KEY):
        assert all(secret.encode() not in cmdline for cmdline in cmdlines)
        assert secret not in result.stdout + result.stderr


def test_secrets_given_on_the_command_line_leave_the_process_title(
    kafka_bootstrap: str, kafka_sasl_bootstrap: str, pg_store_url: str, tmp_path: Path
) -> None:
    src, out, quarantine = new_topics(kafka_bootstrap, "src", "out", "q")
    records = generate(200, seed=53, entities=(CONTACT,))
    produce(
        kafka_bootstrap,
        src,
        [(None, encode_single_object(g.record, g.schema), []) for g in records],
    )
    store_url = pg_store_url.replace(
        "postgresql://postgres@", f"postgresql://postgres:{DB_PASSWORD}@"
    )
    kafka_flags = [f"--kafka-config={k}={v}" for k, v in SASL.items()]
    with _OpenLineageEndpoint() as endpoint:
        result, cmdlines = _run_watching_cmdline(
            [
                *guard_args(kafka_sasl_bootstrap, src, out, quarantine, "secrets-argv"),
                *kafka_flags,
                "--kafka-config",
                f"sasl.password={KAFKA_PASSWORD}",
                "--lineage-store",
                store_url,
                "--openlineage",
                endpoint.url,
                "--openlineage-api-key",
                OL_KEY,
            ],
            dict(os.environ),
        )
    assert result.returncode == 0, result.stderr
    assert "read 200, allowed 200" in result.stderr
    assert all(secret not in result.stderr for secret in (KAFKA_PASSWORD, DB_PASSWORD, OL_KEY))
    assert _hops(store_url) > 0
    assert set(endpoint.authorizations) == {f"Bearer {OL_KEY}"}
    titled = [n for n, cmdline in enumerate(cmdlines) if cmdline.startswith(b"lineage-guard run")]
    assert titled, cmdlines  # the title was rewritten while the run went on…
    title = cmdlines[titled[0]].rstrip(b"\0").decode()
    assert "--kafka-config 'sasl.password=***'" in title
    assert "--lineage-store 'postgresql://postgres:***@" in title
    assert "--openlineage-api-key '***'" in title
    for cmdline in cmdlines[titled[0] :]:  # …and no secret was visible from then on
        for secret in (KAFKA_PASSWORD, DB_PASSWORD, OL_KEY):
            assert secret.encode() not in cmdline
