"""`lineage-guard serve`: the auditors' console over a lineage store (`lineage_guard.web`).

    serve --lineage-store URL [--host 127.0.0.1] [--port 8080] [--public-key FILE]
          [--oidc-issuer URL --oidc-audience AUD --oidc-jwks-url URL ...]

Sign in with a user made by `lineage-guard users add`, or send an API key or an OIDC token as
`Authorization: Bearer`.
"""

from __future__ import annotations

from pathlib import Path

import click

from lineage_guard.cli.users import store_option
from lineage_guard.lineage.checkpoints import load_public_key
from lineage_guard.lineage.errors import ConfigError
from lineage_guard.lineage.store import open_store


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@store_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option(
    "--public-key",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Ed25519 public key (PEM) that verifications check signed checkpoints with.",
)
@click.option("--oidc-issuer", metavar="URL", help="Accept OIDC bearer tokens of this issuer.")
@click.option("--oidc-audience", metavar="AUD", help="The audience the tokens must name.")
@click.option("--oidc-jwks-url", metavar="URL", help="Where the issuer publishes its keys.")
@click.option("--oidc-role-claim", default="role", show_default=True)
@click.option("--oidc-tenants-claim", default="tenants", show_default=True)
@click.option("--oidc-scopes-claim", default="scope", show_default=True)
@click.option(
    "--cookie-secure/--no-cookie-secure",
    default=True,
    show_default=True,
    help="Send the session cookie over HTTPS only (browsers also accept it on 127.0.0.1).",
)
def serve(
    store_url: str,
    host: str,
    port: int,
    public_key: Path | None,
    oidc_issuer: str | None,
    oidc_audience: str | None,
    oidc_jwks_url: str | None,
    oidc_role_claim: str,
    oidc_tenants_claim: str,
    oidc_scopes_claim: str,
    cookie_secure: bool,
) -> None:
    """Serve the auditors' console (pages and /api/v1) until interrupted."""
    from lineage_guard.web.app import serve as run_server
    from lineage_guard.web.auth import AuthSettings, OidcSettings
    from lineage_guard.web.console import create_console
    from lineage_guard.web.privileges import warn_if_privileged

    oidc_options = (oidc_issuer, oidc_audience, oidc_jwks_url)
    if any(oidc_options) and not all(oidc_options):
        raise ConfigError(
            "OIDC needs `--oidc-issuer`, `--oidc-audience` and `--oidc-jwks-url` together."
        )
    oidc = (
        OidcSettings(
            issuer=oidc_issuer or "",
            audience=oidc_audience or "",
            jwks_url=oidc_jwks_url or "",
            role_claim=oidc_role_claim,
            tenants_claim=oidc_tenants_claim,
            scopes_claim=oidc_scopes_claim,
        )
        if oidc_issuer
        else None
    )
    key = load_public_key(public_key) if public_key is not None else None
    warn_if_privileged(store_url, "the console")
    with open_store(store_url, create=False) as store:
        if not store.has_summary():  # no writer of this version opened the store yet
            store.fill_summary()  # says so on stderr, and how long it took
        app = create_console(
            store, auth=AuthSettings(oidc=oidc, secure_cookies=cookie_secure), public_key=key
        )
        click.echo(f"lineage-guard console on http://{host}:{port}/ (Ctrl-C stops)", err=True)
        run_server(app, host=host, port=port)
