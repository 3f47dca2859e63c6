"""Smoke tests: the service fixtures give a Kafka broker and a PostgreSQL that really work."""

from __future__ import annotations

import time
from uuid import uuid4

import psycopg
from confluent_kafka import Consumer, KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from psycopg import sql


def test_kafka_round_trip(kafka_bootstrap: str) -> None:
    topic = f"t-{uuid4().hex}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)

    failures: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failures.append(err)

    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    sent = [(b"k0", b"alpha"), (b"k1", b"beta"), (b"k2", b"gamma")]
    for key, value in sent:
        producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
    assert producer.flush(30) == 0
    assert failures == []

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"g-{uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    received: list[tuple[bytes | None, bytes | None]] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 30
        while len(received) < len(sent) and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            received.append((msg.key(), msg.value()))
    finally:
        consumer.close()
    assert received == sent


def test_postgres_answers(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_postgres_round_trip(pg_dsn: str) -> None:
    table = sql.Identifier(f"t_{uuid4().hex}")
    with psycopg.connect(pg_dsn) as conn:  # commits on leaving the block
        conn.execute(
            sql.SQL("create table {} (id int primary key, name text not null)").format(table)
        )
        with conn.cursor() as cur:
            cur.executemany(
                sql.SQL("insert into {} (id, name) values (%s, %s)").format(table),
                [(2, "beta"), (1, "alpha")],
            )
    try:
        with psycopg.connect(pg_dsn) as conn:  # a second connection sees the committed rows
            rows = conn.execute(sql.SQL("select id, name from {} order by id").format(table))
            assert rows.fetchall() == [(1, "alpha"), (2, "beta")]
    finally:
        with psycopg.connect(pg_dsn) as conn:
            conn.execute(sql.SQL("drop table {}").format(table))
