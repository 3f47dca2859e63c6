"""Users, API keys and the access log in a real PostgreSQL store, and the web stack's sign-in
on it: the same behaviour as on SQLite (tests/unit/test_web_auth.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta

import psycopg
import pytest

from lineage_guard.lineage.accounts import AccessRecord
from lineage_guard.lineage.errors import UnusableInputError
from lineage_guard.lineage.store import open_store
from lineage_guard.web.app import create_app
from lineage_guard.web.auth import AuthSettings, Role, check_password, new_api_key, utcnow
from tests.cli import run_cli
from tests.web_helpers import add_user, client, session_client

MAIN = "from lineage_guard.cli.main import main; main()"


def test_accounts_round_trip_on_postgres(pg_store_url: str) -> None:
    now = utcnow().replace(microsecond=0)
    with open_store(pg_store_url) as store:
        add_user(store, "ann", Role.AUDITOR, ["acme", "globex"])
        add_user(store, "root", Role.ADMIN)
        with pytest.raises(UnusableInputError, match="`ann` exists already"):
            add_user(store, "ann", Role.VIEWER)
        ann = store.user("ann")
        assert ann is not None
        assert (ann.role, ann.tenants) == ("auditor", frozenset({"acme", "globex"}))
        assert check_password(ann.password_hash, "pw-ann")
        assert [u.name for u in store.users()] == ["ann", "root"]
        assert store.user("root").tenants is None  # type: ignore[union-attr]

        created = new_api_key("gw", ["records:check"], None, now=now)
        store.add_api_key(created.record)
        assert store.api_key(created.record.key_id) == created.record
        assert store.revoke_api_key(created.record.key_id, at=now + timedelta(seconds=1))
        assert not store.revoke_api_key(created.record.key_id, at=now)
        assert store.api_keys()[0].revoked_at == now + timedelta(seconds=1)

        for n in range(3):
            store.log_access(
                AccessRecord(at=now, principal="ann", via="session", query=f"q{n}", records=n)
            )
        assert [a.query for a in store.access_log(limit=2)] == ["q2", "q1"]
        assert store.remove_user("ann") and not store.remove_user("ann")


def test_sign_in_and_keys_through_the_app_on_postgres(pg_store_url: str) -> None:
    with open_store(pg_store_url) as store:
        app = create_app(title="t", store=store, auth=AuthSettings())
        add_user(store, "ops", Role.OPERATOR)
        ops, _ = session_client(app, "ops", "pw-ops")
        assert ops.get("/metrics").status_code == 200
        created = new_api_key("robot", ["aggregates:read"], ["acme"], now=utcnow())
        store.add_api_key(created.record)
        headers = {"Authorization": f"Bearer {created.key}"}
        assert client(app).get("/openapi.json", headers=headers).status_code == 200
        assert client(app).get("/metrics", headers=headers).status_code == 403


def test_cli_users_and_keys_on_postgres(pg_store_url: str) -> None:
    store = ("--lineage-store", pg_store_url)
    added = subprocess.run(
        [sys.executable, "-c", MAIN, "users", "add", "amy", "--role", "admin",
         "--password-stdin", *store],
        input="pw\n", capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert (added.returncode, added.stderr) == (0, "Added user `amy` (admin, tenants *).\n")
    listed = run_cli("users", "list", "--format", "json", *store)
    assert [u["name"] for u in json.loads(listed.stdout)] == ["amy"]
    key = run_cli("keys", "add", "gw", "--scope", "records:admit", "--tenant", "acme", *store)
    assert key.returncode == 0
    with psycopg.connect(pg_store_url) as conn:
        stored = conn.execute("SELECT secret_hash, scopes FROM lineage_api_keys").fetchall()
    assert len(stored) == 1 and key.stdout.strip().split("_")[-1] not in stored[0][0]
    assert stored[0][1] == '["records:admit"]'
