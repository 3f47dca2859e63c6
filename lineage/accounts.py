"""Who may read the lineage store through the web side, and who did: local users, API keys and
the access log, as the store keeps them (tables `lineage_users`, `lineage_api_keys`,
`lineage_access_log`, beside the lineage tables in `lineage.stores`).

Only values here: hashing and checking secrets is `lineage_guard.web.auth`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True, kw_only=True)
class UserRecord:
    name: str
    password_hash: str  # argon2id, as argon2-cffi writes it
    role: str  # viewer | auditor | operator | admin (`web.access.Role`)
    tenants: frozenset[str] | None  # None: every tenant
    created_at: datetime


@dataclass(frozen=True, kw_only=True)
class ApiKeyRecord:
    key_id: str  # the public part of the key, shown by `keys list`
    name: str
    secret_hash: str  # SHA-256 of the secret part (hex); the secret itself is never stored
    scopes: frozenset[str]
    tenants: frozenset[str] | None  # None: every tenant
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, kw_only=True)
class AccessRecord:
    """One read of record-level data: who, when, which query, how many records."""

    at: datetime
    principal: str
    via: str  # session | api_key | oidc
    query: str  # e.g. "trace record_id=…"
    records: int


class AccountStore(Protocol):
    """The store's methods for users, API keys and the access log (`SqlStore` has them)."""

    def add_user(self, user: UserRecord) -> None:
        """Raises `UnusableInputError` if a user of that name exists."""
        ...

    def user(self, name: str) -> UserRecord | None: ...

    def users(self) -> list[UserRecord]: ...

    def remove_user(self, name: str) -> bool: ...

    def add_api_key(self, key: ApiKeyRecord) -> None: ...

    def api_key(self, key_id: str) -> ApiKeyRecord | None: ...

    def api_keys(self) -> list[ApiKeyRecord]: ...

    def revoke_api_key(self, key_id: str, *, at: datetime) -> bool: ...

    def log_access(self, access: AccessRecord) -> None: ...

    def access_log(self, *, limit: int = 100, offset: int = 0) -> list[AccessRecord]: ...
