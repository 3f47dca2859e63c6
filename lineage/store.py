"""The `LineageStore` port, and the URL that selects an implementation.

Two implementations stand behind one contract test suite (`tests/lineage_contract.py`):

- `sqlite:///path/to.db`: the embedded default, a file (`sqlite:////abs/path.db` for an
  absolute path); see `lineage.stores.sqlite`.
- `postgresql://user@host:port/db`: a shared server; see `lineage.stores.postgres`.

Both keep the same tables (`lineage.stores.sql`): one row per record per pass through a guard
(a hop), one chain entry per written batch or delivery confirmation, chain heads and signed
checkpoints, so tampering can be shown with plain SQL.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from lineage_guard.lineage.accounts import AccountStore
from lineage_guard.lineage.errors import ConfigError
from lineage_guard.lineage.events import STAGE_ORDER, Decision, Stage, StoredEvent

if TYPE_CHECKING:
    from lineage_guard.lineage.chain import BrokenLink, ChainHead, Entry, Failure, Verification
    from lineage_guard.lineage.checkpoints import Checkpoint
    from lineage_guard.lineage.hops import HopBatch, Outcome, StoredHop

DEFAULT_STORE_URL = "sqlite:///.lineage-guard/lineage.db"
# The environment variable the CLI reads `--lineage-store` from (at its entry point only; the
# library takes the URL as an argument), so a password need not be on the command line.
STORE_URL_ENV = "LINEAGE_GUARD_STORE_URL"


@dataclass(frozen=True, kw_only=True)
class RunCount:
    """How many hops of one run share one decision (`LineageStore.run_counts`)."""

    outcome: str  # delivered | quarantined | blocked
    stopped_at: str | None
    rules: tuple[str, ...]  # the distinct rules of the hops' reasons, sorted
    content_class: str | None
    origin_env: str | None
    confirmed: bool  # the destination acknowledged them (a delivery entry, not failed)
    count: int


@dataclass(frozen=True, kw_only=True)
class HopCount:
    """How many hops share an hour, a pipeline and a decision (`LineageStore.hop_counts`)."""

    hour: datetime
    pipeline: str
    outcome: str
    stopped_at: str | None
    content_class: str | None
    tenant_id: str | None
    count: int


@dataclass(frozen=True, kw_only=True)
class LeakCheck:
    """A leak count the console kept (`LineageStore.record_leak_check`): started `at`, when
    the store's newest entry was `up_to_entry`, taking `seconds`; `leaks` (of the tenants
    asked for)."""

    at: datetime
    up_to_entry: int
    seconds: float
    leaks: int


@dataclass(frozen=True, kw_only=True)
class RunSummary:
    """One run of one pipeline (`LineageStore.runs`)."""

    pipeline: str
    run_id: str
    first: datetime
    last: datetime
    chains: int
    batches: int
    hops: int
    delivered: int
    quarantined: int
    blocked: int


class LineageStore(AccountStore, Protocol):
    """Where lineage is kept: hops in batches, chained by hash; and, for the web side, its
    users, API keys and access log (`lineage.accounts`). Implementations are thread-safe.

    Reads and writes that fail because the database is unreachable or refuses them raise
    `ServiceUnavailableError`; a stored row that is no valid hop raises `CorruptLineageError`
    (`verify` reports it as a broken link instead).
    """

    @property
    def url(self) -> str:
        """The store's URL, without any password."""
        ...

    def append(self, batch: HopBatch) -> Entry:
        """Write `batch` as the next entry of its chain (`pipeline/topic/partition`): header,
        rows and head in one transaction, or nothing. The head is locked meanwhile, so
        concurrent writers never fork a chain."""
        ...

    def confirm(
        self, confirmations: Sequence[tuple[Entry, int, Sequence[Failure]]], *, at: datetime
    ) -> list[Entry]:
        """Record what destinations acknowledged: per (hops entry, records answered,
        refusals), a delivery entry in the same chain. One transaction."""
        ...

    def add_checkpoint(self, checkpoint: Checkpoint) -> None: ...

    def add_next_checkpoint(
        self, make: Callable[[list[Checkpoint], list[ChainHead]], Checkpoint]
    ) -> Checkpoint:
        """Adds `make(checkpoints, heads)`, both read in the same transaction, under a lock
        every signer takes: concurrent signers chain one after the other."""
        ...

    def hops(self, record_ids: Collection[str]) -> list[StoredHop]:
        """Every hop of `record_ids`, in time order, with batch and delivery status."""
        ...

    def trace(self, record_id: str) -> list[StoredEvent]:
        """Every per-stage event of `record_id`'s hops, in order; [] if none."""
        ...

    def trace_many(
        self,
        record_ids: Collection[str],
        *,
        stage: Stage | None = None,
        decisions: Collection[Decision] | None = None,
    ) -> list[StoredEvent]: ...

    def scan(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        outcome: Outcome | None = None,
    ) -> Iterator[StoredHop]:
        """Stream hops of batches written with `since <= at < until`, in time order."""
        ...

    def suspect_deliveries(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        destinations: Collection[str] | None = None,
    ) -> Iterator[StoredHop]:
        """Delivered hops that may be leaks, in `scan`'s order (`queries.leaks` decides)."""
        ...

    def blocked_attempts(
        self, *, since: datetime | None = None, until: datetime | None = None
    ) -> Iterator[StoredHop]:
        """Blocked hops that may be blocked leak attempts, in `scan`'s order."""
        ...

    def events(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        stage: Stage | None = None,
        decision: Decision | None = None,
    ) -> Iterator[StoredEvent]:
        """The per-stage events of `scan`'s hops, with the given stage and decision."""
        ...

    def content_classes(self, record_ids: Collection[str]) -> dict[str, str]:
        """The highest content class recorded for each known id of `record_ids`."""
        ...

    def run_counts(
        self,
        pipeline: str,
        run_id: str,
        *,
        since: datetime | None = None,
        past: Mapping[tuple[str, int], int] | None = None,
    ) -> list[RunCount]:
        """The hops `pipeline` recorded in run `run_id` (batches written at or after `since`;
        hops at or past the `past` offsets per (topic, partition)), counted per decision and
        per confirmed delivery."""
        ...

    def chains(self) -> Iterator[str]: ...

    def head(self, chain_id: str) -> ChainHead | None: ...

    def heads(self) -> list[ChainHead]: ...

    def checkpoints(self) -> list[Checkpoint]: ...

    def verify(
        self,
        chain_id: str | None = None,
        *,
        public_key: Any = None,
        held: Checkpoint | None = None,
    ) -> Verification:
        """Walk one chain (or every chain) from one snapshot; with an Ed25519 `public_key`,
        also the checkpoints it signed and their links; with `held` (a checkpoint kept outside
        the store), that the store still extends it."""
        ...

    def verify_batches(
        self,
        chain_id: str,
        seqs: Collection[int],
        *,
        rows: Mapping[int, Collection[int]] | None = None,
        proven: dict[int, datetime] | None = None,
    ) -> dict[int, BrokenLink | None]:
        """Check only the given entries of a chain (rows, own hash, link to predecessor);
        with `rows`, a batch read whole before by this object is checked by those rows'
        inclusion proofs (`lineage.proofs`), and noted in `proven`."""
        ...

    # the console's aggregates and pages; `tenants`: only those tenants' hops (None: all)
    def hop_counts(self, *, tenants: Collection[str] | None = None) -> list[HopCount]: ...

    def rule_counts(self, *, tenants: Collection[str] | None = None) -> dict[str, int]: ...

    def has_summary(self) -> bool: ...

    def fill_summary(self) -> int | None: ...

    def record_leak_check(
        self, *, at: datetime, up_to_entry: int, seconds: float, leaks: Mapping[str | None, int]
    ) -> None: ...

    def leak_check(self, *, tenants: Collection[str] | None = None) -> LeakCheck | None: ...

    def runs(self, *, tenants: Collection[str] | None = None) -> list[RunSummary]: ...

    def quarantined(
        self,
        *,
        tenants: Collection[str] | None = None,
        tenant: str | None = None,
        rule: str | None = None,
        stage: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[StoredHop]: ...

    def mark(self) -> tuple[int, int]: ...

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


def order_key(stored: StoredEvent) -> tuple[datetime, str, int, int, int]:
    """The order of a record's events: time, then chain position, then stage."""
    return (
        stored.event.at,
        stored.chain_id,
        stored.seq,
        stored.index,
        STAGE_ORDER[stored.event.stage],
    )


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line, for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
