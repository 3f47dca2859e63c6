"""The auditors' console (`lineage-guard serve`): the authorization matrix over every route of
its OpenAPI document (role x route x tenant), what each role sees, tenant scoping, hostile
record fields, one-line errors and error pages, the access log, sign-in and sign-out."""

from __future__ import annotations

import re
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from lineage_guard.lineage.store import LineageStore, open_store
from lineage_guard.web.access import PUBLIC, SIGNED_IN, route_permissions
from lineage_guard.web.auth import CSRF_HEADER, SESSION_COOKIE, Role
from lineage_guard.web.console import create_console
from tests.lineage_contract import KEY
from tests.web_helpers import (
    XSS_ID,
    XSS_MESSAGE,
    add_user,
    client,
    console_store,
    leaks_counted,
    session_client,
)

ROLES = [Role.VIEWER, Role.AUDITOR, Role.OPERATOR, Role.ADMIN]
ANONYMOUS = None
# The spec, written out by hand: the lowest role each route admits ("public": anyone,
# "signed-in": any signed-in principal, None: no credentials needed at all).
EXPECTED: dict[tuple[str, str], str | None] = {
    ("GET", "/api/v1/overview"): "viewer",
    ("GET", "/api/v1/runs"): "viewer",
    ("GET", "/api/v1/records/{record_id}/trace"): "auditor",
    ("GET", "/api/v1/leaks"): "auditor",
    ("GET", "/api/v1/quarantine"): "auditor",
    ("POST", "/api/v1/verify"): "operator",
    ("POST", "/api/v1/leak-check"): "operator",
    ("GET", "/api/v1/access-log"): "admin",
    ("GET", "/api/v1/users"): "admin",
    ("GET", "/"): "viewer",
    ("GET", "/runs"): "viewer",
    ("GET", "/trace"): "auditor",
    ("GET", "/leaks"): "auditor",
    ("GET", "/quarantine"): "auditor",
    ("GET", "/verify"): "operator",
    ("POST", "/verify"): "operator",
    ("POST", "/leak-check"): "operator",
    ("GET", "/access-log"): "admin",
    ("GET", "/signin"): PUBLIC,
    ("POST", "/signin"): PUBLIC,
    ("POST", "/signout"): SIGNED_IN,
    ("GET", "/healthz"): None,
    ("GET", "/metrics"): "operator",
    ("GET", "/openapi.json"): SIGNED_IN,
}
RANK = {str(role): i for i, role in enumerate(ROLES)}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LineageStore]:
    with open_store(f"sqlite:///{tmp_path / 'lineage.db'}") as s:
        console_store(s)
        yield s


@pytest.fixture
def app(store: LineageStore) -> FastAPI:
    for role in ROLES:
        add_user(store, f"{role}", role)
        add_user(store, f"{role}-acme", role, ["acme"])
    return leaks_counted(create_console(store, public_key=KEY.public_key()))


def signed_in(app: FastAPI, name: str) -> tuple[TestClient, str]:
    return session_client(app, name, f"pw-{name}")


def call(c: TestClient, method: str, path: str, csrf: str, user: str | None) -> Any:
    url = path.replace("{record_id}", "a-ok")
    if (method, path) == ("POST", "/signin"):
        data = {"name": user or "nobody", "password": f"pw-{user}", "next": "/runs"}
        return c.post(url, data=data, follow_redirects=False)
    if method == "POST":
        return c.post(url, data={"csrf_token": csrf}, follow_redirects=False)
    return c.get(url, follow_redirects=False)


def allowed_status(method: str, path: str) -> int:
    return 303 if path in ("/signin", "/signout", "/leak-check") and method == "POST" else 200


@pytest.mark.parametrize("tenant", [None, "acme"], ids=["all-tenants", "tenant-acme"])
def test_authorization_matrix_covers_every_route(app: FastAPI, tenant: str | None) -> None:
    anonymous = client(app)
    doc = signed_in(app, "viewer")[0].get("/openapi.json").json()
    routes = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert routes == set(EXPECTED)  # every documented route is in the matrix, and only those
    assert {k: v for k, v in route_permissions(app.routes).items() if k in EXPECTED}.keys() == (
        EXPECTED.keys()
    )
    table: dict[tuple[str, str], list[int]] = {}
    for method, path in sorted(EXPECTED):
        lowest = EXPECTED[(method, path)]
        row = []
        for role in [ANONYMOUS, *ROLES]:
            if role is None:
                c, csrf, user = anonymous, "", None
                expected = allowed_status(method, path) if lowest in (None, PUBLIC) else 401
                if (method, path) == ("POST", "/signin"):
                    expected = 401  # no such user
            else:
                user = f"{role}-{tenant}" if tenant else str(role)
                c, csrf = signed_in(app, user)
                permitted = lowest in (None, PUBLIC, SIGNED_IN) or RANK[str(role)] >= RANK[lowest]
                expected = allowed_status(method, path) if permitted else 403
            status = call(c, method, path, csrf, user).status_code
            assert status == expected, (method, path, role, tenant)
            row.append(status)
        table[(method, path)] = row
    assert len(table) == len(EXPECTED)


def test_blocked_attempts_come_one_page_at_a_time_with_their_total(
    app: FastAPI, store: LineageStore
) -> None:
    """A large store holds hundreds of thousands of blocked attempts: the leaks page and API
    show one page of them and their total; leaks and unacknowledged sends stay whole."""
    from lineage_guard.lineage.events import Reason, Stage
    from lineage_guard.lineage.hops import Outcome
    from tests.lineage_contract import batch, hop

    leak = (Reason(rule="leak_test_origin", message="a test record for production"),)
    attempts = [
        hop(f"b{i}", i, origin_env="TEST", outcome=Outcome.BLOCKED, stopped_at=Stage.ENFORCE,
            reasons=leak)
        for i in range(3)
    ]  # fmt: skip
    store.append(batch(attempts, pipeline="another-guard"))
    auditor, _ = signed_in(app, "auditor")
    pages = [auditor.get(f"/api/v1/leaks?page={n}&per_page=2").json() for n in (1, 2, 3)]
    assert [[x["record_id"] for x in p["blocked"]] for p in pages] == [["b0", "b1"], ["b2"], []]
    assert {(p["blocked_total"], p["per_page"]) for p in pages} == {(3, 2)}
    assert all([x["record_id"] for x in p["leaks"]] == ["a-leak"] for p in pages)
    assert auditor.get("/api/v1/leaks?per_page=100000").status_code == 400
    html = auditor.get("/leaks?page=2&per_page=2", headers={"Accept": "text/html"}).text
    assert "Blocked attempts: 3</h2>" in html and "page 2 of 2" in html
    assert ">b2<" in html and ">b0<" not in html and 'id="prev"' in html


def test_a_tenant_bound_auditor_sees_only_its_tenant(app: FastAPI) -> None:
    acme, _ = signed_in(app, "auditor-acme")
    everyone, _ = signed_in(app, "auditor")
    assert acme.get("/api/v1/records/g-ok/trace").status_code == 404
    assert everyone.get("/api/v1/records/g-ok/trace").status_code == 200
    overview = acme.get("/api/v1/overview").json()
    assert overview["by_tenant"] == {"acme": 5}
    assert overview["leaks"] == 1
    assert everyone.get("/api/v1/overview").json()["by_tenant"] == {"acme": 5, "globex": 2}
    ids = {row["record_id"] for row in acme.get("/api/v1/quarantine").json()}
    assert ids == {"a-q", XSS_ID}
    assert acme.get("/api/v1/quarantine?tenant=globex").json() == []
    leaks = acme.get("/api/v1/leaks").json()
    assert [x["record_id"] for x in leaks["leaks"]] == ["a-leak"]
    assert leaks["blocked"] == []  # g-blocked is globex's
    runs = acme.get("/api/v1/runs").json()
    assert [r["hops"] for r in runs] == [5]


def test_a_viewer_sees_aggregates_and_no_record_ids(app: FastAPI) -> None:
    viewer, _ = signed_in(app, "viewer")
    page = viewer.get("/", headers={"accept": "text/html"})
    assert page.status_code == 200
    assert 'id="leak-count"' in page.text and "1 leak" in page.text
    text = page.text + viewer.get("/api/v1/overview").text + viewer.get("/runs").text
    for record_id in ("a-ok", "a-leak", "a-q", "g-ok", "g-blocked", "a-child", "script"):
        assert record_id not in text
    assert 'href="/trace"' not in page.text  # not in its navigation either


def test_overview_counts_and_svg_charts(app: FastAPI) -> None:
    auditor, _ = signed_in(app, "auditor")
    data = auditor.get("/api/v1/overview").json()
    assert data["hops"] == 7
    assert data["by_outcome"] == {"delivered": 4, "quarantined": 2, "blocked": 1}
    assert data["by_rule"] == {"provenance_missing": 2, "tenant_mismatch": 1}
    assert data["by_stopped_at"] == {"(passed)": 4, "validate": 2, "enforce": 1}
    assert next((t["hour"], t["outcome"], t["hops"]) for t in data["timeline"]) == (
        "2026-11-27T12:00:00.000Z", "blocked", 1,
    )  # fmt: skip
    assert data["leaks"] == 1 and data["last_checkpoint"] == "2026-11-27T12:00:00.123Z"
    page = auditor.get("/").text
    assert page.count("<svg") == 7 and "<script" not in page


def test_trace_with_ancestors_and_as_of_a_checkpoint(app: FastAPI) -> None:
    auditor, _ = signed_in(app, "auditor")
    now = auditor.get("/api/v1/records/a-child/trace").json()
    assert {(e["record_id"], e["depth"]) for e in now["events"]} == {("a-child", 0), ("a-ok", 1)}
    assert now["intact"] is True
    # checkpoint 0 was signed before a-child's batch: as of it, a-child does not exist yet
    assert auditor.get("/api/v1/records/a-child/trace?checkpoint=0").status_code == 404
    then = auditor.get("/api/v1/records/a-ok/trace?checkpoint=0").json()
    assert then["as_of_checkpoint"]["key_id"] and {e["seq"] for e in then["events"]} == {1}
    assert auditor.get("/api/v1/records/a-ok/trace?checkpoint=5").status_code == 404


def test_trace_says_what_it_verified_and_sees_an_edit_after_its_proof(
    app: FastAPI, tmp_path: Path
) -> None:
    """The first trace of a batch reads it whole; the next proves the record's rows under the
    batch's Merkle root (`lineage.proofs`), and says so; an edited row is still seen."""
    auditor, _ = signed_in(app, "auditor")
    first = auditor.get("/api/v1/records/a-ok/trace").json()
    assert [(c["status"], c["checked"], c["read_whole_at"]) for c in first["chains"]] == [
        ("ok", "batch", None)
    ]
    page = auditor.get("/trace", params={"record_id": "a-ok"}).text
    assert re.search(r"batch 1: <strong>ok</strong> —\s*its entry's link and hash now; this"
                     r" record's rows by inclusion proof under its Merkle root", page)  # fmt: skip
    again = auditor.get("/api/v1/records/a-ok/trace").json()
    assert [(c["status"], c["checked"]) for c in again["chains"]] == [("ok", "rows")]
    assert again["chains"][0]["read_whole_at"] is not None
    with sqlite3.connect(tmp_path / "lineage.db") as conn:
        conn.execute("UPDATE lineage_hops SET origin_env = 'TEST' WHERE record_id = 'a-ok'")
    edited = auditor.get("/api/v1/records/a-ok/trace").json()
    assert edited["intact"] is False
    assert [(c["status"], c["checked"]) for c in edited["chains"]] == [("broken", "batch")]
    page = auditor.get("/trace", params={"record_id": "a-ok"}).text
    assert "CHAIN BROKEN" in page and "does not match its Merkle root" in page


def test_hostile_record_fields_never_render_as_markup(app: FastAPI) -> None:
    auditor, _ = signed_in(app, "auditor")
    pages = [
        auditor.get("/trace", params={"record_id": XSS_ID}),
        auditor.get("/quarantine"),
    ]
    for page in pages:
        assert page.status_code == 200
        assert XSS_ID not in page.text and XSS_MESSAGE not in page.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
        assert "&lt;img src=x onerror=alert(2)&gt;" in page.text
        assert "unsafe-inline" not in page.headers["content-security-policy"]


def test_unknown_record_malformed_query_and_store_down(app: FastAPI, store: LineageStore) -> None:
    auditor, _ = signed_in(app, "auditor")
    html = {"accept": "text/html"}
    missing = auditor.get("/trace", params={"record_id": "nope"}, headers=html)
    assert missing.status_code == 404
    assert "No record `nope` in the lineage store." in missing.text
    assert "<h1>Not found</h1>" in missing.text
    api_missing = auditor.get("/api/v1/records/nope/trace")
    assert api_missing.json()["detail"] == "No record `nope` in the lineage store."
    bad = auditor.get("/api/v1/quarantine?page=abc")
    assert (bad.status_code, bad.json()["detail"]) == (
        400,
        "Bad `query.page`: Input should be a valid integer, unable to parse string as an integer.",
    )
    bad_time = auditor.get("/quarantine?since=yesterday", headers=html)
    assert bad_time.status_code == 400
    assert "Bad `since` `yesterday`: use an ISO-8601 time" in bad_time.text
    assert "Traceback" not in bad_time.text
    store.close()  # the store goes away
    down = auditor.get("/leaks", headers=html)
    assert down.status_code == 503 and down.headers["retry-after"] == "5"
    assert "The lineage store is unavailable" in down.text and "Traceback" not in down.text
    assert auditor.get("/api/v1/runs").status_code == 503
    assert client(app).get("/healthz").status_code == 503


def test_record_reads_are_in_the_access_log_for_admins(app: FastAPI) -> None:
    auditor, _ = signed_in(app, "auditor-acme")
    auditor.get("/api/v1/records/a-child/trace")
    auditor.get("/api/v1/quarantine?rule=provenance_missing")
    auditor.get("/api/v1/overview")  # aggregates: not logged
    admin, _ = signed_in(app, "admin")
    log = admin.get("/api/v1/access-log").json()
    assert [(a["principal"], a["via"], a["query"], a["records"]) for a in log] == [
        ("auditor-acme", "session", "quarantine rule=provenance_missing&page=1&per_page=50", 2),
        ("auditor-acme", "session", "trace record_id=a-child", 2),
    ]
    page = admin.get("/access-log").text
    assert "trace record_id=a-child" in page


def test_quarantine_filters_and_pages(app: FastAPI) -> None:
    auditor, _ = signed_in(app, "auditor")
    q = "/api/v1/quarantine"
    assert [r["record_id"] for r in auditor.get(f"{q}?stage=enforce").json()] == ["g-blocked"]
    assert [r["record_id"] for r in auditor.get(f"{q}?rule=tenant_mismatch").json()] == [
        "g-blocked"
    ]
    assert auditor.get(f"{q}?rule=tenant%25").json() == []  # a LIKE wildcard is literal
    assert [r["record_id"] for r in auditor.get(f"{q}?per_page=1&page=1").json()] == [XSS_ID]
    assert len(auditor.get(f"{q}?per_page=2&page=2").json()) == 1
    since = auditor.get(f"{q}?since=2026-11-27T12:30:00Z").json()
    assert [r["record_id"] for r in since] == [XSS_ID]
    assert auditor.get(f"{q}?stage=nowhere").status_code == 400


def test_verify_on_demand_names_the_key_and_shows_in_the_overview(app: FastAPI) -> None:
    operator, csrf = signed_in(app, "operator")
    result = operator.post("/api/v1/verify", headers={CSRF_HEADER: csrf}).json()
    assert (result["ok"], result["chains"], result["batches"], result["hops"]) == (True, 1, 4, 7)
    assert result["signed_checkpoints"] == 1
    assert result["key_id"] == re.findall(r"[0-9a-f]{64}", result["key_id"])[0]
    chain = "crm-guard/crm.contacts/0"
    one = operator.post(
        "/api/v1/verify", params={"chain_id": chain, "seq": 1}, headers={CSRF_HEADER: csrf}
    ).json()
    assert (one["scope"], one["ok"]) == (f"chain {chain} batch 1", True)
    assert operator.get("/api/v1/overview").json()["last_verification"]["scope"] == one["scope"]
    page = operator.post("/verify", data={"csrf_token": csrf}).text
    assert "ok</p>" in page.replace(": every chain", "") or "ok: every chain" in page
    assert result["key_id"] in page


def test_sign_in_form_cookie_and_sign_out(app: FastAPI) -> None:
    c = client(app)
    first = c.get("/trace", headers={"accept": "text/html"}, follow_redirects=False)
    assert (first.status_code, first.headers["location"]) == (303, "/signin?next=/trace")
    wrong = c.post("/signin", data={"name": "auditor", "password": "x"})
    assert wrong.status_code == 401 and "Unknown user or wrong password." in wrong.text
    ok = c.post(
        "/signin",
        data={"name": "auditor", "password": "pw-auditor", "next": "//evil.test/"},
        follow_redirects=False,
    )
    assert (ok.status_code, ok.headers["location"]) == (303, "/")
    cookie = ok.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    for flag in ("HttpOnly", "Secure", "SameSite=strict", "Path=/"):
        assert flag in cookie
    assert c.get("/trace").status_code == 200
    page = c.get("/").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert csrf is not None
    assert c.post("/signout", follow_redirects=False).status_code == 403  # no CSRF token
    out = c.post("/signout", data={"csrf_token": csrf[1]}, follow_redirects=False)
    assert (out.status_code, out.headers["location"]) == (303, "/signin")
    c.cookies.clear()
    c.cookies.set(SESSION_COOKIE, ok.cookies[SESSION_COOKIE])  # the old cookie, replayed
    assert c.get("/api/v1/runs").status_code == 401


def test_serve_command_listens_on_loopback(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lineage.db'}"
    with open_store(url) as s:
        console_store(s)
    with sqlite3.connect(tmp_path / "lineage.db") as conn:  # as a store of an earlier version
        conn.execute("DROP TABLE lineage_hop_summary")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    main = "from lineage_guard.cli.main import main; main()"
    server = subprocess.Popen(
        [sys.executable, "-c", main, "serve", "--lineage-store", url, "--port", str(port)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=1) as answer:
                    assert answer.read() == b'{"status":"ok"}'
                break
            except urllib.error.URLError:
                time.sleep(0.1)
        else:
            pytest.fail("the console did not answer")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/api/v1/runs", timeout=5)
        assert refused.value.code == 401
        busy = subprocess.run(
            [sys.executable, "-c", main, "serve", "--lineage-store", url, "--port", str(port)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert busy.returncode == 3
        assert busy.stderr.endswith(
            f"error: Cannot listen on `127.0.0.1:{port}`: Address already in use. Choose"
            " another `--port` or `--host`.\n"
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
    said = server.stderr.read().splitlines()  # type: ignore[union-attr]
    assert said[0] == (
        f"WARNING lineage_guard.lineage.stores.sql: Counting the hops of `{url}` into its summary"
        " for the console, once (about a minute per 10 million hops; writers wait meanwhile)."
    )
    assert said[1].startswith(
        f"WARNING lineage_guard.lineage.stores.sql: Counted 7 hops of `{url}` in "
    )


def test_the_overview_shows_the_kept_leak_count_with_its_time_and_counts_again_in_background(
    store: LineageStore,
) -> None:
    """The overview never counts leaks itself: it shows the last count the store keeps, with
    its time, and starts a fresh one in the background when there is none, or when lineage
    was written since and the last one is old enough; operators may start one."""
    from datetime import timedelta

    from lineage_guard.lineage.hops import Outcome
    from tests.lineage_contract import T0, batch, hop

    add_user(store, "operator", Role.OPERATOR)
    add_user(store, "viewer-acme", Role.VIEWER, ["acme"])
    app = create_console(store)
    state = app.state.console
    operator, csrf = signed_in(app, "operator")
    first = operator.get("/api/v1/overview").json()
    assert (first["leaks"], first["leak_check"]) == (None, None)  # not counted before
    state.wait_for_leak_check(timeout=60)
    counted = operator.get("/api/v1/overview").json()
    assert counted["leaks"] == 1 and counted["leak_check_running"] is False
    assert counted["leak_check"]["written_since"] is False
    page = operator.get("/").text
    assert (
        f"Counted at {counted['leak_check']['at']}" in page and "nothing was written since" in page
    )
    assert "the evidence is the hops themselves" in page and 'id="count-leaks"' in page

    later = T0 + timedelta(hours=2)
    store.append(batch([hop("a-leak-2", 7, origin_env="STAGING")], at=later, run_id="run-2"))
    entry = store.append(batch([hop("g-leak", 8, origin_env="TEST", tenant_id="globex")], at=later,
                               run_id="run-3"))  # fmt: skip
    store.confirm([(entry, 1, [])], at=later)
    stale = operator.get("/api/v1/overview").json()  # written since, but the count is young
    assert (stale["leaks"], stale["leak_check_running"]) == (1, False)
    assert stale["leak_check"]["written_since"] is True and stale["hops"] == 9
    assert "lineage written since then is not in this count" in operator.get("/").text

    state.leak_check_age = timedelta(0)  # old enough: the next overview starts a count
    operator.get("/api/v1/overview")
    state.wait_for_leak_check(timeout=60)
    assert operator.get("/api/v1/overview").json()["leaks"] == 2  # g-leak; a-leak-2 unconfirmed
    viewer, _ = signed_in(app, "viewer-acme")
    assert viewer.get("/api/v1/overview").json()["leaks"] == 1  # its tenant's only

    state.leak_check_age = timedelta(days=1)
    store.append(batch([hop("a-leak-3", 9, outcome=Outcome.DELIVERED, origin_env="TEST")],
                       at=later, run_id="run-4"))  # fmt: skip
    started = operator.post("/api/v1/leak-check", headers={CSRF_HEADER: csrf}).json()
    assert started["running"] is True
    state.wait_for_leak_check(timeout=60)
    assert (
        operator.post("/leak-check", data={"csrf_token": csrf}, follow_redirects=False).status_code
        == 303
    )
    state.wait_for_leak_check(timeout=60)
    assert operator.get("/api/v1/overview").json()["leak_check"]["written_since"] is False


def test_serving_freezes_what_start_up_made(monkeypatch: pytest.MonkeyPatch) -> None:
    """`web.app.serve` (the console and the gateway) puts what start-up made out of the
    collector's reach before it serves: a full collection walked it all (~80-100 ms with the
    GIL held, in the middle of requests: `bench/gateway.py` at 200 requests/s)."""
    import gc

    import uvicorn

    from lineage_guard.web.app import serve

    frozen: list[int] = []
    monkeypatch.setattr(
        uvicorn.Server, "run", lambda self, sockets: frozen.append(gc.get_freeze_count())
    )
    try:
        serve(FastAPI(), port=0)
    finally:
        gc.unfreeze()
    assert len(frozen) == 1 and frozen[0] > 10_000
