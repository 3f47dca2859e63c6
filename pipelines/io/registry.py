"""Schema look-ups by id in a Confluent Schema Registry, and what their failures mean.

A look-up's failure is a verdict on the record only when the registry answered about that id:

- transient (the registry unreachable, a time-out, HTTP 408, 429 or 5xx): the look-up is
  retried, backing off to 10 s, with a line on stderr each time saying what it waits for, for
  up to `wait_s` (the run's service-wait limit, `--service-wait`); then `ServiceUnavailableError`
  ends the run (exit 4) before the batch in hand is written, so no offset moves past its
  records. Never a verdict: a registry outage quarantines nothing.
- not held (HTTP 404: error code 40403 for the id, 40401/40402 for a referenced subject): asked
  once more after `NOT_HELD_RETRY_S` (Karapace answers 404 for ids it holds for a moment
  after a restart, until it has read its schemas topic); a second 404 makes the record
  undecodable (`SchemaNotHeld`, quarantined). That verdict is kept for `NOT_HELD_TTL_S`, so a
  topic full of one unknown id is not asked about once per message.
- refused (HTTP 401, 403): the registry's settings (credentials), `ConfigError`, exit 3.
- anything else about that id (422, a schema that does not parse or is not an Avro record):
  the record is undecodable.

confluent-kafka's client does its own retries (3 by default, silently) and has no time-out by
default: here it gets neither, so the waiting is ours and shows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from lineage_guard.contract.schemas import Schema
from lineage_guard.lineage.errors import ConfigError, ServiceUnavailableError

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 10.0
NOT_HELD_RETRY_S = 1.0
NOT_HELD_TTL_S = 60.0
MAX_DELAY_S = 10.0
TRANSIENT_STATUSES = frozenset({408, 429})


class SchemaNotHeld(Exception):
    """The registry says it does not hold the id (asked twice): the record is undecodable."""


def registry_client(url: str) -> Any:
    """confluent-kafka's `SchemaRegistryClient` for `url`, without retries of its own and with
    a time-out per request (`mock://…` URLs give its in-memory registry)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    config: dict[str, Any] = {"url": url}
    if not url.startswith("mock://"):
        config.update({"max.retries": 0, "timeout": REQUEST_TIMEOUT_S})
    return SchemaRegistryClient(config)


class PatientLookup:
    """`lookup(schema_id)` with the failures classified as in the module docstring."""

    def __init__(
        self,
        lookup: Callable[[int], Schema],
        *,
        url: str,
        wait_s: float,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._lookup = lookup
        self._url = url
        self._wait_s = wait_s
        self._sleep = sleep
        self._not_held: dict[int, tuple[float, str]] = {}  # id → (when, the registry's words)

    def __call__(self, schema_id: int) -> Schema:
        known = self._not_held.get(schema_id)
        if known is not None and time.monotonic() - known[0] < NOT_HELD_TTL_S:
            raise SchemaNotHeld(known[1])
        deadline = time.monotonic() + self._wait_s
        delay = 0.5
        asked_again = False
        while True:
            try:
                return self._lookup(schema_id)
            except Exception as exc:
                kind, why = classify(exc)
                if kind == "not held" and not asked_again:
                    asked_again = True
                    self._sleep(NOT_HELD_RETRY_S)
                    continue
                if kind == "not held":
                    words = (
                        f"the Schema Registry at `{self._url}` does not hold it ({why}; asked"
                        f" twice, {NOT_HELD_RETRY_S:.0f} s apart)"
                    )
                    self._not_held[schema_id] = (time.monotonic(), words)
                    raise SchemaNotHeld(words) from None
                if kind == "refused":
                    raise ConfigError(
                        f"The Schema Registry at `{self._url}` refused to give schema id"
                        f" {schema_id}: {why}. Check `--schema-registry` and its credentials."
                    ) from None
                if kind != "transient":
                    raise
                if time.monotonic() + delay > deadline:
                    raise ServiceUnavailableError(
                        f"The Schema Registry at `{self._url}` did not answer for"
                        f" {self._wait_s:.0f} s ({why}): records with schema id {schema_id}"
                        " were not decoded and their offsets not committed. Check"
                        " `--schema-registry`, then rerun."
                    ) from None
                log.warning(
                    "Schema Registry at `%s` unavailable (%s): waiting to resolve schema id %d,"
                    " retrying in %.1f s",
                    self._url,
                    why,
                    schema_id,
                    delay,
                )
                self._sleep(delay)
                delay = min(delay * 2, MAX_DELAY_S)


def classify(exc: BaseException) -> tuple[str, str]:
    """(`transient` | `not held` | `refused` | `record`, a one-line reason) for a look-up's
    exception."""
    from confluent_kafka.schema_registry.common._httpx_compat import httpx
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    if isinstance(exc, SchemaRegistryError):
        status = exc.http_status_code
        why = f"HTTP {status}, error code {exc.error_code}: {exc.error_message}"
        if status in TRANSIENT_STATUSES or status >= 500:
            return "transient", why
        if status == 404:
            return "not held", why
        if status in (401, 403):
            return "refused", why
        return "record", why
    if isinstance(exc, httpx.TransportError):  # refused, reset, DNS, time-outs
        return "transient", f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return "record", str(exc) or type(exc).__name__
