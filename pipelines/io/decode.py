"""Decodes Kafka message values into records, detecting the framing per message.

Three framings occur in real deployments:

- Confluent Schema Registry: magic byte `0x00`, a 4-byte big-endian schema id, then the Avro
  body. The id is resolved through a registry client (`--schema-registry URL`).
- Avro single-object encoding: `0xC3 0x01`, the writer schema's CRC-64-AVRO fingerprint as
  8 bytes little-endian, then the body, exactly as the Avro specification and Java's
  `BinaryMessageEncoder` write it. Fingerprints are resolved against `schemas/`, today's
  versions and the history (`contract.schemas.WRITER_SCHEMAS`): a body is read with the schema
  it was written with, and a field added since is absent from its record (read as null).
- Raw schemaless Avro: the body alone, decoded with the schema named by `--schema`.

A message that cannot be decoded is not an exception: `decode` returns a `DecodeFailure` with
its reason, and the pipeline quarantines the message. A Schema Registry that cannot answer
is not the message's fault: it is waited out, then ends the run (`io.registry`). Values are
read with lenient logical types (`io.avro`), so a legal but out-of-range timestamp reaches the
contract, not an error.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from lineage_guard.contract.schemas import WRITER_SCHEMAS, Schema, load_schema, schema_key
from lineage_guard.io.avro import lenient
from lineage_guard.lineage.errors import LineageGuardError

CONFLUENT_MAGIC = b"\x00"
SINGLE_OBJECT_MAGIC = b"\xc3\x01"


@dataclass(frozen=True, kw_only=True)
class Decoded:
    record: dict[str, Any]
    schema: str  # full name of the writer schema (`NAME@N`: an earlier version, `contract.schemas`)
    framing: str  # "confluent", "single-object" or "raw"


@dataclass(frozen=True, kw_only=True)
class DecodeFailure:
    reason: str


def rabin_fingerprint(schema: Schema | str) -> bytes:
    """The schema's CRC-64-AVRO fingerprint as single-object encoding writes it: 8 bytes,
    little-endian (the spec's `"int"` → `8f 5c 39 3f 1a d5 75 72`).

    fastavro's `fingerprint` already gives these bytes in wire order, as hex.
    """
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


def fingerprint64(schema: Schema | str) -> int:
    """The CRC-64-AVRO fingerprint as the signed 64-bit value Java's
    `SchemaNormalization.parsingFingerprint64` returns (the spec's `"int"` → 8247732601305521295).
    """
    return int.from_bytes(rabin_fingerprint(schema), "little", signed=True)


@cache
def known_fingerprints() -> dict[bytes, str]:
    """Single-object fingerprint → the name of the schema in `schemas/` it belongs to (`NAME@N`
    for an earlier version)."""
    return {rabin_fingerprint(load_schema(name)): name for name in WRITER_SCHEMAS}


@cache
def _fingerprint_of(schema_name: str) -> bytes:
    return rabin_fingerprint(load_schema(schema_name))


@cache
def _lenient_schema(schema_name: str) -> Schema:
    parsed: Schema = lenient(load_schema(schema_name))
    return parsed


def encode_single_object(record: dict[str, Any], schema_name: str) -> bytes:
    schema = load_schema(schema_name)
    buffer = io.BytesIO()
    buffer.write(SINGLE_OBJECT_MAGIC + _fingerprint_of(schema_name))
    fastavro.schemaless_writer(buffer, schema, record)
    return buffer.getvalue()


def encode_confluent(record: dict[str, Any], schema_name: str, schema_id: int) -> bytes:
    buffer = io.BytesIO()
    buffer.write(CONFLUENT_MAGIC + schema_id.to_bytes(4, "big"))
    fastavro.schemaless_writer(buffer, load_schema(schema_name), record)
    return buffer.getvalue()


def encode_raw(record: dict[str, Any], schema_name: str) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, load_schema(schema_name), record)
    return buffer.getvalue()


class Decoder:
    """Decodes message values; one per worker (it caches registry schemas)."""

    def __init__(
        self,
        *,
        raw_schema: str | None = None,
        registry_lookup: Callable[[int], Schema] | None = None,
    ) -> None:
        self._raw_schema = _lenient_schema(raw_schema) if raw_schema else None
        self._raw_name = schema_key(raw_schema) if raw_schema else None
        self.raw_schema_name: str | None = self._raw_name  # raw bodies' schema (`--schema`)
        self._registry_lookup = registry_lookup
        self._by_id: dict[int, tuple[Schema, str]] = {}  # id → (lenient schema, its name)

    def decode(self, value: bytes | None) -> Decoded | DecodeFailure:
        if not value:
            return DecodeFailure(reason="the message has no value (a tombstone or empty bytes)")
        if value[:1] == CONFLUENT_MAGIC and len(value) >= 5:
            return self._confluent(value)
        if value[:2] == SINGLE_OBJECT_MAGIC and len(value) >= 10:
            name = known_fingerprints().get(value[2:10])
            if name is None:
                return DecodeFailure(
                    reason=f"single-object encoding with unknown schema fingerprint "
                    f"`{value[2:10].hex()}`: not one of the schemas in `schemas/`"
                )
            return _read(value, 10, _lenient_schema(name), name, "single-object")
        if self._raw_schema is not None:
            return _read(value, 0, self._raw_schema, str(self._raw_name), "raw")
        return DecodeFailure(
            reason="no Confluent or single-object framing, and no `--schema` was given for raw Avro"
        )

    def head(self, value: bytes | None) -> tuple[str, str] | None:
        """(record id, content class) read from the head of a message's body, without
        decoding the rest: what the parent index needs, at a fifth of a full decode's cost.
        None when the head does not read as strings (or the message does not decode): such a
        message is not indexed. A message whose head reads but whose tail is damaged is
        indexed (its children are held to its class) and quarantined by `decode`."""
        if not value or (value[:1] == CONFLUENT_MAGIC and len(value) >= 5):
            return self._head_of_full(value)  # a registry schema: read whole
        if value[:2] == SINGLE_OBJECT_MAGIC and len(value) >= 10:
            name, offset = known_fingerprints().get(value[2:10]), 10
        elif self._raw_name is not None:
            name, offset = str(self._raw_name), 0
        else:
            return None  # does not decode
        head = _head_schema(name) if name is not None else None
        if head is None:
            return self._head_of_full(value)
        return _head_values(value, offset, head)

    def _head_of_full(self, value: bytes | None) -> tuple[str, str] | None:
        outcome = self.decode(value)
        if not isinstance(outcome, Decoded):
            return None
        provenance = outcome.record.get("provenance")
        if not isinstance(provenance, dict):
            return None
        return _strings(outcome.record.get("record_id"), provenance.get("content_class"))

    def _confluent(self, value: bytes) -> Decoded | DecodeFailure:
        schema_id = int.from_bytes(value[1:5], "big")
        if self._registry_lookup is None:
            return DecodeFailure(
                reason=f"Confluent framing (schema id {schema_id}) but no `--schema-registry` "
                "was given"
            )
        if schema_id not in self._by_id:
            try:
                schema = self._registry_lookup(schema_id)
                self._by_id[schema_id] = (lenient(schema), str(schema.get("name", schema_id)))
            except LineageGuardError:  # an outage waited out too long, refused settings
                raise  # never a verdict on the record (`io.registry`)
            except Exception as exc:  # what the registry said about this id
                return DecodeFailure(reason=f"schema id {schema_id} could not be resolved: {exc}")
        schema, name = self._by_id[schema_id]
        return _read(value, 5, schema, name, "confluent")


@cache
def _head_schema(schema_name: str) -> Schema | None:
    """The entity schema cut after `record_id` and `provenance.content_class`: the leading
    fields of its body, which Avro writes first, so reading them with this schema reads
    exactly the head of the bytes. None if the schema does not have them in a record."""
    schema = load_schema(schema_name)
    wanted = {"record_id", "provenance"}
    fields = []
    for spec in schema.get("fields", []):
        if spec["name"] == "provenance":
            cut = _cut_provenance(spec["type"])
            if cut is None:
                return None
            spec = {**spec, "type": cut}
        fields.append(spec)
        wanted.discard(spec["name"])
        if not wanted:
            parsed: Schema = lenient({**schema, "fields": fields})
            return parsed
    return None


def _cut_provenance(schema: Any) -> Any:
    if schema == "null":
        return schema
    if isinstance(schema, list):
        branches = [_cut_provenance(branch) for branch in schema]
        return None if any(b is None for b in branches) else branches
    if isinstance(schema, dict) and schema.get("type") == "record":
        fields = []
        for spec in schema.get("fields", []):
            fields.append(spec)
            if spec["name"] == "content_class":
                return {**schema, "fields": fields}
    return None  # a named reference, or no content_class: read the whole message instead


def _head_values(value: bytes, offset: int, head: Schema) -> tuple[str, str] | None:
    stream = io.BytesIO(value)
    stream.seek(offset)
    try:
        record = fastavro.schemaless_reader(stream, head, None)
    except Exception:  # damaged bytes: not indexed (and quarantined by `decode`)
        return None
    if not isinstance(record, dict):
        return None
    provenance = record.get("provenance")
    if not isinstance(provenance, dict):
        return None
    return _strings(record.get("record_id"), provenance.get("content_class"))


def _strings(record_id: Any, content_class: Any) -> tuple[str, str] | None:
    if isinstance(record_id, str) and isinstance(content_class, str):
        return record_id, content_class
    return None


def _read(
    value: bytes, offset: int, schema: Schema, name: str, framing: str
) -> Decoded | DecodeFailure:
    stream = io.BytesIO(value)
    stream.seek(offset)
    try:
        record = fastavro.schemaless_reader(stream, schema, None)
    except Exception as exc:  # fastavro raises EOFError, ValueError, UnicodeDecodeError, …
        return DecodeFailure(
            reason=f"{framing} Avro body does not decode with `{name}`: {exc or type(exc).__name__}"
        )
    if stream.tell() != len(value):
        return DecodeFailure(
            reason=f"{framing} Avro body has {len(value) - stream.tell()} bytes left over after "
            f"decoding with `{name}`: wrong schema"
        )
    if not isinstance(record, dict):
        return DecodeFailure(reason=f"`{name}` does not decode to a record")
    return Decoded(record=record, schema=name, framing=framing)


def decoder_for(
    raw_schema: str | None, schema_registry: str | None, *, wait_s: float = 300.0
) -> Decoder:
    """The `Decoder` a worker needs for `--schema` and `--schema-registry` (either may be
    None); an unreachable registry is waited out for up to `wait_s` (`io.registry`)."""
    lookup = registry_lookup(schema_registry, wait_s=wait_s) if schema_registry else None
    return Decoder(raw_schema=raw_schema, registry_lookup=lookup)


def registry_lookup(url: str, *, wait_s: float = 300.0) -> Callable[[int], Schema]:
    """A schema-id resolver backed by a Confluent Schema Registry (confluent-kafka's client),
    its failures classified as `io.registry` says: an outage is waited out (up to `wait_s`),
    never a verdict; an id the registry does not hold is asked for twice.

    Schema references (an entity schema that refers to the separately registered
    `lineage_guard.Provenance` subject, as Confluent's tools register it) are resolved
    recursively with the client's own resolver, the one its `AvroDeserializer` uses; the
    client caches every schema and subject version it fetched. `mock://…` URLs give
    confluent-kafka's in-memory registry.
    """
    from lineage_guard.io.registry import PatientLookup, registry_client

    return PatientLookup(schema_resolver(registry_client(url)), url=url, wait_s=wait_s)


def schema_resolver(client: Any) -> Callable[[int], Schema]:
    """`registry_lookup` for an existing `SchemaRegistryClient`."""
    # The synchronous client's resolver (the package's `avro` module also exports the asyncio
    # one under the same name).
    from confluent_kafka.schema_registry._sync.avro import _resolve_named_schema
    from confluent_kafka.schema_registry.common.avro import parse_schema_with_repo

    def lookup(schema_id: int) -> Schema:
        registered = client.get_schema(schema_id)
        if registered.schema_type not in (None, "AVRO") or not registered.schema_str:
            raise ValueError(f"schema id {schema_id} is not an Avro schema")
        named = _resolve_named_schema(registered, client)
        parsed = parse_schema_with_repo(registered.schema_str, named_schemas=named)
        if not isinstance(parsed, dict) or parsed.get("type") != "record":
            raise ValueError(f"schema id {schema_id} is not an Avro record schema")
        return parsed

    return lookup
