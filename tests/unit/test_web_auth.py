"""The web side's shared stack (`lineage_guard.web`): credentials (local users, API keys, OIDC
bearer tokens against a JWKS served here), the one permission table, tenant scoping, the app
factory's errors, headers and metrics, and `users` / `keys` on the command line."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import pytest
from click.testing import CliRunner
from fastapi import APIRouter, FastAPI

from lineage_guard.cli.main import cli
from lineage_guard.lineage.errors import (
    ExitCode,
    LineageGuardError,
    ServiceUnavailableError,
    UnusableInputError,
)
from lineage_guard.lineage.store import LineageStore, open_store
from lineage_guard.web.access import (
    ROLE_PERMISSIONS,
    SIGNED_IN,
    Permission,
    allows,
    check_tenants,
    require,
    route_permissions,
    sees_tenant,
)
from lineage_guard.web.app import create_app
from lineage_guard.web.auth import (
    CSRF_HEADER,
    AuthSettings,
    OidcSettings,
    Principal,
    Role,
    check_password,
    hash_password,
    new_api_key,
    parse_api_key,
    utcnow,
)
from tests.web_helpers import (
    AUDIENCE,
    ISSUER,
    Issuer,
    add_user,
    client,
    oidc_issuer,
    session_client,
)

router = APIRouter()


@router.get("/t/aggregates")
def aggregates(p: Annotated[Principal, require(Permission.AGGREGATES_READ)]) -> dict[str, str]:
    return {"name": p.name, "via": p.via}


@router.get("/t/records")
def records(p: Annotated[Principal, require(Permission.RECORDS_READ)]) -> dict[str, str]:
    return {"name": p.name}


@router.post("/t/verify")
def verify(p: Annotated[Principal, require(Permission.VERIFY_RUN)]) -> dict[str, str]:
    return {"name": p.name}


@router.get("/t/check")
def check(p: Annotated[Principal, require(Permission.RECORDS_CHECK)]) -> dict[str, str]:
    return {"name": p.name}


@router.get("/t/unavailable")
def unavailable(_: Annotated[Principal, require(Permission.AGGREGATES_READ)]) -> None:
    raise ServiceUnavailableError("Cannot read the lineage store `x`: gone. Check it.")


@router.get("/t/bug")
def bug(_: Annotated[Principal, require(Permission.AGGREGATES_READ)]) -> None:
    raise RuntimeError("secret internals\nline two")


@router.get("/t/bad")
def bad(_: Annotated[Principal, require(Permission.AGGREGATES_READ)]) -> None:
    raise UnusableInputError("Bad `since`: not a time.")


@router.get("/t/number")
def number(n: int, _: Annotated[Principal, require(Permission.AGGREGATES_READ)]) -> int:
    return n


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LineageStore]:
    with open_store(f"sqlite:///{tmp_path / 'lineage.db'}") as s:
        yield s


def make_app(store: LineageStore, **settings: object) -> FastAPI:
    return create_app(
        title="test",
        store=store,
        auth=AuthSettings(**settings),
        routers=[router],  # type: ignore[arg-type]
    )


def key_header(store: LineageStore, *scopes: str, tenants: list[str] | None = None) -> dict:
    created = new_api_key("robot", scopes, tenants, now=utcnow())
    store.add_api_key(created.record)
    return {"Authorization": f"Bearer {created.key}"}


# -- passwords, keys ----------------------------------------------------------------------------


def test_password_hash_is_argon2id_and_checks() -> None:
    digest = hash_password("correct horse")
    assert digest.startswith("$argon2id$")
    assert check_password(digest, "correct horse")
    assert not check_password(digest, "wrong")
    assert not check_password("not a hash", "correct horse")


def test_api_key_stores_only_a_hash_and_parses() -> None:
    created = new_api_key("gw", ["records:check"], ["acme"], now=utcnow())
    key_id, secret = parse_api_key(created.key) or ("", "")
    assert key_id == created.record.key_id
    assert secret not in repr(created.record)
    assert created.record.tenants == frozenset({"acme"})
    assert parse_api_key("lgk_nounderscore") is None
    assert parse_api_key("eyJhbGciOi.x.y") is None


# -- the permission table -----------------------------------------------------------------------


def test_roles_are_ordered_each_has_the_one_below() -> None:
    order = [Role.VIEWER, Role.AUDITOR, Role.OPERATOR, Role.ADMIN]
    for lower, higher in itertools.pairwise(order):
        assert ROLE_PERMISSIONS[lower] < ROLE_PERMISSIONS[higher]
    assert ROLE_PERMISSIONS[Role.VIEWER] == {Permission.AGGREGATES_READ}
    assert all(Permission.RECORDS_ADMIT not in p for p in ROLE_PERMISSIONS.values())


def test_scopes_grant_exactly_their_permissions() -> None:
    key = Principal("k", None, frozenset({"records:check", "nonsense"}), None, "api_key")
    assert allows(key, Permission.RECORDS_CHECK)
    assert not allows(key, Permission.AGGREGATES_READ)
    assert not allows(key, Permission.RECORDS_ADMIT)


def test_tenant_scoping() -> None:
    bound = Principal("a", Role.AUDITOR, frozenset(), frozenset({"acme"}), "session")
    free = Principal("b", Role.AUDITOR, frozenset(), None, "session")
    assert sees_tenant(bound, "acme") and not sees_tenant(bound, "globex")
    assert not sees_tenant(bound, None)
    assert sees_tenant(free, "globex") and sees_tenant(free, None)
    check_tenants(bound, ["acme", "acme"])
    with pytest.raises(Exception, match="tenant `globex`") as caught:
        check_tenants(bound, ["acme", "globex"])
    assert getattr(caught.value, "status_code", None) == 403


def test_every_route_of_the_app_declares_a_permission(store: LineageStore) -> None:
    app = make_app(store)
    found = route_permissions(app.routes)
    assert found[("GET", "/healthz")] is None
    assert found[("GET", "/metrics")] == Permission.METRICS_READ
    assert found[("GET", "/openapi.json")] == SIGNED_IN
    assert found[("GET", "/t/records")] == Permission.RECORDS_READ
    assert found[("POST", "/t/verify")] == Permission.VERIFY_RUN
    assert len(found) == 11


# -- authentication through the app ------------------------------------------------------------


def test_anonymous_gets_401_everywhere_but_healthz(store: LineageStore) -> None:
    c = client(make_app(store))
    assert c.get("/healthz").json() == {"status": "ok"}
    for path in ("/t/aggregates", "/metrics", "/openapi.json"):
        response = c.get(path)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["detail"] == "Sign in first."


def test_api_key_by_scope_revoked_and_wrong_secret(store: LineageStore) -> None:
    c = client(make_app(store))
    headers = key_header(store, "records:check", tenants=["acme"])
    assert c.get("/t/check", headers=headers).json() == {"name": "robot"}
    assert c.get("/t/aggregates", headers=headers).status_code == 403
    key_id, secret = parse_api_key(headers["Authorization"][7:]) or ("", "")
    wrong = {"Authorization": f"Bearer lgk_{key_id}_{secret[:-1]}x"}
    assert c.get("/t/check", headers=wrong).status_code == 401
    store.revoke_api_key(key_id, at=utcnow())
    assert c.get("/t/check", headers=headers).status_code == 401
    assert c.get("/t/check", headers={"Authorization": "Basic abc"}).status_code == 401


def test_session_roles_csrf_and_removed_user(store: LineageStore) -> None:
    app = make_app(store)
    add_user(store, "vic", Role.VIEWER)
    add_user(store, "ola", Role.OPERATOR, ["acme"])
    viewer, _ = session_client(app, "vic", "pw-vic")
    assert viewer.get("/t/aggregates").json() == {"name": "vic", "via": "session"}
    assert viewer.get("/t/records").status_code == 403
    operator, csrf = session_client(app, "ola", "pw-ola")
    assert operator.post("/t/verify").status_code == 403  # no CSRF token
    assert operator.post("/t/verify", headers={CSRF_HEADER: "nope"}).status_code == 403
    assert operator.post("/t/verify", headers={CSRF_HEADER: csrf}).json() == {"name": "ola"}
    assert operator.post("/t/verify", data={"csrf_token": csrf}).status_code == 200
    store.remove_user("ola")
    assert operator.get("/t/aggregates").status_code == 401


def test_sign_in_is_rate_limited(store: LineageStore) -> None:
    app = make_app(store, sign_in_failures=3, sign_in_window_s=60)
    add_user(store, "amy", Role.ADMIN)
    auth = app.state.authenticator
    for _ in range(3):
        with pytest.raises(Exception) as wrong:
            auth.sign_in("amy", "bad", client="1.2.3.4")
        assert getattr(wrong.value, "status_code", None) == 401
    with pytest.raises(Exception) as limited:
        auth.sign_in("amy", "pw-amy", client="5.6.7.8")  # right password, same user: refused
    assert getattr(limited.value, "status_code", None) == 429
    assert int(getattr(limited.value, "headers", {})["Retry-After"]) > 0
    with pytest.raises(Exception) as unknown:
        auth.sign_in("nobody", "x", client="9.9.9.9")
    assert getattr(unknown.value, "status_code", None) == 401


# -- OIDC -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    with oidc_issuer() as found:
        yield found


def oidc_app(store: LineageStore, issuer: Issuer) -> FastAPI:
    settings = OidcSettings(
        issuer=ISSUER,
        audience=AUDIENCE,
        jwks_url=issuer.jwks_url,
        role_claim="lg_role",
        tenants_claim="lg_tenants",
    )
    return make_app(store, oidc=settings)


def test_oidc_token_gives_role_tenants_and_scopes(store: LineageStore, issuer: Issuer) -> None:
    c = client(oidc_app(store, issuer))
    token = issuer.token(lg_role="auditor", lg_tenants=["acme"], scope="records:check")
    headers = {"Authorization": f"Bearer {token}"}
    assert c.get("/t/records", headers=headers).json() == {"name": "oidc-user"}
    assert c.get("/t/check", headers=headers).status_code == 200
    assert c.post("/t/verify", headers=headers).status_code == 403  # auditor: no verify
    principal = c.app.state.authenticator.bearer_principal(token)  # type: ignore[attr-defined]
    assert principal == Principal(
        "oidc-user", Role.AUDITOR, frozenset({"records:check"}), frozenset({"acme"}), "oidc"
    )


@pytest.mark.parametrize(
    "claims",
    [
        {"aud": "someone-else"},
        {"iss": "https://evil.test"},
        {"exp": 1000},
        {"lg_role": "emperor"},
        {"exp": None},
    ],
    ids=["audience", "issuer", "expired", "unknown-role", "no-expiry"],
)
def test_oidc_refuses_bad_tokens(store: LineageStore, issuer: Issuer, claims: dict) -> None:
    c = client(oidc_app(store, issuer))
    token = issuer.token(**{"lg_role": "admin", **claims})
    response = c.get("/t/aggregates", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.json()["detail"].startswith("The ")


def test_oidc_refuses_a_token_signed_by_another_key(store: LineageStore, issuer: Issuer) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = issuer.token(key=other, lg_role="admin")
    response = client(oidc_app(store, issuer)).get(
        "/t/aggregates", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 401


def test_oidc_issuer_unreachable_is_503(store: LineageStore, issuer: Issuer) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nobody listens
    settings = OidcSettings(
        issuer=ISSUER, audience=AUDIENCE, jwks_url=f"http://127.0.0.1:{port}/jwks"
    )
    c = client(make_app(store, oidc=settings))
    response = c.get(
        "/t/aggregates", headers={"Authorization": f"Bearer {issuer.token(role='admin')}"}
    )
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"


# -- errors, headers, metrics -------------------------------------------------------------------


def test_errors_are_one_line_never_a_traceback(store: LineageStore) -> None:
    c = client(make_app(store))
    headers = key_header(store, "aggregates:read")
    down = c.get("/t/unavailable", headers=headers)
    assert (down.status_code, down.headers["retry-after"]) == (503, "5")
    assert down.json()["detail"] == "Cannot read the lineage store `x`: gone. Check it."
    crash = c.get("/t/bug", headers=headers)
    assert crash.status_code == 500
    assert crash.json()["detail"] == "Internal error: see the server's log."
    assert "secret" not in crash.text and "Traceback" not in crash.text
    assert c.get("/t/bad", headers=headers).json()["detail"] == "Bad `since`: not a time."
    malformed = c.get("/t/number?n=abc", headers=headers)
    assert malformed.status_code == 400
    assert malformed.json()["detail"] == (
        "Bad `query.n`: Input should be a valid integer, unable to parse string as an integer."
    )


def test_security_headers_on_every_answer(store: LineageStore) -> None:
    c = client(make_app(store))
    for response in (c.get("/healthz"), c.get("/t/records")):
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"


def test_metrics_and_openapi(store: LineageStore) -> None:
    c = client(make_app(store))
    headers = key_header(store, "metrics:read")
    c.get("/t/records", headers=headers)  # 403
    text = c.get("/metrics", headers=headers).text
    assert (
        'lineage_guard_http_requests_total{method="GET",route="/t/records",status="403"} 1.0'
        in text
    )
    assert "lineage_guard_http_request_seconds_bucket" in text
    doc = c.get("/openapi.json", headers=headers).json()
    assert doc["openapi"].startswith("3.1")
    number = doc["paths"]["/t/number"]["get"]["responses"]
    assert "422" not in number and "400" in number and "403" in number
    assert set(doc["paths"]["/healthz"]["get"]["responses"]) == {"200", "500", "503"}
    # each app has its own registry: a second app starts from zero
    other = client(make_app(store)).get("/metrics", headers=headers).text
    assert 'route="/t/records"' not in other


# -- the command line -------------------------------------------------------------------------


def lg(*args: str, stdin: str | None = None) -> tuple[int, str]:
    """`lineage-guard ARGS`: its exit code (as the entry point maps our errors) and stdout."""
    result = CliRunner().invoke(cli, list(args), input=stdin)
    if isinstance(result.exception, LineageGuardError):
        return result.exception.exit_code, result.stdout
    return result.exit_code, result.stdout


def test_users_and_keys_commands(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lineage.db'}"
    store = ("--lineage-store", url)
    code, _ = lg("users", "add", "ann", "--role", "auditor", "--tenant", "acme",
                 "--password-stdin", *store, stdin="s3cret\n")  # fmt: skip
    assert code == 0
    code, _ = lg("users", "add", "ann", "--role", "viewer", "--password-stdin", *store, stdin="x\n")
    assert code == ExitCode.UNUSABLE_INPUT
    code, out = lg("users", "list", "--format", "json", *store)
    [user] = json.loads(out)
    assert (user["name"], user["role"], user["tenants"]) == ("ann", "auditor", ["acme"])
    with open_store(url) as opened:
        stored = opened.user("ann")
        assert stored is not None and check_password(stored.password_hash, "s3cret")

    code, out = lg("keys", "add", "gw", "--scope", "records:check", *store)
    assert code == 0
    secret = out.strip()
    key_id, _ = parse_api_key(secret) or ("", "")
    [row] = json.loads(lg("keys", "list", "--format", "json", *store)[1])
    assert (row["key_id"], row["scopes"], row["revoked_at"]) == (key_id, ["records:check"], None)
    assert secret.encode() not in (tmp_path / "lineage.db").read_bytes()
    assert lg("keys", "revoke", key_id, *store)[0] == 0
    assert lg("keys", "revoke", key_id, *store)[0] == ExitCode.UNUSABLE_INPUT
    assert lg("keys", "add", "x", "--scope", "root", *store)[0] == ExitCode.UNUSABLE_INPUT
    assert lg("users", "remove", "ann", *store)[0] == 0
    assert lg("users", "remove", "ann", *store)[0] == ExitCode.UNUSABLE_INPUT
