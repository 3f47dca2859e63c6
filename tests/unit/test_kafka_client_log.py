"""librdkafka's log lines through our logger, summarised (`io.kafka.ClientLog`)."""

from __future__ import annotations

import logging

import pytest

from lineage_guard.io.kafka import ClientLog

REFUSED = (
    "[thrd:127.0.0.1:19192/{n}]: 127.0.0.1:19192/{n}: Connect to ipv4#127.0.0.1:19192 failed:"
    " Connection refused (after {n}ms in state CONNECT{more})"
)


def test_the_same_line_from_every_client_passes_once_per_interval_at_most_as_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("test-librdkafka")
    client_log = ClientLog(logger, interval_s=3600)
    with caplog.at_level(logging.DEBUG, logger="test-librdkafka"):
        for n in range(500):
            client = f"rdkafka#{'producer' if n % 2 else 'consumer'}-{n % 7}"
            more = ", 1 identical error(s) suppressed" if n % 3 else ""
            client_log.log(40, "%s [%s] %s", "FAIL", client, REFUSED.format(n=n, more=more))
        client_log.log(40, "%s [%s] %s", "FAIL", "rdkafka#producer-1", "SASL authentication error")
    assert [(r.levelno, r.getMessage()[:40]) for r in caplog.records] == [
        (logging.WARNING, "FAIL [rdkafka#consumer-0] [thrd:127.0.0."),
        (logging.WARNING, "FAIL [rdkafka#producer-1] SASL authentic"),
    ]


def test_a_line_after_the_interval_says_how_many_were_held(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("test-librdkafka-2")
    client_log = ClientLog(logger, interval_s=0.0)
    with caplog.at_level(logging.DEBUG, logger="test-librdkafka-2"):
        client_log.log(30, "%s", "a")
        client_log.log(30, "%s", "a")
    assert [r.getMessage() for r in caplog.records] == ["a", "a"]
    client_log = ClientLog(logger, interval_s=3600)
    client_log.log(30, "%s", "b")
    client_log.log(30, "%s", "b")
    client_log._seen["b"] = (client_log._seen["b"][0] - 3601, client_log._seen["b"][1])
    with caplog.at_level(logging.DEBUG, logger="test-librdkafka-2"):
        caplog.clear()
        client_log.log(30, "%s", "b")
    assert [r.getMessage() for r in caplog.records] == ["b (1 more like it in the last 3600 s)"]
