"""Helpers for the web side's tests: a JWKS the tests serve themselves on 127.0.0.1, tokens it
signs, and a client that sends credentials as a browser or an API client does."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI
from fastapi.testclient import TestClient

from lineage_guard.lineage.accounts import AccountStore
from lineage_guard.web.auth import SESSION_COOKIE, Authenticator, Role, new_user, utcnow

ISSUER = "https://issuer.test"
AUDIENCE = "lineage-guard"


@dataclass
class Issuer:
    """An OIDC issuer: an RSA key, its JWKS served on 127.0.0.1, and tokens it signs."""

    key: rsa.RSAPrivateKey
    kid: str
    jwks_url: str

    def token(self, key: rsa.RSAPrivateKey | None = None, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "oidc-user", "iat": now, "exp": now + 300}
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, key or self.key, algorithm="RS256", headers={"kid": self.kid})


@contextmanager
def oidc_issuer() -> Iterator[Issuer]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "k1", "use": "sig", "alg": "RS256"})
    body = json.dumps({"keys": [jwk]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Issuer(key=key, kid="k1", jwks_url=f"http://127.0.0.1:{server.server_port}/jwks")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def add_user(store: AccountStore, name: str, role: Role, tenants: list[str] | None = None) -> str:
    """Adds user `name` with password `pw-<name>`; returns the password."""
    password = f"pw-{name}"
    store.add_user(new_user(name, password, role, tenants, now=utcnow()))
    return password


def client(app: FastAPI) -> TestClient:
    """An HTTPS client (the session cookie is Secure), not raising server errors."""
    return TestClient(app, base_url="https://testserver", raise_server_exceptions=False)


def session_client(app: FastAPI, name: str, password: str) -> tuple[TestClient, str]:
    """A client signed in as `name` (a session opened directly); returns it and the CSRF
    token."""
    auth: Authenticator = app.state.authenticator
    session = auth.sign_in(name, password, client="test")
    c = client(app)
    c.cookies.set(SESSION_COOKIE, session.token)
    return c, session.csrf


def leaks_counted(app: FastAPI) -> FastAPI:
    """`app` (a console) once it counted the leaks and kept the count in its store (what its
    first overview starts in the background)."""
    state = app.state.console
    state.start_leak_check(app.state.store)
    state.wait_for_leak_check(timeout=60)
    assert state.leak_check_error is None, state.leak_check_error
    return app


# -- a store the console tests read -------------------------------------------------------------

XSS_ID = "<script>alert(1)</script>"
XSS_MESSAGE = "<img src=x onerror=alert(2)> stripped"


def console_store(store: Any) -> None:
    """Two tenants' records in two batches, a signed checkpoint between them:

    batch 1 (acme, globex): a-ok, a-leak (TEST origin, delivered: a leak), a-q (quarantined at
    validate: provenance_missing), g-ok, g-blocked (blocked at enforce: tenant_mismatch);
    checkpoint 0 signs the heads; batch 2: a-child (parent a-ok) and the hostile record
    XSS_ID (acme, quarantined with XSS_MESSAGE)."""
    from datetime import timedelta

    from lineage_guard.lineage.events import Reason, Stage
    from lineage_guard.lineage.hops import Outcome
    from tests.lineage_contract import T0, batch, hop, signed

    first = [
        hop("a-ok", 0),
        hop("a-leak", 1, origin_env="TEST"),
        hop("a-q", 2, outcome=Outcome.QUARANTINED, stopped_at=Stage.VALIDATE,
            reasons=(Reason(rule="provenance_missing", message="Record `a-q`: no provenance."),)),
        hop("g-ok", 3, tenant_id="globex"),
        hop("g-blocked", 4, tenant_id="globex", outcome=Outcome.BLOCKED, stopped_at=Stage.ENFORCE,
            reasons=(Reason(rule="tenant_mismatch", message="Record `g-blocked`: tenant."),)),
    ]  # fmt: skip
    entry = store.append(batch(first))
    store.confirm([(entry, len(first), [])], at=T0)
    signed(store)
    second = [
        hop("a-child", 5, parent_record_ids=("a-ok",)),
        hop(XSS_ID, 6, outcome=Outcome.QUARANTINED, stopped_at=Stage.VALIDATE,
            reasons=(Reason(rule="provenance_missing", message=XSS_MESSAGE),)),
    ]  # fmt: skip
    later = T0 + timedelta(hours=1)
    entry = store.append(batch(second, at=later))
    store.confirm([(entry, len(second), [])], at=later)
