"""`lineage-guard gateway`: serves `/v1/records:check` and `/v1/records:admit` (`web.gateway`).

The settings are built here, once, from the options (and their environment variables); the
server binds 127.0.0.1 unless told otherwise. The process writes lineage as the store's writer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from lineage_guard.lineage.store import DEFAULT_STORE_URL, STORE_URL_ENV


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8088, show_default=True)
@click.option(
    "--lineage-store",
    envvar=STORE_URL_ENV,
    default=DEFAULT_STORE_URL,
    show_default=True,
    help=f"sqlite:///PATH or postgresql://… URL (the writer role). Env: {STORE_URL_ENV}.",
)
@click.option(
    "--sink-policy",
    "policies",
    multiple=True,
    default=("production",),
    show_default=True,
    help="production | tenant:ID (repeatable). A client bound to a tenant adds tenant:ID.",
)
@click.option(
    "--engine",
    type=click.Choice(["compiled", "gx"]),
    default="compiled",
    show_default=True,
    help="`gx` runs Great Expectations itself; `compiled` runs the same suites, faster.",
)
@click.option("--bootstrap-servers", help="Kafka bootstrap servers, for the output topics.")
@click.option("--output-topic", help="Where admitted allowed records are produced.")
@click.option("--quarantine-topic", help="Where admitted stopped records go, with `__rule.*`.")
@click.option(
    "--kafka-config",
    "kafka_config",
    multiple=True,
    metavar="KEY=VALUE",
    help="Extra librdkafka producer setting (repeatable); secrets in --kafka-config-file.",
)
@click.option(
    "--kafka-config-file",
    envvar="LINEAGE_GUARD_KAFKA_CONFIG_FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="librdkafka settings, `key=value` per line. Env: LINEAGE_GUARD_KAFKA_CONFIG_FILE.",
)
@click.option(
    "--ack-timeout",
    type=click.FloatRange(min=0.1, max=300),
    default=10.0,
    show_default=True,
    help="Seconds the broker's acknowledgements are waited for before a 503.",
)
@click.option(
    "--max-body-bytes",
    type=click.IntRange(min=1),
    default=16 * 1024 * 1024,
    show_default=True,
    help="Larger bodies get 413.",
)
@click.option(
    "--max-records",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="Bodies with more records get 413.",
)
@click.option("--oidc-issuer", help="Accept OIDC bearer tokens of this issuer (`iss`).")
@click.option("--oidc-audience", help="… for this audience (`aud`).")
@click.option("--oidc-jwks-url", help="… signed by a key of this JWKS.")
def gateway(**options: Any) -> None:
    """Check and admit records over HTTP, with the stream's verdicts and lineage.

    POST /v1/records:check and /v1/records:admit?stage=NAME for clients with an API key
    (`lineage-guard keys add NAME --scope records:check --scope records:admit [--tenant T]`)
    or an OIDC token carrying those scopes; /openapi.json, /metrics, /healthz, /readyz.
    """
    from lineage_guard.web.app import serve
    from lineage_guard.web.auth import AuthSettings, OidcSettings
    from lineage_guard.web.gateway import build_app

    settings = settings_of(options)
    oidc = [options["oidc_issuer"], options["oidc_audience"], options["oidc_jwks_url"]]
    if any(oidc) and not all(oidc):
        from lineage_guard.lineage.errors import ConfigError

        raise ConfigError(
            "Give `--oidc-issuer`, `--oidc-audience` and `--oidc-jwks-url` together, or none."
        )
    auth = AuthSettings(
        oidc=OidcSettings(issuer=oidc[0], audience=oidc[1], jwks_url=oidc[2]) if all(oidc) else None
    )
    serve(build_app(settings, auth=auth), host=options["host"], port=options["port"])


def settings_of(o: dict[str, Any]) -> Any:
    from lineage_guard.cli.run import _kafka_config
    from lineage_guard.io.kafka import KafkaSettings
    from lineage_guard.lineage.errors import ConfigError
    from lineage_guard.web.bodies import Limits
    from lineage_guard.web.gateway import GatewaySettings

    kafka = None
    if o["output_topic"] or o["quarantine_topic"]:
        if not o["bootstrap_servers"]:
            raise ConfigError("`--output-topic` / `--quarantine-topic` need `--bootstrap-servers`.")
        kafka = KafkaSettings(
            bootstrap_servers=o["bootstrap_servers"],
            group_id="lineage-guard-gateway",
            client=_kafka_config(o["kafka_config_file"], o["kafka_config"]),
        )
    return GatewaySettings(
        lineage_store=o["lineage_store"],
        policies=tuple(o["policies"]),
        engine=o["engine"],
        limits=Limits(max_body_bytes=o["max_body_bytes"], max_records=o["max_records"]),
        kafka=kafka,
        output_topic=o["output_topic"],
        quarantine_topic=o["quarantine_topic"],
        ack_timeout_s=o["ack_timeout"],
    )
