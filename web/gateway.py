"""`lineage-guard gateway`: records checked and admitted over HTTP, with the stream's verdicts.

    POST /v1/records:check               the verdicts, nothing recorded or produced
    POST /v1/records:admit?stage=NAME    the verdicts, each record's hop in the lineage store
                                         (the client's identity as the source), and with
                                         output topics the records produced to Kafka
    GET  /readyz                         the lineage store (and the broker) answer

A request's body (`web.bodies`) becomes one `GuardBatch` and goes through the one guard chain
(`guard_chain`: decode → validate → enforce → hop rows), as a micro-batch of the Kafka guard
does: the same verdicts, hop rows and Merkle leaves. The requests that arrive while the chain
runs are judged together in its next pass (`Gateway.prepare`, `_Grouped`): the batches of
one client concatenated, judged once, and cut back into each request's batch, so the chain's
fixed cost (some sixty Arrow calls in the suites alone) is paid once per pass rather than
once per request. An admit request:

1. writes its hops before any record is produced: a store that cannot be written answers 503
   and nothing is produced (the guard fails closed);
2. with `--output-topic` / `--quarantine-topic`, produces allowed records there and stopped
   ones to quarantine with the Kafka guard's headers (`io.kafka.quarantine_headers`), with
   its idempotent, `acks=all` producer settings, and waits for the broker's acknowledgements;
3. records the acknowledged delivery (and the answer under its `Idempotency-Key`): only then
   does lineage say `delivered`. A broker that did not acknowledge every record answers 503,
   and the hops stay unconfirmed (`sending`), never `delivered`.

Without output topics, hops, delivery and answer are one write. The writes go through
`SqlStore.admit` in groups (`_Grouped` too): the requests that arrive while one transaction
commits share the next one (one commit, one fsync, for all of them). Two threads do a
request's work: the chain's (parse, judge, answer, hop rows, messages) and the commits'; the
request's own thread (Starlette's pool) reads its kept answer and waits, and the event loop
reads the body and answers. A request's reads (its API key, its records' parents, a kept
answer) go through a second connection to the store, so they never wait behind a commit, and
a `check` never waits for a commit either.

`Idempotency-Key`: the answer is kept in the store under the client and key, and a retry with
the same key and body gets it back without admitting anything again. A retry after a 503 runs
again under the same lineage run (derived from the key), so the store's `append` finds the hops
the first attempt wrote instead of writing them twice. Its records are produced again unless
this process saw the broker acknowledge them (the store failed after that): a retry that
reaches another gateway process after such a failure puts them on the topic twice (at least
once), while lineage still holds one hop per record.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from prometheus_client import Counter
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from lineage_guard import arrow_batch, guard_chain
from lineage_guard.arrow_batch import GuardBatch
from lineage_guard.contract.policies import Policy, TrainingPolicy, parse_policy
from lineage_guard.contract.records import record_id_of
from lineage_guard.contract.validate import SuiteValidator
from lineage_guard.io.decode import Decoder
from lineage_guard.io.file_io import json_line
from lineage_guard.io.kafka import KafkaSettings, quarantine_headers
from lineage_guard.lineage.chain import Entry
from lineage_guard.lineage.errors import (
    ConfigError,
    ServiceUnavailableError,
    UnusableInputError,
)
from lineage_guard.lineage.hops import HopBatch
from lineage_guard.lineage.store import LineageStore, first_line, open_store
from lineage_guard.lineage.stores.sql import Admission
from lineage_guard.stages import parent_ids
from lineage_guard.web import bodies
from lineage_guard.web.access import Permission, require
from lineage_guard.web.app import create_app
from lineage_guard.web.auth import AuthSettings, Principal

log = logging.getLogger(__name__)

VERDICTS = Counter(
    "lineage_guard_gateway_verdicts",
    "Records judged by the gateway, by route and rule (`allowed`: records that passed)",
    ["route", "rule"],
)

CHECK = "records:check"
ADMIT = "records:admit"
SOURCE_PREFIX = "api:"  # a hop's source topic: the client's identity
DEFAULT_STAGE = "gateway"
STAGE_NAME = re.compile(r"[A-Za-z0-9._:-]{1,200}")
STAGE_RULE = "1 to 200 letters, digits, `.`, `_`, `:` or `-`"
JUDGED_TOGETHER = 4 * 1024 * 1024  # bytes of bodies: the waiting requests the chain takes
JUDGED_RECORDS = 10_000  # records: those requests' batches judged in passes of up to this


class IdempotencyKeyReusedError(UnusableInputError):
    """An `Idempotency-Key` sent again with another body (HTTP 422)."""

    http_status = 422


@dataclass(frozen=True, kw_only=True)
class GatewaySettings:
    """What `lineage-guard gateway` was started with (built once, at the entry point)."""

    lineage_store: str
    policies: tuple[str, ...] = ("production",)
    engine: str = "compiled"
    limits: bodies.Limits = field(default_factory=bodies.Limits)
    kafka: KafkaSettings | None = None
    output_topic: str | None = None
    quarantine_topic: str | None = None
    ack_timeout_s: float = 10.0  # how long the broker's acknowledgements are waited for


@dataclass(frozen=True, kw_only=True)
class Client:
    """Who is asking, as the gateway needs it: a name (the hops' source) and, for a client
    bound to a tenant, that tenant (its other tenants' records get `tenant_mismatch`)."""

    name: str
    tenant: str | None = None


def answer_of(batch: GuardBatch) -> dict[str, Any]:
    """The answer to a request: each record's verdict in input order (`index`, `record_id`,
    `allowed`, `violations`); `with_hop_ids` adds where each one's hop was written."""
    stopped = batch.column("stopped_at").to_pylist()
    found = batch.violations
    records = [
        {
            "index": i,
            "record_id": record_id,
            "allowed": stopped[i] is None,
            "violations": [v.to_dict() for v in found.get(i, ())],
        }
        for i, record_id in enumerate(record_ids(batch))
    ]
    allowed = stopped.count(None)
    return {
        "total": len(records),
        "allowed": allowed,
        "rejected": len(records) - allowed,
        "records": records,
    }


def with_hop_ids(answer: dict[str, Any], entry: Entry) -> dict[str, Any]:
    """`answer` with each record's `hop_id`, once its hops are written as `entry`: its
    chain, its batch's place in it, its place there."""
    hops = f"{entry.chain_id}#{entry.seq}/"
    records = [{**verdict, "hop_id": hops + str(i)} for i, verdict in enumerate(answer["records"])]
    return {**answer, "records": records}


@dataclass(frozen=True, kw_only=True)
class _Request:
    """A check or admit request as the chain thread takes it: its body unparsed."""

    client: Client
    body: bytes
    content_type: str | None
    stage: str | None = None  # admit: the stage its hops are recorded under
    run_id: str = ""


@dataclass(frozen=True, kw_only=True)
class _Judged:
    """What the chain thread made of a request: its answer without hop ids and, to admit
    it, its hops and the messages to produce."""

    answer: dict[str, Any]
    hops: HopBatch | None = None
    messages: list[tuple[str, bytes | None, bytes, Any]] | None = None


class Gateway:
    """The gateway's work, without HTTP: one per process, shared by every request (the
    validator, the store's two connections and the producer are thread-safe)."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.policies = [parse_policy(text) for text in settings.policies]
        if any(isinstance(p, TrainingPolicy) for p in self.policies):
            raise ConfigError(
                "The gateway judges each request on its own: the `training` policy, which "
                "keeps an export's kind across batches, cannot apply. Drop it."
            )
        if (settings.output_topic or settings.quarantine_topic) and settings.kafka is None:
            raise ConfigError("`--output-topic` / `--quarantine-topic` need `--bootstrap-servers`.")
        self.validator = SuiteValidator(engine=settings.engine)
        self.decoder = Decoder()
        self._stores: dict[str, LineageStore] = {}
        self._store_lock = threading.Lock()
        self._producer: _Producer | None = None
        # Runs (a client's `Idempotency-Key`) whose records the broker acknowledged but whose
        # answer the store has not kept yet (it went down): their retry is not produced again.
        self._acknowledged: set[str] = set()
        self._committer: _Grouped[Admission, Entry] = _Grouped(
            self._commit, name="gateway-commits", max_size=200
        )
        self._chain: _Grouped[_Request, _Judged] = _Grouped(
            self._judge_requests,
            name="gateway-chain",
            max_size=JUDGED_TOGETHER,
            size=lambda request: len(request.body),
        )
        if settings.kafka is not None and (settings.output_topic or settings.quarantine_topic):
            self._producer = _Producer(settings.kafka, settings.ack_timeout_s)

    # -- the store -----------------------------------------------------------------------

    def store(self) -> LineageStore:
        """The lineage store the commits go to, opened at first use."""
        return self._opened("writer")

    def reader(self) -> LineageStore:
        """The same store on a connection of its own, for each request's reads (its API key,
        its parents' classes, a kept answer): they never wait behind a commit's fsync."""
        return self._opened("reader")

    def _opened(self, role: str) -> LineageStore:
        with self._store_lock:
            if role not in self._stores:
                self._stores[role] = open_store(self.settings.lineage_store)
            return self._stores[role]

    def close(self) -> None:
        self._chain.close()
        self._committer.close()
        if self._producer is not None:
            self._producer.close()
        with self._store_lock:
            for store in self._stores.values():
                store.close()
            self._stores.clear()

    def accounts(self) -> Any:
        """The API keys' store (`lineage.accounts.AccountStore`): the lineage store."""
        return self.reader()

    def store_ready(self) -> None:
        """Raises `ServiceUnavailableError` unless the lineage store answers."""
        self.reader().head("readyz")

    def ready(self) -> None:
        """Raises `ServiceUnavailableError` unless the store and the broker answer."""
        self.store_ready()
        if self._producer is not None:
            self._producer.ping()

    # -- the chain -----------------------------------------------------------------------

    def prepare(self, request: _Request) -> _Judged:
        """`request` parsed, judged by the one guard chain (parents' classes from the store)
        and, to admit it, its hops and messages made: on the chain's thread, with the
        requests waiting meanwhile (`_judge_requests`)."""
        return self._chain.run(request)

    def _judge_requests(self, requests: list[_Request]) -> list[_Judged | BaseException]:
        """The chain's thread: every Arrow call of a request is made here, none on the
        requests' own threads (see `_Grouped`)."""
        parsed: list[tuple[int, GuardBatch]] = []
        results: dict[int, _Judged | BaseException] = {}
        limits = self.settings.limits
        for at, request in enumerate(requests):
            source = SOURCE_PREFIX + request.client.name
            try:
                batch = bodies.parse(
                    request.body, request.content_type, source=source, limits=limits
                )
            except Exception as exc:
                results[at] = exc
                continue
            parsed.append((at, batch))
        judged: list[GuardBatch | BaseException] = []
        for start, end in _passes([len(batch) for _, batch in parsed], JUDGED_RECORDS):
            judged += self._judge_group([(requests[at].client, b) for at, b in parsed[start:end]])
        for (at, _), one in zip(parsed, judged, strict=True):
            try:
                results[at] = (
                    one if isinstance(one, BaseException) else self._made(requests[at], one)
                )
            except Exception as exc:
                results[at] = exc
        return [results[at] for at in range(len(requests))]

    def _made(self, request: _Request, judged: GuardBatch) -> _Judged:
        answer = answer_of(judged)
        if request.stage is None:
            return _Judged(answer=answer)
        settings, client = self.settings, request.client.name
        hops = guard_chain.hop_batch(
            judged,
            pipeline=request.stage,
            run_id=request.run_id,
            allowed_to=settings.output_topic or f"client:{client}",
            quarantined_to=settings.quarantine_topic or f"client:{client}",
        )
        messages = self._messages(judged) if self._producer is not None else None
        return _Judged(answer=answer, hops=hops, messages=messages)

    def _judge_group(
        self, group: list[tuple[Client, GuardBatch]]
    ) -> list[GuardBatch | BaseException]:
        """Each request's batch judged as it would be alone: the batches of one client (one
        source, one tenant binding) as one batch, cut back into theirs. A request whose
        records name as a parent a record of another request of the batch (its class would
        count, as the batch's own) is judged alone."""
        results: dict[int, GuardBatch | BaseException] = {}
        by_client: dict[Client, list[int]] = {}
        for at, (client, _) in enumerate(group):
            by_client.setdefault(client, []).append(at)
        for client, ats in by_client.items():
            batches = [group[at][1] for at in ats]
            try:
                judged = self._judged_together(batches, client)
            except Exception as exc:
                judged = [exc] * len(ats)
            for at, one in zip(ats, judged, strict=True):
                results[at] = one
        return [results[at] for at in range(len(group))]

    def _judged_together(
        self, batches: list[GuardBatch], client: Client
    ) -> list[GuardBatch | BaseException]:
        if len(batches) == 1:
            return [self._validated(guard_chain.decode(batches[0], self.decoder), client)]
        spans = _spans(batches)
        batch = guard_chain.decode(arrow_batch.concat(batches), self.decoder)  # row by row
        if not _parents_across(batch, spans):
            judged = self._validated(batch, client)
            return [judged.take(range(start, end)) for start, end in spans]
        out: list[GuardBatch | BaseException] = []
        for start, end in spans:
            try:
                out.append(self._validated(batch.take(range(start, end)), client))
            except Exception as exc:
                out.append(exc)
        return out

    def _validated(self, batch: GuardBatch, client: Client) -> GuardBatch:
        """validate → enforce over a decoded batch (the client's tenant binding as a tenant
        policy)."""
        policies: list[Policy] = list(self.policies)
        if client.tenant is not None:
            policies.append(parse_policy(f"tenant:{client.tenant}"))
        batch = guard_chain.validate(batch, self.validator, lookup=self.reader().content_classes)
        return guard_chain.enforce(batch, policies)

    def _commit(self, group: list[Admission]) -> list[Entry | BaseException]:
        """One transaction for the admissions of a group of requests."""
        store: Any = self.store()
        entries: list[Entry] = store.admit(group, at=datetime.now(UTC))
        return list(entries)

    def check(self, body: bytes, content_type: str | None, client: Client) -> dict[str, Any]:
        return self.prepare(_Request(client=client, body=body, content_type=content_type)).answer

    def admit(
        self,
        body: bytes,
        content_type: str | None,
        client: Client,
        *,
        stage: str,
        key: str | None,
        request_sha256: str,
    ) -> dict[str, Any]:
        if key is not None:
            earlier = self.reader().answer_of(client.name, key)  # type: ignore[attr-defined]
            if earlier is not None:
                digest, text = earlier
                if digest != request_sha256:
                    raise IdempotencyKeyReusedError(
                        f"The `Idempotency-Key` `{key}` was used before with another body: "
                        "use a new key for new records."
                    )
                kept_answer: dict[str, Any] = json.loads(text)
                return kept_answer
        run_id = _run_id(client.name, key)
        judged = self.prepare(
            _Request(
                client=client, body=body, content_type=content_type, stage=stage, run_id=run_id
            )
        )
        assert judged.hops is not None

        def kept(entry: Entry) -> tuple[str, str, str, str]:
            answered = json.dumps(with_hop_ids(judged.answer, entry))
            return (client.name, key or "", request_sha256, answered)

        answer = kept if key is not None else None
        new_run = key is None  # a fresh run id: no earlier attempt wrote its hops
        if self._producer is None:  # hops, delivery and answer: one transaction
            entry = self._committer.run(
                Admission(batch=judged.hops, confirmed=True, answer=answer, new_run=new_run)
            )
        else:  # hops first; delivered once the broker acknowledged every record
            entry = self._committer.run(Admission(batch=judged.hops, new_run=new_run))
            if run_id not in self._acknowledged:
                self._producer.send(judged.messages or [])
                if key is not None:
                    self._acknowledged.add(run_id)
            self._committer.run(Admission(entry=entry, confirmed=True, answer=answer))
            self._acknowledged.discard(run_id)
        return with_hop_ids(judged.answer, entry)

    def _messages(self, batch: GuardBatch) -> list[tuple[str, bytes | None, bytes, Any]]:
        """(topic, key, value, headers) of each record to produce: allowed records to the
        output topic, stopped ones to quarantine with the Kafka guard's headers. A message
        goes as it came; a JSON record as its JSON."""
        out: list[tuple[str, bytes | None, bytes, Any]] = []
        ids = record_ids(batch)
        for item, record_id in zip(batch.items().items, ids, strict=True):
            value = item.source.value
            if value is None:
                value = json_line(item.record).encode("utf-8", "surrogatepass")
            key = record_id.encode("utf-8", "surrogatepass") if record_id is not None else None
            if item.allowed and self.settings.output_topic:
                out.append((self.settings.output_topic, key, value, None))
            elif not item.allowed and self.settings.quarantine_topic:
                out.append((self.settings.quarantine_topic, key, value, quarantine_headers(item)))
        return out


def record_ids(batch: GuardBatch) -> list[str | None]:
    """Each row's record id: from its record, or from the columns the Rust reader read."""
    records = batch.records if batch.records is not None else (None,) * len(batch)
    ids = [record_id_of(r) for r in records]
    if batch.has("record_id"):  # some rows were read into columns
        read = batch.column("read").to_pylist()
        column = batch.column("record_id").to_pylist()
        ids = [column[i] if read[i] else ids[i] for i in range(len(batch))]
    return ids


def _passes(sizes: Sequence[int], most: int) -> list[tuple[int, int]]:
    """Consecutive (start, end) runs of `sizes` whose sum stays within `most` (a run holds at
    least one)."""
    runs, start, total = [], 0, 0
    for at, size in enumerate(sizes):
        if at > start and total + size > most:
            runs.append((start, at))
            start, total = at, 0
        total += size
    if start < len(sizes):
        runs.append((start, len(sizes)))
    return runs


def _spans(batches: Sequence[GuardBatch]) -> list[tuple[int, int]]:
    """Where each batch's rows are in the batches concatenated: (start, end)."""
    spans, start = [], 0
    for batch in batches:
        spans.append((start, start + len(batch)))
        start += len(batch)
    return spans


def _parents_across(batch: GuardBatch, spans: Sequence[tuple[int, int]]) -> bool:
    """Whether a record of one span names as a parent the id of a record of another: the
    chain takes a batch's own records' classes as its parents' (`stages.known_ranks`), so
    those spans would not be judged as they are alone. `batch` is decoded."""
    ids = record_ids(batch)
    records = batch.records if batch.records is not None else (None,) * len(batch)
    read = (
        batch.column("parent_record_ids").to_pylist()
        if batch.has("parent_record_ids")
        else [None] * len(batch)
    )
    spans_of: dict[str, set[int]] = {}
    for k, (start, end) in enumerate(spans):
        for record_id in ids[start:end]:
            if record_id is not None:
                spans_of.setdefault(record_id, set()).add(k)
    for k, (start, end) in enumerate(spans):
        for i in range(start, end):
            parents = set(read[i] or ())
            if records[i] is not None:
                parents |= parent_ids([records[i]])
            if any(spans_of.get(parent, {k}) != {k} for parent in parents):
                return True
    return False


def _run_id(client: str, key: str | None) -> str:
    """The lineage run of one admit request: derived from the client and its
    `Idempotency-Key`, so a retry's hops are the ones the store already holds."""
    if key is None:
        return str(uuid.uuid4())
    digest = hashlib.sha256(f"{client}\x00{key}".encode("utf-8", "surrogatepass")).hexdigest()
    return f"gateway-{digest[:32]}"


T = TypeVar("T")
R = TypeVar("R")


class _Grouped(Generic[T, R]):
    """Runs the requests' items in groups on a thread of its own: the items that arrive while
    a group runs wait and go together in the next one (`run_group`, once for all of them),
    and each request waits for its own answer. `run_group` answers each item, in order, with
    its result or the exception that item raises. A group takes items until their `size`
    reaches `max_size` (at least one item).

    A thread of its own, not the requests' threads: Arrow's calls release the GIL and take it
    back, and among many threads taking turns at it each call costs many times its CPU alone
    (a 1-record `from_messages`: 19 µs of CPU on one thread, 260 µs at the 90th percentile
    among 20 threads). So every Arrow call of a request is made on the chain's thread or the
    commits' thread, none on the requests' own."""

    def __init__(
        self,
        run_group: Callable[[list[T]], list[R | BaseException]],
        *,
        name: str,
        max_size: int,
        size: Callable[[T], int] = lambda _: 1,
    ) -> None:
        self._run_group = run_group
        self._name = name
        self._max_size = max_size
        self._size = size
        self._waiting: list[tuple[T, Future[R]]] = []
        self._arrived = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def run(self, item: T) -> R:
        done: Future[R] = Future()
        with self._arrived:
            if self._closed:
                raise ServiceUnavailableError("The gateway is stopping: send the request again.")
            self._waiting.append((item, done))
            if self._thread is None or not self._thread.is_alive():
                thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                try:
                    thread.start()
                except RuntimeError:  # no thread to be had: this request fails, not the next
                    self._waiting.remove((item, done))
                    raise ServiceUnavailableError(
                        "The gateway cannot start a worker thread: send the request again."
                    ) from None
                self._thread = thread
            self._arrived.notify()
        return done.result()

    def close(self) -> None:
        """Runs what waits, then ends the thread."""
        with self._arrived:
            self._closed = True
            self._arrived.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _serve(self) -> None:
        while True:
            with self._arrived:
                while not self._waiting and not self._closed:
                    self._arrived.wait()
                if not self._waiting:
                    return
                taken, total = 0, 0
                while taken < len(self._waiting) and (taken == 0 or total < self._max_size):
                    total += self._size(self._waiting[taken][0])
                    taken += 1
                group = self._waiting[:taken]
                del self._waiting[:taken]
            self._run(group)

    def _run(self, group: list[tuple[T, Future[R]]]) -> None:
        """Answers every item of `group`, whatever happens: a request never waits for an
        answer that will not come."""
        try:
            results = self._run_group([item for item, _ in group])
            if len(results) != len(group):
                raise RuntimeError(f"{len(results)} answers to {len(group)} items")
        except BaseException as exc:  # each item gets it: the thread serves the next group
            results = [exc] * len(group)
        for (_, done), result in zip(group, results, strict=True):
            if isinstance(result, BaseException):
                done.set_exception(result)
            else:
                done.set_result(result)


class _Producer:
    """One idempotent `acks=all` producer (the Kafka guard's settings) for every request;
    a thread serves its delivery reports, each request waits for its own."""

    def __init__(self, settings: KafkaSettings, ack_timeout_s: float) -> None:
        self.ack_timeout_s = ack_timeout_s
        # One record answered in milliseconds: no 20 ms linger; librdkafka gives up on a
        # message when the request stops waiting for it, so none arrives after a 503.
        self.producer = settings.producer(
            **{"linger.ms": 1, "message.timeout.ms": max(int(ack_timeout_s * 1000), 1)}
        )
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="gateway-acks", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closing.is_set():
            self.producer.poll(0.05)

    def ping(self) -> None:
        from confluent_kafka import KafkaException

        try:
            self.producer.list_topics(timeout=2.0)
        except KafkaException as exc:
            raise ServiceUnavailableError(
                f"The Kafka broker does not answer: {first_line(exc)}."
            ) from None

    def send(self, messages: Sequence[tuple[str, bytes | None, bytes, Any]]) -> None:
        """Produce `messages` and wait until the broker acknowledged every one; raises
        `ServiceUnavailableError` naming how many it did not."""
        if not messages:
            return
        done = threading.Event()
        lock = threading.Lock()
        left = [len(messages)]
        errors: list[str] = []

        def delivered(err: Any, _msg: Any) -> None:
            with lock:
                if err is not None:
                    errors.append(str(err))
                left[0] -= 1
                if left[0] == 0:
                    done.set()

        deadline = time.monotonic() + self.ack_timeout_s
        for topic, key, value, headers in messages:
            while True:
                try:
                    self.producer.produce(
                        topic, value=value, key=key, headers=headers, on_delivery=delivered
                    )
                    break
                except BufferError:  # the local queue is full: wait for room
                    if time.monotonic() > deadline:
                        raise ServiceUnavailableError(
                            "The producer's queue stayed full: the broker is not taking records."
                        ) from None
                    time.sleep(0.01)
        # librdkafka reports every message by `message.timeout.ms`: wait a little beyond.
        done.wait(self.ack_timeout_s + 5.0)
        with lock:
            missing = left[0] + len(errors)
            first = errors[0] if errors else "no answer"
        if missing:
            raise ServiceUnavailableError(
                f"The Kafka broker did not acknowledge {missing} of {len(messages)} records"
                f" ({first}): lineage does not record them as delivered. Retry with the same"
                " `Idempotency-Key`."
            )

    def close(self) -> None:
        self._closing.set()
        self._thread.join(timeout=2.0)
        self.producer.flush(5.0)


# -- HTTP ----------------------------------------------------------------------------------


def request_digest(content_type: str | None, body: bytes) -> str:
    return hashlib.sha256((content_type or "").encode() + b"\x00" + body).hexdigest()


def client_of(principal: Principal) -> Client:
    """The caller as the gateway needs it. A principal bound to one tenant admits that
    tenant's records only (`tenant_mismatch` for the others); one bound to several is refused:
    a gateway request is judged for one tenant."""
    tenants = principal.tenants
    if tenants is not None and len(tenants) != 1:
        raise HTTPException(
            status_code=403,
            detail=f"`{principal.name}` is bound to {len(tenants)} tenants: the gateway admits"
            " for one tenant per API key or token. Use a key bound to one tenant.",
        )
    return Client(name=principal.name, tenant=next(iter(tenants)) if tenants else None)


class AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII text escaped: a record's text may hold a lone surrogate (legal in
    JSON, not in UTF-8), which must come back as the `\\udXXX` escape it arrived as."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


class Violation(BaseModel):
    rule: str
    column: str | None
    message: str


class Verdict(BaseModel):
    index: int
    record_id: str | None
    allowed: bool
    violations: list[Violation]
    hop_id: str | None = Field(default=None, description="admit only: the record's hop")


class Answer(BaseModel):
    total: int
    allowed: int
    rejected: int
    records: list[Verdict]


class Ready(BaseModel):
    status: str


_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            bodies.JSON: {
                "schema": {
                    "oneOf": [
                        {"type": "object"},
                        {"type": "array", "items": {"type": "object"}},
                    ]
                }
            },
            **{kind: {"schema": {"type": "string"}} for kind in bodies.JSON_LINES},
            **{
                kind: {"schema": {"type": "string", "format": "binary"}}
                for kind in (bodies.SINGLE_OBJECT, *bodies.CONTAINER)
            },
        },
    }
}
_PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    413: {"description": "The body is past the size or record limit", "content": _PROBLEM},
    415: {"description": "A Content-Type the gateway does not read", "content": _PROBLEM},
    422: {"description": "An `Idempotency-Key` sent before with another body", "content": _PROBLEM},
    503: {
        "description": "The lineage store or the broker is unavailable: nothing was recorded as"
        " delivered; retry after `Retry-After` seconds (with the same `Idempotency-Key`)",
        "content": _PROBLEM,
    },
}


def routes(gateway: Gateway) -> APIRouter:
    """The gateway's routes, each behind `access.require` with its scope."""
    router = APIRouter(tags=["records"])
    limits = gateway.settings.limits

    async def read(request: Request) -> tuple[bytes, str | None]:
        """The body, refused (415, 413) before it is read whole when it cannot be taken."""
        content_type = request.headers.get("content-type")
        bodies.media_type(content_type)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise bodies.too_large(limits)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body_bytes:
                raise bodies.too_large(limits)
            chunks.append(chunk)
        return b"".join(chunks), content_type

    @router.post(
        "/v1/records:check",
        response_model=Answer,
        responses=_RESPONSES,
        openapi_extra=_BODY,
        summary="Judge records: the verdicts, nothing recorded or produced",
    )
    async def check(
        request: Request, principal: Annotated[Principal, require(Permission.RECORDS_CHECK)]
    ) -> Any:
        client = client_of(principal)
        body, content_type = await read(request)
        return await run_in_threadpool(
            lambda: answered(CHECK, gateway.check(body, content_type, client))
        )

    @router.post(
        "/v1/records:admit",
        response_model=Answer,
        responses=_RESPONSES,
        openapi_extra=_BODY,
        summary="Judge records, record their hops, produce them (with output topics)",
    )
    async def admit(
        request: Request,
        principal: Annotated[Principal, require(Permission.RECORDS_ADMIT)],
        stage: Annotated[
            str,
            Query(description="The stage name the hops are recorded under: " + STAGE_RULE),
        ] = DEFAULT_STAGE,
    ) -> Any:
        client = client_of(principal)
        if not STAGE_NAME.fullmatch(stage):
            raise UnusableInputError(f"The stage name must be {STAGE_RULE}.")
        key = request.headers.get("idempotency-key")
        if key is not None and not (0 < len(key) <= 255 and key.isprintable()):
            raise UnusableInputError(
                "The `Idempotency-Key` header must be 1 to 255 printable characters."
            )
        body, content_type = await read(request)
        return await run_in_threadpool(  # a thread that waits for the chain's and commits'
            lambda: answered(
                ADMIT,
                gateway.admit(
                    body,
                    content_type,
                    client,
                    stage=stage,
                    key=key,
                    request_sha256=request_digest(content_type, body),
                ),
            )
        )

    @router.get(
        "/readyz",
        response_model=Ready,
        summary="Whether the lineage store and the broker (with output topics) answer",
    )
    async def readyz(principal: Annotated[Principal, require(Permission.RECORDS_CHECK)]) -> Any:
        await run_in_threadpool(gateway.ready)
        return {"status": "ready"}

    return router


def build_app(
    settings: GatewaySettings,
    *,
    gateway: Gateway | None = None,
    auth: AuthSettings | None = None,
) -> FastAPI:
    """The gateway's app on the shared stack (`web.app.create_app`): its routes, the API keys
    kept in the lineage store, `/healthz` answering for the store."""
    gateway = gateway or Gateway(settings)
    return create_app(
        title="lineage-guard gateway",
        description="Check and admit CRM records with the stream's verdicts and lineage.",
        store=gateway.accounts(),
        auth=auth or AuthSettings(),
        routers=[routes(gateway)],
        ready=gateway.store_ready,
    )


def answered(route: str, answer: dict[str, Any]) -> AsciiJSONResponse:
    """The response to a request (rendered on the request's worker thread, not the event
    loop), its verdicts counted by rule (`allowed`: records that passed) for `/metrics`."""
    VERDICTS.labels(route=route, rule="allowed").inc(answer["allowed"])
    rules = collections.Counter(
        v["rule"] for record in answer["records"] for v in record["violations"]
    )
    for rule, count in rules.items():
        VERDICTS.labels(route=route, rule=rule).inc(count)
    return AsciiJSONResponse(answer)
