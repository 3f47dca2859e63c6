"""Start the real services from `infra/` for integration tests, without Docker.

CI and developers use the same scripts: `infra/kafka/kafka.sh` and `infra/postgres/postgres.sh`.
Each context manager gives its service a fresh data dir of its own and deletes it on exit, so
a developer's own broker or database data is never touched.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

INFRA = Path(__file__).resolve().parents[2] / "infra"
KAFKA_SH = INFRA / "kafka" / "kafka.sh"
POSTGRES_SH = INFRA / "postgres" / "postgres.sh"
START_TIMEOUT_S = 600  # the first start downloads Kafka's jars


class ServiceError(RuntimeError):
    """An `infra/` script failed; the message carries what it printed on stderr."""


@contextmanager
def local_kafka(port: int | None = None) -> Iterator[str]:
    """Run a single-node Kafka broker; yield its bootstrap address, `127.0.0.1:PORT`.
    With `port`, on that port and the next (controller): an instance of the caller's own."""
    ports = {"KAFKA_PORT": str(port), "KAFKA_CONTROLLER_PORT": str(port + 1)} if port else {}
    with _service(KAFKA_SH, "KAFKA_DATA_DIR", "KAFKA_BOOTSTRAP_SERVERS", ports) as servers:
        yield servers


@contextmanager
def local_postgres(port: int | None = None) -> Iterator[str]:
    """Run a PostgreSQL server; yield the DSN of its `lineage_guard` database."""
    ports = {"PG_PORT": str(port)} if port else {}
    with _service(POSTGRES_SH, "PG_DATA_DIR", "LINEAGE_GUARD_PG_DSN", ports) as dsn:
        yield dsn


class Control:
    """Stops and restarts a service this module started (outage tests), data kept."""

    def __init__(self, script: Path, env: dict[str, str]) -> None:
        self.script, self.env = script, env

    def stop(self) -> None:
        _run(self.script, "stop", env=self.env)

    def start(self) -> None:
        _run(self.script, "start", env=self.env)


_controls: dict[str, Control] = {}


def control(address: str) -> Control | None:
    """The control of a service started here, by the address it yielded (None: not ours)."""
    return _controls.get(address)


@contextmanager
def _service(
    script: Path, data_dir_var: str, use_instead_var: str, extra: dict[str, str] | None = None
) -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="lineage-guard-") as tmp:
        os.chmod(tmp, 0o755)  # as root, postgres.sh runs the server as `postgres`: let it in
        env = {**os.environ, **(extra or {}), data_dir_var: str(Path(tmp) / "data")}
        try:  # stop even when start failed half-way or was interrupted
            address = _start(script, env, use_instead_var)
            _controls[address] = Control(script, env)
            yield address
        finally:
            _run(script, "stop", "--wipe", env=env)


def _start(script: Path, env: dict[str, str], use_instead_var: str) -> str:
    try:
        return _run(script, "start", env=env).strip().splitlines()[-1]
    except ServiceError as exc:
        hint = f"To use a service that is already running, set `{use_instead_var}`."
        raise ServiceError(f"{exc}\n{hint}") from None


def _run(script: Path, *args: str, env: dict[str, str]) -> str:
    command = ["bash", str(script), *args]
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=START_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ServiceError(f"`{' '.join(command)}` took over {START_TIMEOUT_S} s.") from exc
    if done.returncode != 0:
        raise ServiceError(
            f"`{' '.join(command)}` failed with exit code {done.returncode}:\n{done.stderr}"
        )
    return done.stdout
