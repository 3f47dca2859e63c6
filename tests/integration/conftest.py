"""Fixtures for tests that talk to a real Kafka broker and a real PostgreSQL.

Every test in this folder is marked `integration`. Each service comes from the first of:
- its environment variable: `KAFKA_BOOTSTRAP_SERVERS`, `LINEAGE_GUARD_PG_DSN`;
- Kafka only: a testcontainers broker, when testcontainers is installed and a Docker engine answers;
- the scripts in `infra/`, started once per test session (see `services.py`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from tests.integration.services import local_kafka, local_postgres

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees the whole session's items, not only this folder's.
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    if servers := os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield servers
        return
    if _docker_engine_answers():
        from testcontainers.community.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
        return
    with local_kafka() as servers:  # the same script CI uses
        yield servers


@pytest.fixture(scope="session")
def kafka_sasl_bootstrap(kafka_bootstrap: str) -> str:
    """The broker's SASL_PLAINTEXT listener (`infra/kafka/kafka.sh`: mechanism PLAIN, user
    `guard`, password `guard-secret`): `KAFKA_SASL_BOOTSTRAP_SERVERS`, else the port after
    the broker's controller port, as the script opens it."""
    if servers := os.environ.get("KAFKA_SASL_BOOTSTRAP_SERVERS"):
        return servers
    host, _, port = kafka_bootstrap.rpartition(":")
    return f"{host}:{int(port) + 2}"


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    if dsn := os.environ.get("LINEAGE_GUARD_PG_DSN"):
        yield dsn
        return
    with local_postgres() as dsn:
        yield dsn


def _docker_engine_answers() -> bool:
    try:
        import docker
        import testcontainers.community.kafka  # noqa: F401
    except ImportError:
        return False
    try:
        return bool(docker.from_env(timeout=3).ping())
    except Exception:  # no socket, connection refused, timeout: no engine to use
        return False


@pytest.fixture
def pg_store_url(pg_dsn: str) -> Iterator[str]:
    """A lineage store URL on the test PostgreSQL, in a schema of the test's own."""
    import psycopg
    from psycopg import sql

    name = f"lg_{uuid4().hex}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    separator = "&" if "?" in pg_dsn else "?"
    yield f"{pg_dsn}{separator}options=-csearch_path%3D{name}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))
