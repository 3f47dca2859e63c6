"""What each role and each API scope may do: the one table every route of the console and the
gateway is checked against, and the tenant scoping of what a principal sees.

Roles are ordered, each has what the one below has:

    viewer    aggregates only (counts, charts): no record ids, no field values
    auditor   + record-level reads (trace, leaks, quarantine reasons) and evidence export
    operator  + starting verifications, checking records, the metrics
    admin     + users, API keys and the access log

API keys carry scopes instead of a role; a scope is a permission's name (`records:check`,
`records:admit`, ...). An OIDC token may carry both; the principal then has the union.

Every route declares its permission with `require(...)` as a dependency: a test walks the
OpenAPI document and calls each route as each role.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from enum import StrEnum
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.routing import APIRoute

from lineage_guard.web.auth import Principal, Role, authenticate


class Permission(StrEnum):
    AGGREGATES_READ = "aggregates:read"
    RECORDS_READ = "records:read"
    EVIDENCE_EXPORT = "evidence:export"
    VERIFY_RUN = "verify:run"
    METRICS_READ = "metrics:read"
    RECORDS_CHECK = "records:check"
    RECORDS_ADMIT = "records:admit"
    ACCESS_LOG_READ = "access_log:read"
    ACCOUNTS_MANAGE = "accounts:manage"


_VIEWER = frozenset({Permission.AGGREGATES_READ})
_AUDITOR = _VIEWER | {Permission.RECORDS_READ, Permission.EVIDENCE_EXPORT}
_OPERATOR = _AUDITOR | {Permission.VERIFY_RUN, Permission.METRICS_READ, Permission.RECORDS_CHECK}
_ADMIN = _OPERATOR | {Permission.ACCESS_LOG_READ, Permission.ACCOUNTS_MANAGE}

# THE table. `records:admit` (writing to Kafka through the gateway) belongs to no person's role:
# only an API key or token with that scope has it.
ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.VIEWER: _VIEWER,
    Role.AUDITOR: _AUDITOR,
    Role.OPERATOR: _OPERATOR,
    Role.ADMIN: _ADMIN,
}
SCOPES: frozenset[str] = frozenset(str(p) for p in Permission)  # `keys add --scope` accepts


def permissions(principal: Principal) -> frozenset[Permission]:
    """Everything `principal` may do: its role's permissions and its scopes."""
    granted = ROLE_PERMISSIONS[principal.role] if principal.role is not None else frozenset()
    return granted | {Permission(s) for s in principal.scopes if s in SCOPES}


def allows(principal: Principal, permission: Permission) -> bool:
    return permission in permissions(principal)


def require(permission: Permission) -> Any:
    """A FastAPI dependency: the authenticated principal if it has `permission`; else 401
    (no or bad credentials) or 403 (not allowed). Use it on every route:
    ``principal: Annotated[Principal, require(Permission.RECORDS_READ)]``."""

    async def dependency(
        request: Request, principal: Annotated[Principal, Depends(authenticate)]
    ) -> Principal:
        request.state.principal = principal  # error pages show who is signed in
        if not allows(principal, permission):
            raise HTTPException(
                status_code=403,
                detail=f"`{principal.name}` may not do `{permission}`: ask an admin for access.",
            )
        return principal

    dependency.permission = permission  # type: ignore[attr-defined]  # read by the route check
    return Depends(dependency)


def signed_in() -> Any:
    """A FastAPI dependency for the few routes any authenticated principal may use (the
    OpenAPI document, signing out): the principal, or 401."""

    async def dependency(
        request: Request, principal: Annotated[Principal, Depends(authenticate)]
    ) -> Principal:
        request.state.principal = principal
        return principal

    dependency.permission = SIGNED_IN  # type: ignore[attr-defined]
    return Depends(dependency)


def public() -> Any:
    """A FastAPI dependency marking a route anyone may use (the sign-in page and form)."""

    async def dependency() -> None:
        return None

    dependency.permission = PUBLIC  # type: ignore[attr-defined]
    return Depends(dependency)


PUBLIC = "public"  # the marker of `public()` routes
SIGNED_IN = "signed-in"  # the marker of `signed_in()` routes (no permission beyond that)


def route_permissions(routes: Iterable[Any], prefix: str = "") -> dict[tuple[str, str], str | None]:
    """(method, path) -> what `route_permission` finds, for every API route of `routes` (an
    app's, with the routers it includes): what the authorization tests walk."""
    found: dict[tuple[str, str], str | None] = {}
    for route in routes:
        if isinstance(route, APIRoute):
            needed = route_permission(d.call for d in route.dependant.dependencies if d.call)
            for method in sorted(route.methods or ()):
                found[(method, prefix + route.path)] = needed
        elif (included := getattr(route, "original_router", None)) is not None:
            # FastAPI >= 0.16x includes routers lazily: walk the router itself
            context = getattr(route, "include_context", None)
            found |= route_permissions(included.routes, prefix + getattr(context, "prefix", ""))
        elif (sub := getattr(route, "routes", None)) is not None:
            found |= route_permissions(sub, prefix + getattr(route, "path", ""))
    return found


def route_permission(dependant_calls: Iterable[Callable[..., Any]]) -> str | None:
    """The permission a route requires (or `SIGNED_IN`), from its dependencies' callables;
    None: the route checks nobody (only `/healthz` may)."""
    for call in dependant_calls:
        if (found := getattr(call, "permission", None)) is not None:
            return str(found)
    return None


# -- tenants ----------------------------------------------------------------------------------


def tenant_filter(principal: Principal) -> frozenset[str] | None:
    """The tenants whose records and aggregates `principal` sees; None: every tenant."""
    return principal.tenants


def sees_tenant(principal: Principal, tenant: str | None) -> bool:
    """Whether `principal` may see a record of `tenant` (a record without a tenant, e.g. one
    that could not be decoded, only for a principal bound to no tenant)."""
    return principal.tenants is None or (tenant is not None and tenant in principal.tenants)


def visible(principal: Principal, items: Iterable[Any], tenant_of: Callable[[Any], Any]) -> list:
    """The items whose tenant (`tenant_of(item)`) `principal` may see."""
    return [item for item in items if sees_tenant(principal, tenant_of(item))]


def check_tenants(principal: Principal, tenants: Collection[str | None]) -> None:
    """403 unless `principal` may act for every tenant in `tenants` (the gateway's records)."""
    refused = sorted({t or "" for t in tenants if not sees_tenant(principal, t)})
    if refused:
        raise HTTPException(
            status_code=403,
            detail=f"`{principal.name}` may not act for tenant `{refused[0]}`.",
        )
