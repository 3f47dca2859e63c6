"""Who is asking: every request to the console or the gateway becomes one `Principal`, or 401.

Three kinds of credentials, all checked here:

- local users (`lineage-guard users add`): argon2id password hashes in the lineage store; a
  sign-in opens a session (a random token in a Secure, HttpOnly, SameSite=Strict cookie, kept
  in this process's memory) with its own CSRF token, required on every state-changing request;
- API keys (`lineage-guard keys add`): `lgk_<key id>_<secret>`; the store keeps the key id and
  the SHA-256 of the secret (the secret is 256 random bits: a slow hash adds nothing), so a
  key can be listed and revoked by its id; sent as `Authorization: Bearer`;
- OIDC bearer tokens: JWTs checked against the issuer's JWKS (signature, issuer, audience,
  expiry); role, tenants and scopes come from configurable claims.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool

from lineage_guard.lineage.accounts import AccountStore, ApiKeyRecord, UserRecord
from lineage_guard.lineage.errors import ServiceUnavailableError, UnusableInputError


class Role(StrEnum):
    VIEWER = "viewer"
    AUDITOR = "auditor"
    OPERATOR = "operator"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    name: str
    role: Role | None  # None: an API key, which has scopes only
    scopes: frozenset[str]
    tenants: frozenset[str] | None  # None = every tenant
    via: str  # "session" | "api_key" | "oidc"


SESSION_COOKIE = "lineage_guard_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# -- passwords --------------------------------------------------------------------------------

_HASHER = PasswordHasher()


@functools.cache
def dummy_hash() -> str:
    """Checked when the name is unknown, so a sign-in takes as long whether the user exists
    or not (made once, at the first sign-in, not when the module is imported)."""
    return _HASHER.hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    if not password:
        raise UnusableInputError("The password is empty: give one.")
    return _HASHER.hash(password)


def check_password(password_hash: str, password: str) -> bool:
    try:
        return _HASHER.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def new_user(
    name: str, password: str, role: Role, tenants: Iterable[str] | None, *, now: datetime
) -> UserRecord:
    if not name.strip():
        raise UnusableInputError("The user name is empty: give one.")
    tenant_set = frozenset(tenants) if tenants else None
    return UserRecord(
        name=name,
        password_hash=hash_password(password),
        role=str(role),
        tenants=tenant_set,
        created_at=now,
    )


# -- API keys ---------------------------------------------------------------------------------

KEY_PREFIX = "lgk_"


@dataclass(frozen=True, kw_only=True)
class NewApiKey:
    record: ApiKeyRecord
    key: str  # the whole key, shown once: `lgk_<key id>_<secret>`


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_api_key(
    name: str, scopes: Iterable[str], tenants: Iterable[str] | None, *, now: datetime
) -> NewApiKey:
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    tenant_set = frozenset(tenants) if tenants else None
    record = ApiKeyRecord(
        key_id=key_id,
        name=name,
        secret_hash=secret_digest(secret),
        scopes=frozenset(scopes),
        tenants=tenant_set,
        created_at=now,
        revoked_at=None,
    )
    return NewApiKey(record=record, key=f"{KEY_PREFIX}{key_id}_{secret}")


def parse_api_key(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a token shaped like an API key, else None."""
    if not token.startswith(KEY_PREFIX):
        return None
    key_id, sep, secret = token[len(KEY_PREFIX) :].partition("_")
    return (key_id, secret) if sep and key_id and secret else None


# -- OIDC -------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class OidcSettings:
    issuer: str
    audience: str
    jwks_url: str
    role_claim: str = "role"
    tenants_claim: str = "tenants"
    scopes_claim: str = "scope"  # a space-separated string (RFC 8693) or a list
    name_claim: str = "sub"
    algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA")


class OidcVerifier:
    """Checks bearer JWTs against the issuer's JWKS (fetched, then cached by key id)."""

    def __init__(self, settings: OidcSettings) -> None:
        self.settings = settings
        self._jwks = jwt.PyJWKClient(settings.jwks_url, cache_keys=True, timeout=5)

    def principal(self, token: str) -> Principal:
        s = self.settings
        try:
            key = self._jwks.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as exc:
            raise ServiceUnavailableError(
                f"Cannot fetch the OIDC issuer's keys from `{s.jwks_url}`: check the issuer."
            ) from exc
        except (jwt.PyJWKClientError, jwt.InvalidTokenError) as exc:
            raise _unauthenticated(f"The bearer token is not valid: {exc}.") from None
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=list(s.algorithms),
                audience=s.audience,
                issuer=s.issuer,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.InvalidTokenError as exc:
            raise _unauthenticated(f"The bearer token is not valid: {exc}.") from None
        role_value = claims.get(s.role_claim)
        try:
            role = Role(role_value) if role_value is not None else None
        except ValueError:
            raise _unauthenticated(f"The token's role `{role_value}` is no role.") from None
        tenants = claims.get(s.tenants_claim)
        scopes = claims.get(s.scopes_claim) or []
        if isinstance(scopes, str):
            scopes = scopes.split()
        if isinstance(tenants, str):
            tenants = [tenants]
        return Principal(
            name=str(claims.get(s.name_claim) or ""),
            role=role,
            scopes=frozenset(str(x) for x in scopes),
            tenants=frozenset(str(t) for t in tenants) if tenants is not None else None,
            via="oidc",
        )


# -- sessions and the sign-in throttle ----------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Session:
    token: str
    user: str
    csrf: str
    expires: float  # time.monotonic()


class Sessions:
    """This process's sessions (a restart signs everyone out)."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}

    def open(self, user: str) -> Session:
        session = Session(
            token=secrets.token_urlsafe(32),
            user=user,
            csrf=secrets.token_urlsafe(32),
            expires=time.monotonic() + self.ttl_s,
        )
        with self._lock:
            now = time.monotonic()
            self._sessions = {t: s for t, s in self._sessions.items() if s.expires > now}
            self._sessions[session.token] = session
        return session

    def get(self, token: str) -> Session | None:
        with self._lock:
            session = self._sessions.get(token)
        return session if session is not None and session.expires > time.monotonic() else None

    def close(self, token: str) -> None:
        with self._lock:
            self._sessions.pop(token, None)


class SignInThrottle:
    """At most `failures` failed sign-ins per key (a user name, a client address) within
    `window_s`; past that, 429 until the oldest failure ages out."""

    def __init__(self, failures: int, window_s: float) -> None:
        self.failures = failures
        self.window_s = window_s
        self._lock = threading.Lock()
        self._seen: dict[str, deque[float]] = {}

    def check(self, keys: Iterable[str]) -> None:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                times = self._seen.get(key)
                while times and times[0] <= now - self.window_s:
                    times.popleft()
                if times and len(times) >= self.failures:
                    wait = int(times[0] + self.window_s - now) + 1
                    raise HTTPException(
                        status_code=429,
                        detail=f"Too many failed sign-ins: try again in {wait} s.",
                        headers={"Retry-After": str(wait)},
                    )

    def failed(self, keys: Iterable[str]) -> None:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                self._seen.setdefault(key, deque()).append(now)


# -- the authenticator --------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AuthSettings:
    oidc: OidcSettings | None = None
    session_ttl_s: float = 8 * 3600
    secure_cookies: bool = True  # False only for tests over plain http on another host
    sign_in_failures: int = 5
    sign_in_window_s: float = 300.0


@dataclass
class Authenticator:
    """Turns credentials into principals; one per app (`app.state.authenticator`)."""

    store: AccountStore
    settings: AuthSettings = field(default_factory=AuthSettings)

    def __post_init__(self) -> None:
        self.sessions = Sessions(self.settings.session_ttl_s)
        self.throttle = SignInThrottle(
            self.settings.sign_in_failures, self.settings.sign_in_window_s
        )
        self.oidc = OidcVerifier(self.settings.oidc) if self.settings.oidc else None

    def sign_in(self, name: str, password: str, *, client: str) -> Session:
        """A new session for `name`, or 401 (429 after too many failures)."""
        keys = (f"user:{name}", f"client:{client}")
        self.throttle.check(keys)
        user = self.store.user(name)
        ok = check_password(user.password_hash if user else dummy_hash(), password)
        if user is None or not ok or _role(user.role) is None:
            self.throttle.failed(keys)
            raise _unauthenticated("Unknown user or wrong password.")
        return self.sessions.open(user.name)

    def session_principal(self, session: Session) -> Principal | None:
        """The session's user as it is now in the store (removed: None)."""
        user = self.store.user(session.user)
        role = _role(user.role) if user else None
        if user is None or role is None:
            return None
        return Principal(
            name=user.name, role=role, scopes=frozenset(), tenants=user.tenants, via="session"
        )

    def bearer_principal(self, token: str) -> Principal:
        if (parts := parse_api_key(token)) is not None:
            key_id, secret = parts
            record = self.store.api_key(key_id)
            if (
                record is None
                or record.revoked_at is not None
                or not hmac.compare_digest(record.secret_hash, secret_digest(secret))
            ):
                raise _unauthenticated("Unknown or revoked API key.")
            return Principal(
                name=record.name,
                role=None,
                scopes=record.scopes,
                tenants=record.tenants,
                via="api_key",
            )
        if self.oidc is None:
            raise _unauthenticated("Bearer tokens other than API keys are not accepted here.")
        return self.oidc.principal(token)


def _role(value: str) -> Role | None:
    try:
        return Role(value)
    except ValueError:
        return None


def _unauthenticated(detail: str) -> HTTPException:
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


async def authenticate(request: Request) -> Principal:
    """The FastAPI dependency behind `access.require`: the request's principal, or 401.

    `Authorization: Bearer` (an API key or an OIDC token) first, else the session cookie; a
    state-changing request on a session must carry the session's CSRF token (header
    `X-CSRF-Token` or form field `csrf_token`), else 403."""
    auth: Authenticator = request.app.state.authenticator
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if header:
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthenticated("Use `Authorization: Bearer <API key or token>`.")
        return await run_in_threadpool(auth.bearer_principal, token.strip())
    session = auth.sessions.get(request.cookies.get(SESSION_COOKIE, ""))
    if session is None:
        raise _unauthenticated("Sign in first.")
    if request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER)
        if sent is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")
        ):
            value = (await request.form()).get(CSRF_FIELD)
            sent = value if isinstance(value, str) else None
        if sent is None or not hmac.compare_digest(sent, session.csrf):
            raise HTTPException(status_code=403, detail="Missing or wrong CSRF token.")
    principal = await run_in_threadpool(auth.session_principal, session)
    if principal is None:
        auth.sessions.close(session.token)
        raise _unauthenticated("Sign in first.")
    request.state.session = session
    return principal


def utcnow() -> datetime:
    return datetime.now(UTC)


def client_address(request: Request) -> str:
    return request.client.host if request.client else "?"
