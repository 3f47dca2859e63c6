"""The gateway's request bodies (`web.bodies`): each media type into one batch, in order."""

from __future__ import annotations

import io
import itertools
import random

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lineage_guard import guard_chain
from lineage_guard.contract.records import record_id_of
from lineage_guard.contract.schemas import load_schema
from lineage_guard.generate import CONTACT, generate
from lineage_guard.io import arrow_decode
from lineage_guard.io.decode import Decoder, encode_single_object, known_fingerprints
from lineage_guard.io.file_io import json_line
from lineage_guard.web import bodies

RECORDS = [g for g in generate(5, seed=11, entities=(CONTACT,))]
IDS = [g.record["record_id"] for g in RECORDS]
LINES = [json_line(g.record) for g in RECORDS]
MESSAGES = b"".join(encode_single_object(g.record, g.schema) for g in RECORDS)


def _container() -> bytes:
    buffer = io.BytesIO()
    fastavro.writer(buffer, load_schema(CONTACT), [g.record for g in RECORDS])
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", ("[" + ",".join(LINES) + "]").encode()),
        ("application/x-ndjson; charset=utf-8", "\n".join(LINES).encode()),
        ("Application/JSONL", "\n\n".join(LINES).encode() + b"\n"),
        ("application/vnd.apache.avro.single-object", MESSAGES),
        ("avro/binary", _container()),
    ],
)  # fmt: skip
def test_every_media_type_gives_the_records_in_input_order(content_type: str, body: bytes) -> None:
    batch = bodies.parse(body, content_type, source="api:c", limits=bodies.Limits())
    assert (batch.topic, batch.partition, len(batch)) == ("api:c", 0, 5)
    assert batch.column("offset").to_pylist() == [0, 1, 2, 3, 4]
    batch = guard_chain.with_records(guard_chain.decode(batch, Decoder()))
    assert [record_id_of(r) for r in batch.records or ()] == IDS


def test_one_object_is_one_record() -> None:
    batch = bodies.parse(
        json_line(RECORDS[0].record).encode(),
        "application/json",
        source="s",
        limits=bodies.Limits(),
    )
    assert len(batch) == 1 and record_id_of((batch.records or ())[0]) == IDS[0]


def test_limits() -> None:
    with pytest.raises(bodies.BodyTooLargeError, match="more than 4: send them"):
        bodies.parse(_container(), "avro/binary", source="s", limits=bodies.Limits(max_records=4))
    with pytest.raises(bodies.BodyTooLargeError, match="larger than 10 bytes"):
        bodies.parse(
            b"[{}, {}, {}]", "application/json", source="s", limits=bodies.Limits(max_body_bytes=10)
        )
    with pytest.raises(bodies.UnsupportedMediaTypeError, match="`application/xml`"):
        bodies.parse(b"<a/>", "application/xml", source="s", limits=bodies.Limits())


# -- the Rust reader's split of single-object bodies against fastavro's ---------------------

MIXED = [
    encode_single_object(g.record, g.schema) for g in generate(40, seed=12)
]  # three entities, two provenance versions


def _split(body: bytes) -> list[bytes] | str:
    try:
        return bodies.split_single_objects(body)
    except bodies.MalformedBodyError as exc:
        return f"refused: {exc}"


def _split_by_fastavro(body: bytes) -> list[bytes] | str:
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(arrow_decode, "single_object_ends", lambda body, schemas: None)
        return _split(body)


def _mutated(seed: int) -> bytes:
    """Messages back to back, some of them flipped, cut, grown or given another fingerprint
    (or no magic), the body cut at the end at times."""
    rng = random.Random(seed)
    parts = []
    for message in rng.sample(MIXED, rng.randint(1, 12)):
        data = bytearray(message)
        kind = rng.random()
        if kind < 0.15:  # a byte flipped, in the body or the framing
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind < 0.25:  # a byte that decodes as another value or a longer varint
            data[rng.randrange(10, len(data))] = rng.choice([0x00, 0x01, 0x02, 0x7F, 0x80, 0xFF])
        elif kind < 0.3:
            data = data[: rng.randrange(len(data))]
        elif kind < 0.35:
            at = rng.randrange(len(data))
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
        elif kind < 0.4:
            data[2:10] = bytes(rng.randrange(256) for _ in range(8))
        parts.append(bytes(data))
    body = b"".join(parts)
    if rng.random() < 0.1:
        body = body[: rng.randrange(len(body) + 1)]
    return body


@pytest.mark.skipif(not arrow_decode.available(), reason="the Rust reader is not built")
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_the_rust_split_gives_fastavros_messages_and_reasons(seed: int) -> None:
    """On mutated bodies the split (Rust where it can read, fastavro from where it cannot)
    gives fastavro's messages, or its refusal word for word."""
    body = _mutated(seed)
    assert _split(body) == _split_by_fastavro(body)


@pytest.mark.skipif(not arrow_decode.available(), reason="the Rust reader is not built")
def test_the_rust_reader_splits_whole_bodies_alone() -> None:
    ends, stopped = arrow_decode.single_object_ends(b"".join(MIXED), known_fingerprints()) or (
        [],
        -1,
    )
    assert stopped == sum(map(len, MIXED))
    assert ends == list(itertools.accumulate(map(len, MIXED)))


@pytest.mark.parametrize("split_by_rust", [0, 1, 17, 39])
def test_fastavro_goes_on_where_the_rust_split_stopped(split_by_rust: int) -> None:
    """A message the Rust reader cannot read (apache-avro refuses some bodies fastavro reads)
    is read by fastavro, and so is every message after it."""
    body = b"".join(MIXED)
    ends = list(itertools.accumulate(map(len, MIXED)))[:split_by_rust]
    stopped = ends[-1] if ends else 0
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(arrow_decode, "single_object_ends", lambda body, schemas: (ends, stopped))
        assert bodies.split_single_objects(body) == MIXED
