"""`lineage-guard db roles`: least-privilege roles on a PostgreSQL lineage store
(`lineage_guard.web.privileges`)."""

from __future__ import annotations

import click

from lineage_guard.cli.users import store_option


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def db() -> None:
    """The lineage database's roles."""


@db.command("roles")
@store_option
@click.option("--writer", default="lineage_guard_writer", show_default=True, help="Writer role.")
@click.option("--reader", default="lineage_guard_reader", show_default=True, help="Reader role.")
def roles(store_url: str, writer: str, reader: str) -> None:
    """Create the writer role (the guard: INSERT and SELECT), the reader role (the console:
    SELECT) and row-level security by tenant. Run it as the tables' owner."""
    from lineage_guard.lineage.store import open_store
    from lineage_guard.web.privileges import create_roles

    with open_store(store_url) as store:
        store.users()  # the account tables exist too
    create_roles(store_url, writer=writer, reader=reader)
    click.echo(
        f"Roles `{writer}` (INSERT, SELECT) and `{reader}` (SELECT) ready, with row-level"
        " security by tenant on `lineage_hops` and the console's counts. Grant them to login roles:"
        f" `GRANT {reader} TO <console login>;` `GRANT {writer} TO <guard login>;` and"
        " `ALTER ROLE <guard login> BYPASSRLS;` (the guard writes with COPY, which row-level"
        " security refuses).",
        err=True,
    )
