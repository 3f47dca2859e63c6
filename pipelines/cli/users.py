"""`lineage-guard users …` and `lineage-guard keys …`: who may use the console and the gateway.

    users add NAME --role ROLE [--tenant T]... [--password-stdin]
    users list | users remove NAME
    keys add NAME --scope S... [--tenant T]...     prints the key once
    keys list | keys revoke KEY_ID

Users and keys live in the lineage store (`--lineage-store`); no `--tenant` means every
tenant. Passwords come from a prompt (typed twice) or the first line of stdin, never from the
command line.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from lineage_guard.lineage.errors import UnusableInputError
from lineage_guard.lineage.events import format_time
from lineage_guard.lineage.store import DEFAULT_STORE_URL, STORE_URL_ENV, open_store
from lineage_guard.web.access import SCOPES
from lineage_guard.web.auth import Role, new_api_key, new_user, utcnow

F = TypeVar("F", bound=Callable[..., Any])


def store_option(command: F) -> F:
    return click.option(
        "--lineage-store",
        "store_url",
        envvar=STORE_URL_ENV,
        default=DEFAULT_STORE_URL,
        show_default=True,
        metavar="URL",
        help=f"`sqlite:///path/to.db` or `postgresql://user@host:port/db`. Env: {STORE_URL_ENV}.",
    )(command)


def _tenant_option(command: F) -> F:
    return click.option(
        "--tenant",
        "tenants",
        multiple=True,
        metavar="TENANT",
        help="Bind to this tenant (repeat for several); none: every tenant.",
    )(command)


def _format_option(command: F) -> F:
    return click.option(
        "--format",
        "output_format",
        type=click.Choice(["table", "json"]),
        default="table",
        show_default=True,
    )(command)


def _tenants_text(tenants: frozenset[str] | None) -> str:
    return "*" if tenants is None else ",".join(sorted(tenants))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def users() -> None:
    """Local users of the console (argon2 password hashes in the lineage store)."""


@users.command("add")
@click.argument("name")
@click.option(
    "--role", required=True, type=click.Choice([str(r) for r in Role]), help="What they may do."
)
@_tenant_option
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin's first line.")
@store_option
def users_add(
    name: str, role: str, tenants: tuple[str, ...], password_stdin: bool, store_url: str
) -> None:
    """Add a user NAME with a role (viewer, auditor, operator, admin)."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)
    user = new_user(name, password, Role(role), tenants, now=utcnow())
    with open_store(store_url) as store:
        store.add_user(user)
    click.echo(f"Added user `{name}` ({role}, tenants {_tenants_text(user.tenants)}).", err=True)


@users.command("list")
@_format_option
@store_option
def users_list(output_format: str, store_url: str) -> None:
    """The users, their roles and tenants."""
    with open_store(store_url, create=False) as store:
        found = store.users()
    rows = [
        {
            "name": u.name,
            "role": u.role,
            "tenants": None if u.tenants is None else sorted(u.tenants),
            "created_at": format_time(u.created_at),
        }
        for u in found
    ]
    if output_format == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    for row, user in zip(rows, found, strict=True):
        click.echo(
            f"{row['name']}\t{row['role']}\t{_tenants_text(user.tenants)}\t{row['created_at']}"
        )


@users.command("remove")
@click.argument("name")
@store_option
def users_remove(name: str, store_url: str) -> None:
    """Remove user NAME (their sessions end at their next request)."""
    with open_store(store_url, create=False) as store:
        if not store.remove_user(name):
            raise UnusableInputError(f"No user `{name}`: see `lineage-guard users list`.")
    click.echo(f"Removed user `{name}`.", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def keys() -> None:
    """API keys for the gateway and scripts (only a hash of the secret is stored)."""


@keys.command("add")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    type=click.Choice(sorted(SCOPES)),
    help="What the key may do (repeat for several).",
)
@_tenant_option
@store_option
def keys_add(name: str, scopes: tuple[str, ...], tenants: tuple[str, ...], store_url: str) -> None:
    """Add an API key NAME; prints the key once on stdout (keep it: it cannot be shown again)."""
    if not name.strip():
        raise UnusableInputError("The key name is empty: give one.")
    created = new_api_key(name, scopes, tenants, now=utcnow())
    with open_store(store_url) as store:
        store.add_api_key(created.record)
    click.echo(
        f"Added key `{created.record.key_id}` for `{name}` (scopes {','.join(sorted(scopes))},"
        f" tenants {_tenants_text(created.record.tenants)}). It is shown once:",
        err=True,
    )
    click.echo(created.key)


@keys.command("list")
@_format_option
@store_option
def keys_list(output_format: str, store_url: str) -> None:
    """The keys (ids, names, scopes, tenants, revoked or not); never the secrets."""
    with open_store(store_url, create=False) as store:
        found = store.api_keys()
    rows = [
        {
            "key_id": k.key_id,
            "name": k.name,
            "scopes": sorted(k.scopes),
            "tenants": None if k.tenants is None else sorted(k.tenants),
            "created_at": format_time(k.created_at),
            "revoked_at": format_time(k.revoked_at) if k.revoked_at else None,
        }
        for k in found
    ]
    if output_format == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    for row, key in zip(rows, found, strict=True):
        state = f"revoked {row['revoked_at']}" if key.revoked_at else "active"
        click.echo(
            f"{key.key_id}\t{key.name}\t{','.join(sorted(key.scopes))}"
            f"\t{_tenants_text(key.tenants)}\t{state}"
        )


@keys.command("revoke")
@click.argument("key_id")
@store_option
def keys_revoke(key_id: str, store_url: str) -> None:
    """Revoke the key KEY_ID (refused from its next request on)."""
    with open_store(store_url, create=False) as store:
        if not store.revoke_api_key(key_id, at=utcnow()):
            raise UnusableInputError(f"No active key `{key_id}`: see `lineage-guard keys list`.")
    click.echo(f"Revoked key `{key_id}`.", err=True)
