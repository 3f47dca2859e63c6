"""Secrets on the command line are found and redacted; secret files are read or refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lineage_guard.cli.secrets import read_kafka_config_file, read_secret_file, redacted_args
from lineage_guard.lineage.errors import ConfigError
from lineage_guard.lineage.store import open_store
from tests.lineage_contract import T0, batch, hop


def test_every_kind_of_secret_is_redacted_and_nothing_else() -> None:
    args = [
        "run",
        "--kafka-config", "sasl.password=pw1",
        "--kafka-config=ssl.key.password=pw2",
        "--kafka-config", "SASL.Password=pw3",
        "--kafka-config", "sasl.username=guard",
        "--lineage-store", "postgresql://u:pw4@db:5432/lineage",
        "--openlineage", "https://ol:pw5@marquez/api",
        "--openlineage-api-key", "pw6",
        "--openlineage-api-key=pw7",
        "--input-topic", "sasl.password=topic-name",
    ]  # fmt: skip
    assert redacted_args(args) == [
        "run",
        "--kafka-config", "sasl.password=***",
        "--kafka-config=ssl.key.password=***",
        "--kafka-config", "SASL.Password=***",
        "--kafka-config", "sasl.username=guard",
        "--lineage-store", "postgresql://u:***@db:5432/lineage",
        "--openlineage", "https://ol:***@marquez/api",
        "--openlineage-api-key", "***",
        "--openlineage-api-key=***",
        "--input-topic", "sasl.password=topic-name",
    ]  # fmt: skip
    plain = ["run", "--lineage-store", "postgresql://u@db/lineage", "--kafka-config", "acks=all"]
    assert redacted_args(plain) == plain


def test_a_kafka_config_file_is_read_like_client_properties(tmp_path: Path) -> None:
    path = tmp_path / "client.properties"
    path.write_text("# secrets\n\n! also a comment\nsasl.password = p=w\nsasl.username=guard\n")
    assert read_kafka_config_file(path) == {"sasl.password": "p=w", "sasl.username": "guard"}
    path.write_text("sasl.username=guard\njust-a-word\n")
    with pytest.raises(ConfigError) as error:
        read_kafka_config_file(path)
    assert error.value.message == (
        f"`--kafka-config-file {path}` line 2 is not `key=value`: write one librdkafka "
        "setting per line."
    )
    with pytest.raises(ConfigError) as error:
        read_kafka_config_file(tmp_path / "missing")
    assert error.value.message == (
        f"Cannot read `--kafka-config-file {tmp_path / 'missing'}`: No such file or directory."
    )


def test_a_secret_file_gives_its_first_line(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("k3y\nignored\n")
    assert read_secret_file(path, "--openlineage-api-key-file") == "k3y"
    path.write_text("\n")
    with pytest.raises(ConfigError) as error:
        read_secret_file(path, "--openlineage-api-key-file")
    assert error.value.message == (
        f"`--openlineage-api-key-file {path}` is empty: put the secret on its first line."
    )


def test_the_audit_commands_take_the_store_url_from_the_environment(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lineage.db'}"
    with open_store(url) as store:
        entry = store.append(batch([hop("r1", 0)]))
        store.confirm([(entry, 1, [])], at=T0)
    command = [sys.executable, "-c", "from lineage_guard.cli.main import main; main()"]
    result = subprocess.run(
        [*command, "lineage", "verify"],
        env={**os.environ, "LINEAGE_GUARD_STORE_URL": url},
        cwd=tmp_path,  # no store at the default path here
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok: 1 chains, 2 batches, 1 hops\n"
