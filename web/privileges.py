"""Least privilege in PostgreSQL: `lineage-guard db roles` and the warning a guard or console
prints when it runs with more rights than it needs.

- writer role (`lineage_guard_writer`, the guard runs as a member of it): SELECT and INSERT on
  the lineage tables; no UPDATE, DELETE or TRUNCATE, except UPDATE of a chain's head (`seq`,
  `hash` of `lineage_chains`), which every append moves: the heads are derived from the
  entries and signed checkpoints cover them, so a rewritten head shows up in `verify`.
  The console's summary (`lineage_hop_summary`, counts every append adds to) takes INSERT and
  UPDATE of its `hops` column: counts, not evidence (the overview says so; the hops are).
- reader role (`lineage_guard_reader`, the console): SELECT only, plus INSERT into the access
  log (every read of record-level data is appended to it) and into the leak counts it keeps
  (`lineage_leak_checks`, `lineage_leak_counts`: a summary too; the leaks page recounts).
- row-level security on `lineage_hops`, `lineage_hop_summary` and `lineage_leak_counts`: a
  session that sets `lineage_guard.tenants` (a comma-separated list, e.g. `ALTER ROLE
  acme_auditor SET lineage_guard.tenants = 'acme'`) sees only those tenants' rows; a session
  without it sees all. The tables' owner is exempt.

The roles are NOLOGIN groups: grant them to login roles (`GRANT lineage_guard_reader TO
console_login`). The guard's login role needs `BYPASSRLS` too (`ALTER ROLE guard_login
BYPASSRLS`, as a superuser): it writes every tenant's hops with COPY, which PostgreSQL refuses
on a table under row-level security; role attributes are not inherited from the group.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lineage_guard.lineage.errors import ConfigError, ServiceUnavailableError
from lineage_guard.lineage.store import first_line, redact_text, redact_url

WRITER = "lineage_guard_writer"
READER = "lineage_guard_reader"
TENANTS_SETTING = "lineage_guard.tenants"
LINEAGE_TABLES = ("lineage_chains", "lineage_entries", "lineage_hops", "lineage_checkpoints")
ACCOUNT_TABLES = ("lineage_users", "lineage_api_keys", "lineage_access_log")
SUMMARY = "lineage_hop_summary"
LEAK_TABLES = ("lineage_leak_checks", "lineage_leak_counts")
# The tables under row-level security by tenant, and what each admits besides SELECT.
TENANT_TABLES = {
    "lineage_hops": ("INSERT",),
    SUMMARY: ("INSERT", "UPDATE"),
    "lineage_leak_counts": ("INSERT",),
}
SEQUENCES = ("lineage_entries_id_seq", "lineage_checkpoints_id_seq")

_TENANT_POLICY = (
    f"current_setting('{TENANTS_SETTING}', true) IS NULL"
    f" OR current_setting('{TENANTS_SETTING}', true) = ''"
    f" OR tenant_id = ANY (string_to_array(current_setting('{TENANTS_SETTING}', true), ','))"
)


def role_statements(writer: str = WRITER, reader: str = READER) -> list[str]:
    """The statements `db roles` runs (idempotent), in the store's schema."""
    from psycopg import sql

    def ident(name: str) -> str:
        return sql.Identifier(name).as_string(None)

    w, r = ident(writer), ident(reader)
    lineage = ", ".join(LINEAGE_TABLES)
    statements = [
        f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {_literal(name)})"
        f" THEN CREATE ROLE {ident(name)} NOLOGIN; END IF; END $$"
        for name in (writer, reader)
    ]
    leaks = ", ".join(LEAK_TABLES)
    statements += [
        f"GRANT USAGE ON SCHEMA {_schema()} TO {w}, {r}",
        f"REVOKE ALL ON {lineage}, {', '.join(ACCOUNT_TABLES)}, {SUMMARY}, {leaks} FROM {w}, {r}",
        f"GRANT SELECT, INSERT ON {lineage}, {SUMMARY} TO {w}",
        f"GRANT UPDATE (seq, hash) ON lineage_chains TO {w}",
        f"GRANT UPDATE (hops) ON {SUMMARY} TO {w}",
        f"GRANT USAGE ON SEQUENCE {', '.join(SEQUENCES)} TO {w}",
        f"GRANT SELECT ON {lineage}, {SUMMARY}, lineage_users, lineage_api_keys TO {r}",
        f"GRANT SELECT, INSERT ON lineage_access_log, {leaks} TO {r}",
        f"GRANT USAGE ON SEQUENCE lineage_access_log_id_seq TO {r}",
    ]
    for table, commands in TENANT_TABLES.items():
        statements += [
            f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY",
            f"DROP POLICY IF EXISTS {table}_tenant ON {table}",
            f"CREATE POLICY {table}_tenant ON {table} FOR SELECT USING ({_TENANT_POLICY})",
        ]
        for command in commands:
            check = "WITH CHECK (true)" if command == "INSERT" else "USING (true)"
            name = f"{table}_{command.lower()}"
            statements += [
                f"DROP POLICY IF EXISTS {name} ON {table}",
                f"CREATE POLICY {name} ON {table} FOR {command} {check}",
            ]
    return statements


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _schema() -> str:
    return "current_schema()"  # replaced by the schema's name at run time


@contextmanager
def _connect(url: str) -> Iterator[Any]:
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            yield conn
    except psycopg.OperationalError as exc:
        raise ServiceUnavailableError(
            f"Cannot reach the lineage store `{redact_url(url)}`:"
            f" {redact_text(first_line(exc), url)}. Check `--lineage-store`."
        ) from None


def create_roles(url: str, *, writer: str = WRITER, reader: str = READER) -> list[str]:
    """Creates (or updates) the writer and reader roles and the tenant policy on the
    PostgreSQL store at `url`, whose tables must exist; returns the statements run."""
    import psycopg
    from psycopg import sql

    if not url.lower().startswith(("postgresql:", "postgres:")):
        raise ConfigError("`db roles` works on a PostgreSQL lineage store only.")
    with _connect(url) as conn:
        schema = conn.execute("SELECT current_schema()").fetchone()[0]
        statements = [
            s.replace(_schema(), sql.Identifier(schema).as_string(conn))
            for s in role_statements(writer, reader)
        ]
        try:
            with conn.transaction():
                for statement in statements:
                    conn.execute(statement)
        except psycopg.Error as exc:
            raise ConfigError(
                f"Cannot create the roles in `{redact_url(url)}`: {first_line(exc)}. Run"
                " `db roles` as the tables' owner or a role that may create roles."
            ) from None
    return statements


def privilege_warnings(url: str) -> list[str]:
    """What is wrong with running as this URL's user: a superuser, or the tables' owner
    (both pass every row-level policy and may rewrite lineage). [] for SQLite."""
    if not url.lower().startswith(("postgresql:", "postgres:")):
        return []
    with _connect(url) as conn:
        row = conn.execute(
            "SELECT r.rolsuper, pg_catalog.pg_get_userbyid(c.relowner) = current_user"
            " FROM pg_roles r LEFT JOIN pg_class c ON c.oid = to_regclass('lineage_hops')"
            " WHERE r.rolname = current_user"
        ).fetchone()
    superuser, owner = bool(row and row[0]), bool(row and row[1])
    found = []
    if superuser:
        found.append(
            "runs as a PostgreSQL superuser: it could change or delete lineage. Run it as a"
            f" member of `{WRITER}` (the guard) or `{READER}` (the console): see `db roles`."
        )
    elif owner:
        found.append(
            "runs as the owner of the lineage tables: it could change or delete lineage. Run"
            f" it as a member of `{WRITER}` (the guard) or `{READER}` (the console)."
        )
    return found


def warn_if_privileged(url: str, who: str) -> None:
    """Prints `privilege_warnings` for the store at `url` on stderr, as `who` (e.g. `the
    guard`): the CLI's entry points call it. A store it cannot reach is left to them."""
    import sys

    try:
        warnings = privilege_warnings(url)
    except ServiceUnavailableError:
        return
    for warning in warnings:
        print(f"lineage-guard: warning: {who} {warning}", file=sys.stderr)
