"""Framing detection per message: Confluent, single-object, raw; failures are reasons."""

from __future__ import annotations

from typing import Any

import pytest

from lineage_guard.contract.schemas import load_schema
from lineage_guard.generate import CONTACT, MEDIA_ASSET, generate
from lineage_guard.io.decode import (
    Decoded,
    DecodeFailure,
    Decoder,
    encode_confluent,
    encode_raw,
    encode_single_object,
    rabin_fingerprint,
)

RECORD = next(generate(1, seed=3, entities=(CONTACT,))).record


def test_rabin_fingerprint_matches_the_avro_spec_vector() -> None:
    # The Avro spec's CRC-64-AVRO of the schema "int" is 0x8f5c393f1ad57572,
    # written little-endian in single-object encoding.
    assert rabin_fingerprint("int") == bytes.fromhex("7275d51a3f395c8f")


def test_single_object_encoding_resolves_against_schemas() -> None:
    outcome = Decoder().decode(encode_single_object(RECORD, CONTACT))
    assert isinstance(outcome, Decoded)
    assert (outcome.schema, outcome.framing) == (CONTACT, "single-object")
    assert outcome.record == RECORD


def test_confluent_framing_resolves_the_id_through_the_registry() -> None:
    asked: list[int] = []

    def lookup(schema_id: int) -> dict[str, Any]:
        asked.append(schema_id)
        return load_schema(CONTACT)

    decoder = Decoder(registry_lookup=lookup)
    for _ in range(3):
        outcome = decoder.decode(encode_confluent(RECORD, CONTACT, schema_id=4242))
        assert isinstance(outcome, Decoded) and outcome.framing == "confluent"
        assert outcome.record == RECORD
    assert asked == [4242]  # resolved once, then cached


def test_registry_failure_is_a_reason_and_is_retried_later() -> None:
    calls = []

    def flaky(schema_id: int) -> dict[str, Any]:
        calls.append(schema_id)
        if len(calls) == 1:
            raise ConnectionError("registry down")
        return load_schema(CONTACT)

    decoder = Decoder(registry_lookup=flaky)
    first = decoder.decode(encode_confluent(RECORD, CONTACT, schema_id=7))
    assert isinstance(first, DecodeFailure) and "registry down" in first.reason
    assert isinstance(decoder.decode(encode_confluent(RECORD, CONTACT, schema_id=7)), Decoded)


@pytest.mark.parametrize(
    ("value", "decoder", "reason"),
    [
        (None, Decoder(), "no value"),
        (b"", Decoder(), "no value"),
        (b"\x00\x00\x00\x00\x01body", Decoder(), "no `--schema-registry`"),
        (b"\xc3\x01" + b"\x09" * 8 + b"body", Decoder(), "unknown schema fingerprint"),
        (b"plain bytes", Decoder(), "no `--schema` was given"),
        (encode_raw(RECORD, CONTACT), Decoder(raw_schema="media_asset"), "media_asset"),
        (encode_single_object(RECORD, CONTACT)[:-5], Decoder(), "does not decode"),
        (encode_single_object(RECORD, CONTACT) + b"xx", Decoder(), "2 bytes left over"),
    ],
)
def test_undecodable_messages_get_a_reason(
    value: bytes | None, decoder: Decoder, reason: str
) -> None:
    outcome = decoder.decode(value)
    assert isinstance(outcome, DecodeFailure)
    assert reason in outcome.reason or reason.replace("media_asset", MEDIA_ASSET) in outcome.reason


def test_raw_avro_with_a_named_schema() -> None:
    outcome = Decoder(raw_schema="contact").decode(encode_raw(RECORD, CONTACT))
    assert isinstance(outcome, Decoded) and outcome.framing == "raw" and outcome.record == RECORD
