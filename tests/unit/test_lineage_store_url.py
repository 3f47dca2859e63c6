"""Which store a URL opens, what a bad one says, and how passwords stay out of messages."""

from __future__ import annotations

import socket

import pytest

from lineage_guard.lineage.errors import ConfigError, ServiceUnavailableError
from lineage_guard.lineage.store import open_store, redact_url, sqlite_path


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///.lineage-guard/lineage.db", ".lineage-guard/lineage.db"),
        ("sqlite:////var/lib/lineage.db", "/var/lib/lineage.db"),
        ("SQLITE:///x.db", "x.db"),
    ],
)
def test_sqlite_paths(url: str, path: str) -> None:
    assert sqlite_path(url) == path


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql://auditor:s3cret@db.example:5432/lineage",
            "postgresql://auditor:***@db.example:5432/lineage",
        ),
        (
            "postgresql://auditor@db.example/lineage?password=s3cret&sslmode=require",
            "postgresql://auditor@db.example/lineage?password=%2A%2A%2A&sslmode=require",
        ),
        ("postgresql://db.example/lineage", "postgresql://db.example/lineage"),
        ("sqlite:///x.db", "sqlite:///x.db"),
    ],
)
def test_redact_url_hides_passwords(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "url",
    ["mysql://db/lineage", "lineage.db", "", "http://db/x", "postgresql:/db"],
)
def test_unknown_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError) as raised:
        open_store(url)
    assert "`sqlite:///relative/path.db`" in raised.value.message
    assert raised.value.exit_code == 3


def test_a_bad_port_is_a_config_error_that_hides_the_password() -> None:
    with pytest.raises(ConfigError) as raised:
        open_store("postgresql://auditor:s3cret@127.0.0.1:notaport/lineage")
    assert raised.value.message.startswith(
        "Bad lineage store URL `postgresql://auditor:***@127.0.0.1:notaport/lineage`"
    )


def test_an_unreachable_server_is_unavailable_in_one_line_without_the_password() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ServiceUnavailableError) as raised:
        open_store(f"postgresql://auditor:s3cret@127.0.0.1:{port}/lineage_guard")
    message = raised.value.message
    assert message.startswith(
        f"Cannot reach the lineage store `postgresql://auditor:***@127.0.0.1:{port}/lineage_guard`"
    )
    assert message.endswith("Check `--lineage-store` and that PostgreSQL is running.")
    assert "s3cret" not in message
    assert "\n" not in message
    assert raised.value.exit_code == 4
