"""The gateway's request bodies (`web.bodies`): each media type into one batch, in order."""

from __future__ import annotations

import io

import fastavro
import pytest

from lineage_guard import guard_chain
from lineage_guard.contract.records import record_id_of
from lineage_guard.contract.schemas import load_schema
from lineage_guard.generate import CONTACT, generate
from lineage_guard.io.decode import Decoder, encode_single_object
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
