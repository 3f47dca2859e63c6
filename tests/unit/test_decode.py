"""Framing detection per message: Confluent, single-object, raw; failures are reasons."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema, SchemaReference, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from lineage_guard.contract.schemas import load_schema
from lineage_guard.generate import CONTACT, MEDIA_ASSET, generate
from lineage_guard.io.decode import (
    SINGLE_OBJECT_MAGIC,
    Decoded,
    DecodeFailure,
    Decoder,
    encode_confluent,
    encode_raw,
    encode_single_object,
    fingerprint64,
    rabin_fingerprint,
    schema_resolver,
)
from lineage_guard.lineage.errors import ServiceUnavailableError

RECORD = next(generate(1, seed=3, entities=(CONTACT,))).record


@pytest.mark.parametrize(
    ("schema", "value", "wire"),
    [  # the Avro specification's CRC-64-AVRO vectors, as Java's 64-bit values
        ("int", 8247732601305521295, "8f5c393f1ad57572"),
        ("null", 7195948357588979594, "8a8f25cce724dd63"),
        ("string", -8142146995180207161, "c70345637248018f"),
    ],
)
def test_fingerprints_match_the_avro_spec_vectors(schema: str, value: int, wire: str) -> None:
    assert fingerprint64(schema) == value
    assert rabin_fingerprint(schema) == value.to_bytes(8, "little", signed=True)
    assert rabin_fingerprint(schema).hex() == wire


def test_single_object_wire_bytes_match_the_spec_example() -> None:
    # The spec (and Java's BinaryMessageEncoder) encode the int 1 as c3 01 8f5c393f1ad57572 02.
    body = io.BytesIO()
    fastavro.schemaless_writer(body, "int", 1)
    message = SINGLE_OBJECT_MAGIC + rabin_fingerprint("int") + body.getvalue()
    assert message == bytes.fromhex("c3018f5c393f1ad5757202")


def test_encode_single_object_writes_the_contact_fingerprint_little_endian() -> None:
    # Java's BinaryMessageEncoder writes these headers for schemas/crm/contact.avsc, today's
    # and at provenance version 1 (the header issue 8 reported; test_avro_java_interop).
    assert encode_single_object(RECORD, CONTACT)[:10] == bytes.fromhex("c30186f36ce3f322d08f")
    assert encode_single_object(RECORD, f"{CONTACT}@1")[:10] == bytes.fromhex(
        "c30108ec9fae658a3871"
    )


def test_raw_bodies_of_an_earlier_version_decode_with_its_schema() -> None:
    """`--schema contact@1`: raw bodies written before `digital_source_type`, read with the
    schema they were written with, by fastavro and by the columnar chain (Rust reader)."""
    from lineage_guard import arrow_batch, guard_chain

    old = {**RECORD, "provenance": dict(RECORD["provenance"])}
    old["provenance"].pop("digital_source_type", None)
    body = encode_raw(old, "contact@1")
    decoder = Decoder(raw_schema="contact@1")
    outcome = decoder.decode(body)
    assert isinstance(outcome, Decoded)
    assert (outcome.schema, outcome.record) == (f"{CONTACT}@1", old)
    gb = guard_chain.with_records(
        guard_chain.decode(arrow_batch.from_messages("t", 0, [0], [body]), decoder)
    )
    [item] = gb.items().items
    assert (item.stopped_at, item.record, item.schema) == (None, old, f"{CONTACT}@1")


def test_messages_written_before_digital_source_type_still_decode() -> None:
    """A message of provenance version 1 (its fingerprint is known from the history) is read
    with the schema it was written with: no `digital_source_type`, nothing misread."""
    old = {**RECORD, "provenance": dict(RECORD["provenance"])}
    old["provenance"].pop("digital_source_type", None)
    outcome = Decoder().decode(encode_single_object(old, f"{CONTACT}@1"))
    assert isinstance(outcome, Decoded)
    assert (outcome.schema, outcome.record) == (f"{CONTACT}@1", old)
    uri = "http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture"
    new = {**RECORD, "provenance": {**RECORD["provenance"], "digital_source_type": uri}}
    outcome = Decoder().decode(encode_single_object(new, CONTACT))
    assert isinstance(outcome, Decoded)
    assert (outcome.schema, outcome.record) == (CONTACT, new)


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


def test_a_registry_outage_is_no_verdict_and_what_it_said_of_an_id_is() -> None:
    """The look-up (`io.registry.PatientLookup`) raises our errors for an outage it waited
    out or refused settings: they end the step, never a `DecodeFailure`, and are not cached.
    What the registry said about the id makes that record undecodable."""
    calls = []

    def flaky(schema_id: int) -> dict[str, Any]:
        calls.append(schema_id)
        if len(calls) == 1:
            raise ServiceUnavailableError("registry down")
        if len(calls) == 2:
            raise ValueError("schema id 7 is not an Avro schema")
        return load_schema(CONTACT)

    decoder = Decoder(registry_lookup=flaky)
    value = encode_confluent(RECORD, CONTACT, schema_id=7)
    with pytest.raises(ServiceUnavailableError, match="registry down"):
        decoder.decode(value)
    second = decoder.decode(value)
    assert isinstance(second, DecodeFailure) and "not an Avro schema" in second.reason
    assert isinstance(decoder.decode(value), Decoded)


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


YEAR_10000 = 253_402_300_800_000  # 10000-01-01T00:00:00Z in epoch millis: a legal Avro long


@pytest.mark.parametrize("millis", [YEAR_10000, 2**62, -(2**63)])
def test_out_of_range_timestamps_decode_to_their_raw_value(millis: int) -> None:
    # fastavro writes an int for a timestamp-millis field as it is; Python's datetime cannot
    # hold these, so the decoder hands the raw long on for the contract to judge.
    record = {**RECORD, "provenance": {**RECORD["provenance"], "generated_at": millis}}
    outcome = Decoder().decode(encode_single_object(record, CONTACT))
    assert isinstance(outcome, Decoded)
    assert outcome.record["provenance"]["generated_at"] == millis
    assert outcome.record["created_at"] == RECORD["created_at"]  # in range: still a datetime
    assert isinstance(outcome.record["created_at"], datetime)
    assert outcome.record["created_at"].tzinfo == UTC


def test_confluent_framing_from_avro_serializer_with_a_referenced_provenance_subject() -> None:
    # confluent-kafka's own serializer and its in-memory registry (`mock://`): the entity
    # schema is registered the standard way, with a reference to the Provenance subject.
    client = SchemaRegistryClient.new_client({"url": "mock://lineage-guard-unit"})
    schemas = resources.files("lineage_guard.schemas")
    client.register_schema(
        "lineage_guard.Provenance", Schema(schemas.joinpath("provenance.avsc").read_text(), "AVRO")
    )
    version = client.get_latest_version("lineage_guard.Provenance").version
    reference = SchemaReference("lineage_guard.Provenance", "lineage_guard.Provenance", version)
    serializer = AvroSerializer(
        client, Schema(schemas.joinpath("crm/contact.avsc").read_text(), "AVRO", [reference])
    )
    context = SerializationContext("contacts", MessageField.VALUE)
    asked: list[int] = []
    resolve = schema_resolver(client)

    def lookup(schema_id: int) -> dict[str, Any]:
        asked.append(schema_id)
        return resolve(schema_id)

    decoder = Decoder(registry_lookup=lookup)
    records = [g.record for g in generate(3, seed=5, entities=(CONTACT,))]
    for record in records:
        value = serializer(record, context)
        assert value is not None and value[:1] == b"\x00"
        outcome = decoder.decode(value)
        assert isinstance(outcome, Decoded)
        assert (outcome.framing, outcome.schema) == ("confluent", CONTACT)
        assert outcome.record == record
    entity_id = client.get_latest_version("contacts-value").schema_id
    assert client.get_latest_version("contacts-value").schema.references == [reference]
    assert asked == [entity_id]  # resolved once (with its reference), then cached by id
