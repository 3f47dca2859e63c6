"""Secrets on the command line are found and redacted; secret files are read or refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from lineage_guard.cli.secrets import read_kafka_config_file, read_secret_file, redacted_args
from lineage_guard.lineage.errors import ConfigError


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
