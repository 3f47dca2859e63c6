"""The `LineageStore` port, the URL that selects an implementation, and the stored row format.

Two implementations stand behind one contract test suite (`tests/lineage_contract.py`):

- `sqlite:///path/to.db`: the embedded default, a file (`sqlite:////abs/path.db` for an
  absolute path); see `lineage.stores.sqlite`.
- `postgresql://user@host:port/db`: a shared server; see `lineage.stores.postgres`.

Both keep two tables, `lineage_events` (one row per event, with its chain link) and
`lineage_chains` (each chain's head), so tampering can be shown with plain SQL.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterator, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, Self
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from lineage_guard.lineage.chain import ChainHead, UnreadableEvent, Verification
from lineage_guard.lineage.errors import ConfigError, CorruptLineageError
from lineage_guard.lineage.events import (
    STAGE_ORDER,
    Decision,
    LineageEvent,
    Reason,
    Stage,
    StoredEvent,
    parse_time,
)

DEFAULT_STORE_URL = "sqlite:///.lineage-guard/lineage.db"

EVENT_COLUMNS: tuple[str, ...] = (
    "chain_id",
    "seq",
    "record_id",
    "stage",
    "pipeline",
    "run_id",
    "at",
    "decision",
    "reasons",
    "content_class",
    "origin_env",
    "tenant_id",
    "source_system",
    "generator",
    "parent_record_ids",
    "source_topic",
    "source_partition",
    "source_offset",
    "destination",
    "prev_hash",
    "hash",
)


def event_row(stored: StoredEvent, *, at: Any, reasons: Any, parents: Any) -> tuple[Any, ...]:
    """A stored event's values in `EVENT_COLUMNS` order; each store passes its own encoding of
    the time, the reasons and the parents."""
    event = stored.event
    return (
        stored.chain_id, stored.seq, event.record_id, str(event.stage), event.pipeline,
        event.run_id, at, str(event.decision), reasons, event.content_class, event.origin_env,
        event.tenant_id, event.source_system, event.generator, parents, event.source_topic,
        event.source_partition, event.source_offset, event.destination, stored.prev_hash,
        stored.hash,
    )  # fmt: skip


class LineageStore(Protocol):
    """Where lineage events are kept, chained by hash. Implementations are thread-safe.

    Reads and writes that fail because the database is unreachable or refuses them raise
    `ServiceUnavailableError`; a stored row that is no valid event raises `CorruptLineageError`
    (`verify` reports it as a broken link instead).
    """

    @property
    def url(self) -> str:
        """The store's URL, without any password."""
        ...

    def append(self, events: Sequence[LineageEvent], *, chain_id: str) -> None:
        """Append `events`, in order, to chain `chain_id`: all of them in one transaction, or
        none. Links are computed under a lock on the chain's head, so concurrent writers
        never fork a chain."""
        ...

    def trace(self, record_id: str) -> list[StoredEvent]:
        """Every event of `record_id`, in order (time, then stage, chain and seq); [] if none."""
        ...

    def trace_many(
        self,
        record_ids: Collection[str],
        *,
        stage: Stage | None = None,
        decisions: Collection[Decision] | None = None,
    ) -> list[StoredEvent]:
        """The events of all `record_ids`, in order; only those of `stage` and with one of
        `decisions`, when given."""
        ...

    def events(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        stage: Stage | None = None,
        decision: Decision | None = None,
    ) -> Iterator[StoredEvent]:
        """Stream events with `since <= at < until` (and the given stage/decision), ordered by
        time, chain and seq. Reads through its own connection; rows are fetched in batches."""
        ...

    def chains(self) -> Iterator[str]:
        """Every chain id: those with a recorded head and those with events."""
        ...

    def head(self, chain_id: str) -> ChainHead | None:
        """The chain's recorded head, or None when the store has no such chain."""
        ...

    def verify(self, chain_id: str | None = None) -> Verification:
        """Walk one chain (or every chain) from one consistent snapshot and report the first
        broken link."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


def open_store(url: str, *, create: bool = True) -> LineageStore:
    """Open the store that `url` names; create its file or tables if missing, unless `create`
    is False (audits), which raises `ConfigError` for a store that holds no lineage.

    Raises `ConfigError` for a URL that names no store, `ServiceUnavailableError` when the
    database cannot be opened or reached.
    """
    scheme = url.partition(":")[0].lower()
    if scheme == "sqlite":
        from lineage_guard.lineage.stores.sqlite import SqliteStore

        return SqliteStore(sqlite_path(url), create=create)
    if scheme in ("postgresql", "postgres"):
        check_postgres_url(url)
        from lineage_guard.lineage.stores.postgres import PostgresStore

        return PostgresStore(url, create=create)
    raise ConfigError(f"Unknown lineage store URL `{redact_url(url)}`: {_URL_HELP}")


def check_postgres_url(url: str) -> None:
    """Raises `ConfigError` (one line, password hidden) for a PostgreSQL URL that libpq or
    Python cannot parse: bad percent-encoding, an unclosed `[IPv6` host, a bad port, an
    unknown parameter."""
    if not url.lower().startswith(("postgresql://", "postgres://")) or not _port_ok(url):
        raise ConfigError(f"Bad lineage store URL `{redact_url(url)}`: {_URL_HELP}")
    from psycopg import Error as PsycopgError
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(url)
    except PsycopgError as exc:
        raise ConfigError(
            f"Bad lineage store URL `{redact_url(url)}`: {redact_text(first_line(exc), url)}."
            " Use `postgresql://user@host:port/database` (percent-encode `@`, `:`, `/`, `%`"
            " in the user name and password)."
        ) from None


def no_lineage_error(url: str) -> ConfigError:
    return ConfigError(
        f"The lineage store `{url}` does not exist or holds no lineage tables:"
        " check `--lineage-store`, or run the guard first."
    )


_URL_HELP = (
    "use `sqlite:///relative/path.db`, `sqlite:////absolute/path.db` or"
    " `postgresql://user@host:port/database`."
)


def _port_ok(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed `[IPv6` host: libpq names what is wrong
        return True
    try:
        parts.port  # noqa: B018 (parsing it is the check)
    except ValueError:  # not a number, or out of range
        return "," in parts.netloc  # libpq's multi-host form: libpq checks it
    return True


def sqlite_path(url: str) -> str:
    """The file path in `sqlite:///path` (relative) or `sqlite:////path` (absolute)."""
    prefix = "sqlite:///"
    path = url[len(prefix) :] if url.lower().startswith(prefix) else ""
    if not path or path.endswith("/") or "?" in path or "#" in path:
        raise ConfigError(f"Bad lineage store URL `{url}`: {_URL_HELP}")
    return path


def redact_url(url: str) -> str:
    """`url` with any password (in the user info or a `password=` parameter) replaced by `***`.

    Works on URLs that do not parse too (the user info is found by its `user:password@`
    shape), so an error about a malformed URL can show it."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _redact_unparsed(url)
    userinfo, at, hostinfo = parts.netloc.rpartition("@")
    query = parts.query
    hidden_user = at and ":" in userinfo
    hidden_query = "password" in query.lower()
    if not (hidden_user or hidden_query):
        return url
    if hidden_user:
        userinfo = userinfo.partition(":")[0] + ":***"
    if hidden_query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in pairs])
    shown = f"{parts.scheme}://{userinfo}{at}{hostinfo}{parts.path}"
    return shown + (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else "")


_USERINFO_PASSWORD = re.compile(r"(?P<head>://[^:/?#@]*:)(?P<password>[^/?#]*)@")
_PARAM_PASSWORD = re.compile(r"(?P<head>[?&]password=)(?P<password>[^&#]*)", re.IGNORECASE)


def _redact_unparsed(url: str) -> str:
    url = _USERINFO_PASSWORD.sub(r"\g<head>***@", url, count=1)
    return _PARAM_PASSWORD.sub(r"\g<head>***", url)


def _passwords(url: str) -> list[str]:
    """The passwords written in `url`, as written and percent-decoded (longest first)."""
    found = [m["password"] for m in _USERINFO_PASSWORD.finditer(url)]
    found += [m["password"] for m in _PARAM_PASSWORD.finditer(url)]
    found += [unquote(p) for p in found] + [unquote(p.replace("+", " ")) for p in found]
    return sorted({p for p in found if p}, key=len, reverse=True)


def redact_text(text: str, url: str) -> str:
    """`text` (e.g. a driver's error message) with `url` and every password in it hidden:
    libpq quotes the URL, or the token it could not parse, in its messages."""
    if url and url in text:
        text = text.replace(url, redact_url(url))
    for password in _passwords(url):
        text = text.replace(password, "***")
    return text


def order_key(stored: StoredEvent) -> tuple[datetime, int, str, int]:
    """The order of a record's events: time, then stage, then chain position."""
    return (stored.event.at, STAGE_ORDER[stored.event.stage], stored.chain_id, stored.seq)


class _RowError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def stored_from_row(row: Sequence[Any]) -> StoredEvent:
    """A `StoredEvent` from a row of `EVENT_COLUMNS`, as either driver returns it (times as
    datetime or text; reasons and parents as lists or JSON text). Raises `CorruptLineageError`
    for a value no writer writes."""
    found = read_row(row)
    if isinstance(found, UnreadableEvent):
        raise CorruptLineageError(
            f"Lineage event chain `{found.chain_id}` seq {found.seq} (record"
            f" `{found.record_id}`) cannot be read: {found.error}. The store was altered;"
            " run `lineage-guard lineage verify`."
        )
    return found


_STAGES = {str(stage): stage for stage in Stage}
_DECISIONS = {str(decision): decision for decision in Decision}
_STR, _OPT, _INT = (str,), (str, type(None)), (int,)
_KINDS: tuple[tuple[type, ...], ...] = (
    _STR,  # chain_id
    _INT,  # seq
    _OPT,  # record_id
    _STR,  # stage
    _STR,  # pipeline
    _STR,  # run_id
    (str, datetime),  # at
    _STR,  # decision
    (str, list),  # reasons: JSON text or a list
    _OPT,  # content_class
    _OPT,  # origin_env
    _OPT,  # tenant_id
    _OPT,  # source_system
    _OPT,  # generator
    (str, list),  # parent_record_ids: JSON text or a list
    _STR,  # source_topic
    _INT,  # source_partition
    _INT,  # source_offset
    _OPT,  # destination
    _STR,  # prev_hash
    _STR,  # hash
)


def read_row(row: Sequence[Any]) -> StoredEvent | UnreadableEvent:
    """Like `stored_from_row`, but an unreadable row comes back as an `UnreadableEvent`."""
    (
        chain_id,
        seq,
        record_id,
        stage,
        pipeline,
        run_id,
        at,
        decision,
        reasons,
        content_class,
        origin_env,
        tenant_id,
        source_system,
        generator,
        parent_record_ids,
        source_topic,
        source_partition,
        source_offset,
        destination,
        prev_hash,
        hash_,
    ) = row
    try:
        for column, value, kinds in zip(EVENT_COLUMNS, row, _KINDS, strict=True):
            if type(value) not in kinds:
                raise _RowError(f"`{column}` is {value!r}, not a {kinds[0].__name__}")
        if stage not in _STAGES:
            raise _RowError(f"`stage` is {stage!r}, not one of {', '.join(_STAGES)}")
        if decision not in _DECISIONS:
            raise _RowError(f"`decision` is {decision!r}, not one of {', '.join(_DECISIONS)}")
        event = LineageEvent(
            record_id=record_id,
            stage=_STAGES[stage],
            pipeline=pipeline,
            run_id=run_id,
            at=parse_time(at) if type(at) is str else at,
            decision=_DECISIONS[decision],
            reasons=_reasons(reasons),
            content_class=content_class,
            origin_env=origin_env,
            tenant_id=tenant_id,
            source_system=source_system,
            generator=generator,
            parent_record_ids=_str_tuple(parent_record_ids),
            source_topic=source_topic,
            source_partition=source_partition,
            source_offset=source_offset,
            destination=destination,
        )
        return StoredEvent(event=event, chain_id=chain_id, seq=seq, prev_hash=prev_hash, hash=hash_)
    except (_RowError, ValueError, TypeError) as exc:
        return UnreadableEvent(
            chain_id=str(chain_id),
            seq=seq if type(seq) is int else None,
            record_id=record_id if type(record_id) is str else None,
            error=exc.message if isinstance(exc, _RowError) else str(exc).splitlines()[0],
        )


def _json(value: Any, column: str) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            raise _RowError(f"`{column}` is not JSON: {value[:40]!r}") from None
    return value


def _reasons(value: Any) -> tuple[Reason, ...]:
    if value == "[]" or value == []:
        return ()
    items = _json(value, "reasons")
    if not isinstance(items, list):
        raise _RowError(f"`reasons` is {items!r}, not a list")
    reasons = []
    for item in items:
        if not (
            isinstance(item, dict)
            and item.keys() == {"rule", "message"}
            and isinstance(item["rule"], str)
            and isinstance(item["message"], str)
        ):
            raise _RowError(f"`reasons` holds {item!r}, not a {{rule, message}} pair")
        reasons.append(Reason(rule=item["rule"], message=item["message"]))
    return tuple(reasons)


def _str_tuple(value: Any) -> tuple[str, ...]:
    if value == "[]" or value == []:
        return ()
    items = _json(value, "parent_record_ids")
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise _RowError(f"`parent_record_ids` is {items!r}, not a list of strings")
    return tuple(items)


def reasons_json(stored: StoredEvent) -> str:
    """The event's reasons as compact JSON text (SQLite keeps them as text)."""
    reasons = stored.event.reasons
    return _COMPACT.encode([reason.to_dict() for reason in reasons]) if reasons else "[]"


def parents_json(stored: StoredEvent) -> str:
    parents = stored.event.parent_record_ids
    return _COMPACT.encode(list(parents)) if parents else "[]"


# One encoder for every row: `json.dumps` with options builds a new encoder per call.
_COMPACT = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line, for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
