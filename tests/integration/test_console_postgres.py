"""The console on a real PostgreSQL store, and least privilege there (`lineage-guard db roles`):
the writer cannot change or delete a row, the reader cannot write, a tenant-bound session sees
only its tenant, and the guard and the console warn when they run as a superuser or owner."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from uuid import uuid4

import psycopg
import pytest

from lineage_guard.lineage.accounts import AccessRecord
from lineage_guard.lineage.hops import Delivery
from lineage_guard.lineage.store import open_store
from lineage_guard.lineage.stores.sql import Admission
from lineage_guard.web.auth import Role, utcnow
from lineage_guard.web.console import create_console
from lineage_guard.web.privileges import TENANTS_SETTING, privilege_warnings
from tests.lineage_contract import T0, batch, hop
from tests.web_helpers import XSS_ID, add_user, console_store, leaks_counted, session_client

MAIN = "from lineage_guard.cli.main import main; main()"


def lg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", MAIN, *args], capture_output=True, text=True, timeout=300
    )


def test_console_reads_a_postgres_store(pg_store_url: str) -> None:
    with open_store(pg_store_url) as store:
        console_store(store)
        add_user(store, "ann", Role.AUDITOR, ["acme"])
        app = leaks_counted(create_console(store))
        ann, _ = session_client(app, "ann", "pw-ann")
        overview = ann.get("/api/v1/overview").json()
        assert (overview["hops"], overview["leaks"]) == (5, 1)
        assert overview["by_rule"] == {"provenance_missing": 2}
        rows = ann.get("/api/v1/quarantine?rule=provenance_missing&per_page=1&page=2").json()
        assert [r["record_id"] for r in rows] == ["a-q"]
        assert ann.get("/api/v1/quarantine?rule=provenance%25").json() == []
        trace = ann.get("/api/v1/records/a-child/trace").json()
        assert {e["record_id"] for e in trace["events"]} == {"a-child", "a-ok"}
        assert ann.get("/api/v1/records/g-ok/trace").status_code == 404
        page = ann.get("/quarantine").text
        assert XSS_ID not in page and "&lt;script&gt;" in page
        assert [a.query for a in store.access_log()][:1] == ["quarantine page=1&per_page=50"]


@pytest.fixture
def roles(pg_dsn: str, pg_store_url: str) -> Iterator[dict[str, str]]:
    """`db roles` run on the test's schema with roles of its own, and login roles in them:
    writer, reader, and a reader bound to tenant acme. Yields their store URLs."""
    tag = uuid4().hex[:8]
    names = {
        "writer_group": f"lg_writer_{tag}",
        "reader_group": f"lg_reader_{tag}",
        "writer": f"lg_w_{tag}",
        "reader": f"lg_r_{tag}",
        "acme": f"lg_acme_{tag}",
    }
    with open_store(pg_store_url) as store:
        console_store(store)
    done = lg("db", "roles", "--lineage-store", pg_store_url, "--writer", names["writer_group"],
              "--reader", names["reader_group"])  # fmt: skip
    assert done.returncode == 0, done.stderr
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for login, group in (("writer", "writer_group"), ("reader", "reader_group"),
                             ("acme", "reader_group")):  # fmt: skip
            # the guard's login bypasses row-level security (COPY refuses tables under it)
            bypass = " BYPASSRLS" if login == "writer" else ""
            conn.execute(f"CREATE ROLE {names[login]} LOGIN{bypass} IN ROLE {names[group]}")
        conn.execute(f"ALTER ROLE {names['acme']} SET {TENANTS_SETTING} = 'acme'")
    try:
        yield {
            login: pg_store_url.replace("postgres@", f"{names[login]}@", 1)
            for login in ("writer", "reader", "acme")
        }
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            schema = pg_store_url.rsplit("%3D", 1)[1]
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
            conn.execute(f"CREATE SCHEMA {schema}")  # the fixture that made it drops it
            for name in names.values():
                conn.execute(f"DROP OWNED BY {name}")
                conn.execute(f"DROP ROLE {name}")


def refused(url: str, statement: str) -> str:
    with (
        psycopg.connect(url, autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege) as caught,
    ):
        conn.execute(statement)
    return str(caught.value).splitlines()[0]


def test_the_writer_appends_but_cannot_change_or_delete(roles: dict[str, str]) -> None:
    with open_store(roles["writer"]) as store:  # as the guard opens it: create if missing
        entry = store.append(batch([hop("w-1", 100)], at=T0))
        store.confirm([(entry, 1, [])], at=T0)
        assert store.verify().ok
        assert [e.event.record_id for e in store.trace("w-1")][:1] == ["w-1"]
    for statement in (
        "UPDATE lineage_hops SET tenant_id = 'x'",
        "DELETE FROM lineage_hops",
        "DELETE FROM lineage_entries",
        "TRUNCATE lineage_hops",
        "UPDATE lineage_entries SET root = 'x'",
        "DELETE FROM lineage_checkpoints",
        "UPDATE lineage_chains SET chain_id = 'x'",
        "UPDATE lineage_hop_summary SET tenant_id = 'x'",  # its counts only: `hops`
        "DELETE FROM lineage_hop_summary",
        "INSERT INTO lineage_leak_checks (at, up_to_entry, seconds) VALUES (0, 0, 0)",
    ):
        assert refused(roles["writer"], statement).startswith("permission denied for table")
    assert privilege_warnings(roles["writer"]) == []


def test_the_writer_admits_gateway_requests(roles: dict[str, str]) -> None:
    """The gateway's pipelined admissions need no more than the writer's rights: hop rows
    take their entry's id from its sequence (`currval`), and the second group locks and
    checks the head the first one left (`SELECT … FOR UPDATE`)."""
    with open_store(roles["writer"]) as store:
        for name in ("gw-a", "gw-b"):
            admission = Admission(
                batch=batch([hop(name, 0)], run_id=f"run-{name}"), confirmed=True, new_run=True
            )
            store.admit([admission], at=T0)  # type: ignore[attr-defined]
        a, b = store.hops(["gw-a", "gw-b"])  # type: ignore[attr-defined]
        assert (b.seq - a.seq, a.delivery, b.delivery) == (2, *[Delivery.CONFIRMED] * 2)
        assert store.verify().ok


def test_the_reader_only_reads_and_logs_its_reads(roles: dict[str, str]) -> None:
    with open_store(roles["reader"], create=False) as store:
        assert len(store.trace("a-ok")) > 0
        store.log_access(AccessRecord(at=utcnow(), principal="p", via="session", query="q",
                                      records=1))  # fmt: skip
    for statement in (
        "INSERT INTO lineage_checkpoints (at, run_id, heads, key_id, signature)"
        " VALUES (0, 'r', '[]', 'k', 's')",
        "UPDATE lineage_hops SET tenant_id = 'x'",
        "DELETE FROM lineage_access_log",
        "INSERT INTO lineage_users (name, password_hash, role, created_at)"
        " VALUES ('evil', 'x', 'admin', 0)",
        "UPDATE lineage_hop_summary SET hops = 0",
        "INSERT INTO lineage_hop_summary VALUES (0, 'p', 'delivered', NULL, NULL, 'x', '[]', 'k',"
        " 1)",
        "DELETE FROM lineage_leak_checks",
    ):
        assert refused(roles["reader"], statement).startswith("permission denied for table")


def test_a_tenant_bound_session_sees_only_its_tenant(roles: dict[str, str]) -> None:
    def tenants(url: str) -> list[str]:
        with psycopg.connect(url) as conn:
            rows = conn.execute("SELECT DISTINCT tenant_id FROM lineage_hops ORDER BY 1")
            return [row[0] for row in rows]

    assert tenants(roles["acme"]) == ["acme"]
    assert tenants(roles["reader"]) == ["acme", "globex"]
    with open_store(roles["acme"], create=False) as store:
        assert store.trace("g-ok") == []
        assert {c.tenant_id for c in store.hop_counts()} == {"acme"}


def test_superuser_and_owner_are_warned_about(
    pg_store_url: str, roles: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    from lineage_guard.cli.run import check_store

    [warning] = privilege_warnings(pg_store_url)
    check_store(pg_store_url)  # what `lineage-guard run` does before it starts
    assert capsys.readouterr().err == f"lineage-guard: warning: the guard {warning}\n"
    check_store(roles["writer"])
    assert capsys.readouterr().err == ""
    assert warning.startswith("runs as a PostgreSQL superuser: it could change or delete lineage")
    with socket.socket() as busy:  # the console warns, then cannot listen: it ends (exit 3)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        served = lg("serve", "--lineage-store", pg_store_url, "--port", str(busy.getsockname()[1]))
    assert served.returncode == 3
    assert served.stderr.splitlines()[0] == f"lineage-guard: warning: the console {warning}"
    assert lg("users", "list", "--lineage-store", roles["reader"]).returncode == 0


def test_a_tenant_bound_session_sees_only_its_tenants_counts(roles: dict[str, str]) -> None:
    """The console's summary and its kept leak counts are under row-level security too."""
    with open_store(roles["reader"], create=False) as store:  # the console keeps a leak count
        store.record_leak_check(
            at=utcnow(), up_to_entry=2, seconds=1.0, leaks={"acme": 1, "globex": 2, None: 4}
        )
        assert store.leak_check().leaks == 7  # type: ignore[union-attr]
        assert store.rule_counts() == {"provenance_missing": 2, "tenant_mismatch": 1}
    for table in ("lineage_hop_summary", "lineage_leak_counts"):
        with psycopg.connect(roles["acme"]) as conn:
            rows = conn.execute(f"SELECT DISTINCT tenant_id FROM {table} ORDER BY 1").fetchall()
        assert rows == [("acme",)], table
    with open_store(roles["acme"], create=False) as store:
        assert store.leak_check().leaks == 1  # type: ignore[union-attr]
        assert store.rule_counts() == {"provenance_missing": 2}
        assert sum(c.count for c in store.hop_counts()) == 5


def test_a_writer_cannot_start_on_a_store_without_the_summary(
    roles: dict[str, str], pg_store_url: str
) -> None:
    """A least-privilege writer cannot create the summary: it stops with what to do, rather
    than appending hops the console would never count."""
    from lineage_guard.lineage.errors import ConfigError

    with psycopg.connect(pg_store_url) as conn:  # as a store of an earlier lineage-guard
        conn.execute("DROP TABLE lineage_hop_summary")
    with pytest.raises(ConfigError) as caught:
        open_store(roles["writer"])
    assert "has no console summary (`lineage_hop_summary`" in str(caught.value)
    assert str(caught.value).endswith(
        "e.g. `lineage-guard db roles`, which counts its hops into it."
    )
    tag = roles["writer"].split("lg_w_", 1)[1].split("@", 1)[0]  # the fixture's groups
    done = lg("db", "roles", "--lineage-store", pg_store_url, "--writer", f"lg_writer_{tag}",
              "--reader", f"lg_reader_{tag}")  # fmt: skip
    assert done.returncode == 0, done.stderr
    with open_store(roles["writer"]) as store:
        assert sum(c.count for c in store.hop_counts()) == 7
