"""Secrets on the command line: found, and hidden from the process title.

Every secret the CLI takes has a way in that is not the command line (README, "Secrets"):
`LINEAGE_GUARD_STORE_URL` or libpq's `PGPASSWORD` / `PGPASSFILE` for the lineage store,
`--kafka-config-file` for `sasl.password` and `ssl.key.password`, `OPENLINEAGE_API_KEY` or
`--openlineage-api-key-file` for OpenLineage. When one is given on the command line anyway,
`hide_from_process_title` rewrites this process's title (what `ps` and `/proc/PID/cmdline`
show to every user of the machine) with the secret replaced by `***`.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from lineage_guard.lineage.errors import ConfigError
from lineage_guard.lineage.store import redact_url

HIDDEN = "***"
# librdkafka settings whose value is a secret (CONFIGURATION.md: passwords, private keys,
# OAuth client secrets, a JAAS line that holds a password).
KAFKA_SECRET_KEYS = frozenset(
    {
        "sasl.password",
        "ssl.key.password",
        "ssl.keystore.password",
        "ssl.key.pem",
        "sasl.oauthbearer.client.secret",
        "sasl.oauthbearer.config",
        "sasl.jaas.config",
    }
)
KAFKA_CONFIG_OPTION = "--kafka-config"
SECRET_OPTIONS = ("--openlineage-api-key",)  # options whose whole value is a secret


def is_kafka_secret(key: str) -> bool:
    return key.strip().lower() in KAFKA_SECRET_KEYS


def redacted_args(args: Sequence[str]) -> list[str]:
    """`args` with every secret replaced by `***`: a password in a URL (user info or a
    `password=` parameter), a `--kafka-config` secret, an `--openlineage-api-key` value."""
    shown: list[str] = []
    secret_next: str | None = None  # the option whose value is the next argument
    for arg in args:
        if secret_next is not None:
            shown.append(_hidden_value(secret_next, arg))
            secret_next = None
            continue
        option, equals, value = arg.partition("=")
        if option in (KAFKA_CONFIG_OPTION, *SECRET_OPTIONS):
            if equals:
                shown.append(f"{option}={_hidden_value(option, value)}")
            else:
                shown.append(arg)
                secret_next = option
            continue
        shown.append(redact_url(arg))
    return shown


def _hidden_value(option: str, value: str) -> str:
    if option != KAFKA_CONFIG_OPTION:
        return HIDDEN
    key, equals, _ = value.partition("=")
    return f"{key}={HIDDEN}" if equals and is_kafka_secret(key) else redact_url(value)


def hide_from_process_title(args: Sequence[str]) -> bool:
    """When `args` hold a secret, sets this process's title to the command with the secrets
    replaced; returns whether it did. Silent: an error stays one line on stderr (the README
    says that the shell history still holds such a secret)."""
    shown = redacted_args(args)
    if shown == list(args):
        return False
    from setproctitle import setproctitle

    setproctitle(shlex.join(["lineage-guard", *shown]))
    return True


def read_secret_file(path: Path, option: str) -> str:
    """A secret kept in a file (its first line, without the line end); a file that cannot be
    read is a configuration error."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"Cannot read `{option} {path}`: {reason}.") from None
    secret = text.splitlines()[0].strip() if text.strip() else ""
    if not secret:
        raise ConfigError(f"`{option} {path}` is empty: put the secret on its first line.")
    return secret


def read_kafka_config_file(path: Path) -> dict[str, str]:
    """librdkafka settings from a Java-style properties file: `key=value` per line, `#` and
    `!` comments, blank lines skipped (the format of Kafka's own `client.properties`)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"Cannot read `--kafka-config-file {path}`: {reason}.") from None
    config: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "!")):
            continue
        key, sep, value = stripped.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"`--kafka-config-file {path}` line {number} is not `key=value`: write one "
                "librdkafka setting per line."
            )
        config[key.strip()] = value.strip()
    return config
