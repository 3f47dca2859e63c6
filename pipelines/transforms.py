"""The guard's stages as composable Beam transforms, for the CLI's graph and for your own.

Elements are micro-batches (`Batch`: the records of one partition or file, in offset order),
encoded with `BatchCoder` (deterministic, no pickle). Each checking stage has three outputs:

- `valid` (main): per input batch, the records still allowed after this stage;
- `quarantine`: the records this stage stopped, with their `violations`;
- `guarded`: every input batch whole, its stopped records marked in place. Chain stages and
  `RecordHop` / `WriteGuarded` on this one: it keeps each partition's records in offset order,
  which the Kafka sink needs to commit an offset only behind records it wrote.

A data engineer's own pipeline (see `examples/two_stage_pipeline.py`)::

    batches = p | ReadFiles(["/data/emails.jsonl"])
    decoded = batches | DecodeRecords()
    checked = decoded.guarded | ValidateProvenance(lineage_store=store)
    checked[QUARANTINE] | MyDeadLetter()                     # stopped records, with reasons
    recorded = checked.guarded | RecordHop("enrich", store, handoffs=("replies", "dlq"))
    recorded | MyEnrichment()                                # after its lineage is recorded

`class_below_parent` finds parents among the run's records (`ParentClasses`, a side input)
and in the lineage store, never in one worker's memory: see `stages.parent_ranks`.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import AsSingleton, PBegin, PCollection, TaggedOutput

from lineage_guard import stages
from lineage_guard.coders import BatchCoder
from lineage_guard.contract.policies import parse_policy
from lineage_guard.contract.records import provenance_of
from lineage_guard.contract.validate import SuiteValidator
from lineage_guard.io.decode import decoder_for
from lineage_guard.io.file_io import FileSink, finalize_files, output_names, read_file
from lineage_guard.io.kafka import KafkaSettings, KafkaSink, PartitionRange, read_range
from lineage_guard.items import Batch
from lineage_guard.lineage.hops import HANDOFF
from lineage_guard.recorder import LineageRecorder, RetryingStore
from lineage_guard.stop import stop_requested

VALID = "valid"
QUARANTINE = "quarantine"
GUARDED = "guarded"
NAMESPACE = "lineage_guard"

beam.coders.registry.register_coder(Batch, BatchCoder)


@dataclass(frozen=True, kw_only=True)
class KafkaIO:
    settings: KafkaSettings
    input_topics: tuple[str, ...]
    output_topic: str
    quarantine_topic: str

    def destinations(self, source: str) -> tuple[str, str]:
        return self.output_topic, self.quarantine_topic


@dataclass(frozen=True, kw_only=True)
class FilesIO:
    """File outputs: per input, `NAME.allowed.jsonl` and `NAME.quarantine.jsonl` in `out_dir`.

    `WriteGuarded` writes each batch to its own part file (a retried bundle rewrites its
    part); call `finalize()` once the pipeline is done to join the parts in offset order::

        sink = FilesIO.for_inputs(["/data/emails.jsonl"], "/data/out")
        with beam.Pipeline(...) as p:
            ... | WriteGuarded(sink, lineage=Lineage(store_url=store, stage="my-sink"))
        sink.finalize()
    """

    inputs: tuple[str, ...]  # absolute paths or URIs (Beam `FileSystems`)
    out_dir: str  # absolute path or URI
    names: dict[str, str]  # input → output base name

    @classmethod
    def for_inputs(cls, inputs: Sequence[str], out_dir: str) -> FilesIO:
        """One output base name per input (`emails`, `emails-2`, … from the file names; a
        source name that is not a file, such as `replies`, names its own outputs)."""
        return cls(inputs=tuple(inputs), out_dir=out_dir, names=output_names(inputs))

    def destinations(self, source: str) -> tuple[str, str]:
        return FileSink(self.out_dir, self.names).destinations(source)

    def finalize(self) -> None:
        """Joins the part files the pipeline wrote into the output files (on the launcher,
        after the pipeline finished)."""
        finalize_files(self.out_dir, self.names)


def _typed(outputs: Any, *tags: str) -> Any:
    """Declares every tagged output a PCollection of `Batch`, so Beam uses `BatchCoder`."""
    for tag in tags:
        outputs[tag].element_type = Batch
    return outputs


# -- sources ---------------------------------------------------------------------------------


class _ReadKafka(beam.DoFn):
    def __init__(self, settings: KafkaSettings, batch_size: int, counter: str | None) -> None:
        self.settings = settings
        self.batch_size = batch_size
        self.counter = counter

    def setup(self) -> None:
        self.consumer = self.settings.consumer()
        self.read = Metrics.counter(NAMESPACE, self.counter) if self.counter else None

    def process(self, part: PartitionRange) -> Iterator[Batch]:
        timeout_s = self.settings.timeout_s
        for batch in read_range(self.consumer, part, self.batch_size, timeout_s, stop_requested):
            if self.read is not None:
                self.read.inc(len(batch.items))
            yield batch

    def teardown(self) -> None:
        self.consumer.close()


class ReadKafka(beam.PTransform):
    """Bounded: the given partition ranges, each read in offset order by one worker.
    `counter`: the Beam counter that counts records read (None: not counted)."""

    def __init__(
        self,
        settings: KafkaSettings,
        ranges: Sequence[PartitionRange],
        batch_size: int = 2000,
        *,
        counter: str | None = "read",
    ) -> None:
        super().__init__()
        self.settings = settings
        self.ranges = list(ranges)
        self.batch_size = batch_size
        self.counter = counter

    def expand(self, pbegin: PBegin) -> PCollection[Batch]:
        return (
            pbegin
            | "Partitions" >> beam.Create(self.ranges)
            | "Spread" >> beam.Reshuffle()
            | "Read"
            >> beam.ParDo(
                _ReadKafka(self.settings, self.batch_size, self.counter)
            ).with_output_types(Batch)
        )


class _ReadFiles(beam.DoFn):
    def __init__(self, batch_size: int, counter: str | None) -> None:
        self.batch_size = batch_size
        self.counter = counter

    def setup(self) -> None:
        self.read = Metrics.counter(NAMESPACE, self.counter) if self.counter else None

    def process(self, path: str) -> Iterator[Batch]:
        for batch in read_file(path, self.batch_size):
            if stop_requested():  # a stop signal: read no further
                return
            if self.read is not None:
                self.read.inc(len(batch.items))
            yield batch


class ReadFiles(beam.PTransform):
    """Avro container or JSON Lines files (paths or `FileSystems` URIs), one file per worker,
    as batches whose position is (file, 0, record index)."""

    def __init__(
        self, paths: Sequence[str], batch_size: int = 2000, *, counter: str | None = "read"
    ) -> None:
        super().__init__()
        self.paths = list(paths)
        self.batch_size = batch_size
        self.counter = counter

    def expand(self, pbegin: PBegin) -> PCollection[Batch]:
        return (
            pbegin
            | "Files" >> beam.Create(self.paths)
            | "Spread" >> beam.Reshuffle()
            | "Read"
            >> beam.ParDo(_ReadFiles(self.batch_size, self.counter)).with_output_types(Batch)
        )


# -- checking stages -------------------------------------------------------------------------


class _Stage(beam.DoFn):
    """Applies one stage to a batch and emits its three outputs (see the module docstring)."""

    def check(self, batch: Batch, side: Any) -> Batch:
        raise NotImplementedError

    def process(self, batch: Batch, side: Any = None) -> Iterator[Any]:
        after = self.check(batch, side)
        yield TaggedOutput(GUARDED, after)
        valid = tuple(item for item in after.items if item.allowed)
        if valid:
            yield replace(after, items=valid)
        stopped = tuple(
            a for b, a in zip(batch.items, after.items, strict=True) if b.allowed and not a.allowed
        )
        if stopped:
            yield TaggedOutput(QUARANTINE, replace(after, items=stopped))


class _StageTransform(beam.PTransform):
    def _apply(self, batches: PCollection[Batch], fn: _Stage, *side: Any) -> Any:
        outputs = batches | beam.ParDo(fn, *side).with_outputs(GUARDED, QUARANTINE, main=VALID)
        return _typed(outputs, VALID, GUARDED, QUARANTINE)


class _Decode(_Stage):
    def __init__(
        self, raw_schema: str | None, schema_registry: str | None, registry_wait_s: float
    ) -> None:
        self.raw_schema = raw_schema
        self.schema_registry = schema_registry
        self.registry_wait_s = registry_wait_s

    def setup(self) -> None:
        self.decoder = decoder_for(
            self.raw_schema, self.schema_registry, wait_s=self.registry_wait_s
        )

    def check(self, batch: Batch, side: Any) -> Batch:
        return stages.decode(batch, self.decoder)


class DecodeRecords(_StageTransform):
    """Kafka messages' bytes → records (Confluent framing, single-object, or raw with
    `raw_schema`); undecodable messages go to `quarantine`. Records read from files pass.
    An unreachable `schema_registry` is waited out for up to `registry_wait_s`, then fails
    the step (`ServiceUnavailableError`): an outage is never a verdict."""

    def __init__(
        self,
        raw_schema: str | None = None,
        schema_registry: str | None = None,
        registry_wait_s: float = 300.0,
    ):
        super().__init__()
        self.raw_schema = raw_schema
        self.schema_registry = schema_registry
        self.registry_wait_s = registry_wait_s

    def expand(self, batches: PCollection[Batch]) -> Any:
        return self._apply(
            batches, _Decode(self.raw_schema, self.schema_registry, self.registry_wait_s)
        )


class _IndexClasses(beam.DoFn):
    def __init__(
        self, raw_schema: str | None, schema_registry: str | None, registry_wait_s: float
    ) -> None:
        self.raw_schema = raw_schema
        self.schema_registry = schema_registry
        self.registry_wait_s = registry_wait_s

    def setup(self) -> None:
        self.decoder = decoder_for(
            self.raw_schema, self.schema_registry, wait_s=self.registry_wait_s
        )

    def process(self, batch: Batch) -> Iterator[tuple[bytes, bytes]]:
        part = stages.index_keys(stages.class_index(batch, self.decoder))
        if part != (b"", b""):
            yield part


class _MergeIndex(beam.CombineFn):
    """`index_keys` parts → one `ParentIndex`, as (synthetic keys, AI-assisted keys)."""

    def create_accumulator(self) -> list[tuple[bytes, bytes]]:
        return []

    def add_input(
        self, parts: list[tuple[bytes, bytes]], part: tuple[bytes, bytes]
    ) -> list[tuple[bytes, bytes]]:
        parts.append(part)
        return parts

    def merge_accumulators(
        self, accumulators: Iterable[list[tuple[bytes, bytes]]]
    ) -> list[tuple[bytes, bytes]]:
        merged = stages.ParentIndex.merge(part for parts in accumulators for part in parts)
        return [(merged.synthetic, merged.ai_assisted)]

    def extract_output(self, parts: list[tuple[bytes, bytes]]) -> tuple[bytes, bytes]:
        merged = stages.ParentIndex.merge(parts)
        return merged.synthetic, merged.ai_assisted


class ParentClasses(beam.PTransform):
    """The class of every generated record in `batches`, as one compact `ParentIndex` (16
    bytes per AI_ASSISTED or SYNTHETIC record, as `(synthetic keys, AI-assisted keys)`): the
    side input that lets `ValidateProvenance` see parents in any partition of the same run.

    `batches` may come straight from a source: a message is read only as far as its record id
    and class (a fifth of a full decode), with the same `raw_schema` / `schema_registry` as
    `DecodeRecords`. Decoded batches (and file records) are read as they are."""

    def __init__(
        self,
        raw_schema: str | None = None,
        schema_registry: str | None = None,
        registry_wait_s: float = 300.0,
    ):
        super().__init__()
        self.raw_schema = raw_schema
        self.schema_registry = schema_registry
        self.registry_wait_s = registry_wait_s

    def expand(self, batches: PCollection[Batch]) -> PCollection[tuple[bytes, bytes]]:
        return (
            batches
            | "Generated"
            >> beam.ParDo(
                _IndexClasses(self.raw_schema, self.schema_registry, self.registry_wait_s)
            ).with_output_types(tuple[bytes, bytes])
            | "Index" >> beam.CombineGlobally(_MergeIndex()).with_output_types(tuple[bytes, bytes])
        )


class _Validate(_Stage):
    def __init__(self, engine: str, lineage_store: str | None, retry_s: float) -> None:
        self.engine = engine
        self.lineage_store = lineage_store
        self.retry_s = retry_s

    def setup(self) -> None:
        self.validator = SuiteValidator(engine=self.engine)  # suites: once per worker
        self.store = (
            RetryingStore(self.lineage_store, retry_s=self.retry_s)
            if self.lineage_store is not None
            else None
        )

    def check(self, batch: Batch, side: Any) -> Batch:
        index = None
        if side is not None:
            index = stages.ParentIndex(*side)
        return stages.validate(batch, self.validator, index, self._lookup)

    def _lookup(self, record_ids: Iterable[str]) -> dict[str, str]:
        if self.store is None:
            return {}
        return self.store.content_classes(record_ids, stop_requested)

    def teardown(self) -> None:
        if self.store is not None:
            self.store.close()


class ValidateProvenance(_StageTransform):
    """Records in, three outputs: `valid`, `quarantine` (with reasons) and `guarded`.

    `parents`: a `ParentClasses` PCollection (parents in the same run, any partition);
    `lineage_store`: where parents recorded earlier (any worker, round or run) are looked up.
    """

    def __init__(
        self,
        engine: str = "compiled",
        *,
        parents: PCollection[tuple[bytes, bytes]] | None = None,
        lineage_store: str | None = None,
        lineage_retry_s: float = 300.0,
    ) -> None:
        super().__init__()
        self.engine = engine
        self.parents = parents
        self.lineage_store = lineage_store
        self.lineage_retry_s = lineage_retry_s

    def expand(self, batches: PCollection[Batch]) -> Any:
        side = [AsSingleton(self.parents)] if self.parents is not None else []
        validate = _Validate(self.engine, self.lineage_store, self.lineage_retry_s)
        return self._apply(batches, validate, *side)


class _Enforce(_Stage):
    def __init__(self, policies: Sequence[str]) -> None:
        self.policy_texts = tuple(policies)

    def setup(self) -> None:
        self.policies = [parse_policy(text) for text in self.policy_texts]

    def check(self, batch: Batch, side: Any) -> Batch:
        return stages.enforce(batch, self.policies)


class EnforcePolicies(_StageTransform):
    """Sink policies (`production`, `tenant:ID`, `training[:…]`); refused records go to
    `quarantine` marked `blocked`."""

    def __init__(self, policies: Sequence[str] = ("production",)) -> None:
        super().__init__()
        for text in policies:
            parse_policy(text)  # a bad policy fails at construction, not inside a worker
        self.policies = tuple(policies)

    def expand(self, batches: PCollection[Batch]) -> Any:
        return self._apply(batches, _Enforce(self.policies))


# -- lineage and outputs ---------------------------------------------------------------------


class _RecordHop(beam.DoFn):
    def __init__(
        self, stage: str, store_url: str, run_id: str, handoffs: tuple[str, str], retry_s: float
    ) -> None:
        self.stage = stage
        self.store_url = store_url
        self.run_id = run_id
        self.handoffs = handoffs
        self.retry_s = retry_s

    def setup(self) -> None:
        self.recorder = LineageRecorder(
            self.store_url, pipeline=self.stage, run_id=self.run_id, retry_s=self.retry_s
        )

    def process(self, batch: Batch) -> Iterator[Batch]:
        allowed_to, quarantined_to = self.handoffs
        recorded = self.recorder.record(batch, allowed_to=allowed_to, quarantined_to=quarantined_to)
        assert recorded is not None  # None only when a `stop` is given
        yield recorded.batch
        # handed on to the next transform: `trace` shows `handed_on`, never `delivered`
        self.recorder.confirm([(recorded.entry, len(batch.items), [])])

    def teardown(self) -> None:
        self.recorder.close()


def _destinations(io: KafkaIO | FilesIO, batch: Batch) -> tuple[str, str]:
    return io.destinations(batch.topic)


class RecordHop(beam.PTransform):
    """Records one lineage hop per record under `stage` (shown by `lineage trace`), then
    passes each batch on unchanged: lineage is written before the records it covers move on,
    so a batch whose lineage cannot be recorded goes nowhere (fail closed).

    For a stage that hands its records on inside the pipeline: its hop records no delivery.
    `trace` shows the hop's write step as `handed_on → pipeline:NAME` for allowed records
    and `quarantined → pipeline:NAME` for stopped ones, where `handoffs` names the
    transforms they go to next, as `(allowed_to, quarantined_to)` (default
    `(STAGE.valid, STAGE.quarantine)`); `lineage leaks` never counts a handoff as a delivery.
    A stage that writes its records out records its hop in `WriteGuarded(lineage=…)`
    instead, which confirms the delivery once the topic or file answered.

    Apply it to a `guarded` output. `run_id` is fixed here, on the launcher, so a retried
    bundle records the same hop.
    """

    def __init__(
        self,
        stage: str,
        store_url: str,
        *,
        handoffs: tuple[str, str] | None = None,
        run_id: str | None = None,
        retry_s: float = 300.0,
    ) -> None:
        super().__init__()
        if handoffs is not None and not (
            isinstance(handoffs, tuple) and all(isinstance(n, str) for n in handoffs)
        ):
            raise TypeError(
                "RecordHop(handoffs=…) names the transforms the records go to next, as two "
                "strings; to record a write to topics or files use "
                "`WriteGuarded(io, lineage=Lineage(store_url=…, stage=…))`."
            )
        allowed_to, quarantined_to = handoffs or (f"{stage}.{VALID}", f"{stage}.{QUARANTINE}")
        self.stage = stage
        self.store_url = store_url
        self.handoffs = (HANDOFF + allowed_to, HANDOFF + quarantined_to)
        self.run_id = run_id or str(uuid.uuid4())
        self.retry_s = retry_s

    def expand(self, batches: PCollection[Batch]) -> PCollection[Batch]:
        fn = _RecordHop(self.stage, self.store_url, self.run_id, self.handoffs, self.retry_s)
        return batches | beam.ParDo(fn).with_output_types(Batch)


@dataclass(frozen=True, kw_only=True)
class Lineage:
    """Where `WriteGuarded` records its hop: the store, the stage name it shows under, and the
    run (fixed on the launcher, so every worker and retry records under the same run)."""

    store_url: str
    stage: str
    run_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    retry_s: float = 300.0


class _Write(beam.DoFn):
    """Records the hop, writes allowed and quarantined records, confirms what the destination
    answered, then commits (Kafka) behind it."""

    def __init__(self, io: KafkaIO | FilesIO, lineage: Lineage | None, expected: int | None):
        self.io = io
        self.lineage = lineage
        self.expected = expected

    def setup(self) -> None:
        io, lineage = self.io, self.lineage
        self.recorder = (
            LineageRecorder(
                lineage.store_url,
                pipeline=lineage.stage,
                run_id=lineage.run_id,
                retry_s=lineage.retry_s,
            )
            if lineage is not None
            else None
        )
        answered = self.recorder.confirm if self.recorder is not None else None
        if isinstance(io, KafkaIO):
            self.sink: KafkaSink | FileSink = KafkaSink(
                io.settings,
                output_topic=io.output_topic,
                quarantine_topic=io.quarantine_topic,
                on_answered=answered,
            )
        else:
            self.sink = FileSink(io.out_dir, io.names, on_answered=answered)
        self.counters = OutcomeCounters()
        self.written = 0
        self.started = self.last_report = time.monotonic()

    def process(self, batch: Batch) -> None:
        if stop_requested():  # a stop signal: deliver nothing more, commit nothing past here
            return
        if isinstance(self.sink, KafkaSink):
            batch = self.sink.prepare(batch)  # where each record fits, before its lineage
        receipt = None
        if self.recorder is not None:
            allowed_to, quarantined_to = _destinations(self.io, batch)
            recorded = self.recorder.record(
                batch, allowed_to=allowed_to, quarantined_to=quarantined_to, stop=stop_requested
            )
            if recorded is None:  # stopped while the store was being retried
                return
            batch, receipt = recorded.batch, recorded.entry  # refused rows: quarantined
        self.sink.write(batch, receipt)
        self._count(batch)

    def finish_bundle(self) -> None:
        self.sink.flush()

    def teardown(self) -> None:
        self.sink.close()
        if self.recorder is not None:
            self.recorder.close()

    def _count(self, batch: Batch) -> None:
        self.counters.add(batch)
        self.written += len(batch.items)
        now = time.monotonic()
        if now - self.last_report >= 2.0:
            import logging

            self.last_report = now
            rate = self.written / max(now - self.started, 1e-9)
            total = f"/{self.expected}" if self.expected is not None else ""
            logging.getLogger("lineage_guard.progress").info(
                "guarded %d%s records (%.0f records/s)", self.written, total, rate
            )


class OutcomeCounters:
    """The Beam counters a written batch adds to (read back by `Summary`): `outcome:allowed`,
    `outcome:quarantined:STAGE:RULES`, `outcome:blocked:STAGE:RULES`, `content_class:X`,
    `origin_env:X` and, for allowed records, `allowed_class:X` (a training export's
    synthetic ratio)."""

    def __init__(self) -> None:
        self.counters: dict[str, Any] = {}

    def add(self, batch: Batch) -> None:
        # Counted by what the names are made of, then named once per distinct kind.
        kinds: Counter[tuple[Any, ...]] = Counter()
        for item in batch.items:
            provenance = provenance_of(item.record)
            kinds[
                (
                    item.stopped_at,
                    item.blocked,
                    item.violations,
                    str(provenance.get("content_class")),  # any JSON value: keyed as text
                    str(provenance.get("origin_env")),
                )
            ] += 1
        counts = outcome_counts(
            (stopped_at, blocked, [v.rule for v in violations], content_class, origin_env, n)
            for (stopped_at, blocked, violations, content_class, origin_env), n in kinds.items()
        )
        for name, n in counts.items():
            counter = self.counters.get(name)
            if counter is None:
                counter = self.counters[name] = Metrics.counter(NAMESPACE, name)
            counter.inc(n)


def outcome_counts(
    kinds: Iterable[tuple[str | None, bool, Iterable[str], str, str, int]],
) -> Counter[str]:
    """The counter names (see `OutcomeCounters`) of `(stopped_at, blocked, rules,
    content_class, origin_env, records)` groups: one naming for the write step's counters and
    for the counts read back from the lineage store."""
    counts: Counter[str] = Counter()
    for stopped_at, blocked, rules, content_class, origin_env, n in kinds:
        if stopped_at is None:
            counts["outcome:allowed"] += n
            counts[f"allowed_class:{content_class}"] += n
        else:
            decision = "blocked" if blocked else "quarantined"
            counts[f"outcome:{decision}:{stopped_at}:{','.join(sorted(set(rules)))}"] += n
        counts[f"content_class:{content_class}"] += n
        counts[f"origin_env:{origin_env}"] += n
    return counts


class WriteGuarded(beam.PTransform):
    """Allowed records to the output (topic, or `<name>.allowed.jsonl`), stopped ones to
    quarantine with their reasons. Apply it to a `guarded` output (every record, in offset
    order): Kafka offsets are committed only behind delivered records.

    With `lineage`, each batch's hop is recorded under `lineage.stage` before any of its
    records is written, and its delivery once the destination answered (fail closed).
    File outputs are written per batch, keyed on its source position, so a retried bundle
    rewrites the same part; `finalize_files` joins the parts once the pipeline is done."""

    def __init__(
        self,
        io: KafkaIO | FilesIO,
        expected: int | None = None,
        *,
        lineage: Lineage | None = None,
    ) -> None:
        super().__init__()
        self.io = io
        self.expected = expected
        self.lineage = lineage

    def expand(self, batches: PCollection[Batch]) -> PCollection[Any]:
        return batches | beam.ParDo(_Write(self.io, self.lineage, self.expected))


class Records(beam.PTransform):
    """Batches → each decoded record with what the guard decided about it, as
    `(record, Checked)` pairs (`Checked`: `decision`, `stage`, `violations`), for your own
    transforms: on a `quarantine` output the violations say why each record was stopped.
    `Records(verdicts=False)` gives the plain records (dicts). Undecodable messages have no
    record and are left out (their reasons are on `quarantine` batches and in lineage)."""

    def __init__(self, *, verdicts: bool = True) -> None:
        super().__init__()
        self.verdicts = verdicts

    def expand(self, batches: PCollection[Batch]) -> PCollection[Any]:
        if not self.verdicts:
            return batches | beam.FlatMap(
                lambda batch: [i.record for i in batch.items if i.record is not None]
            )
        return batches | beam.FlatMap(
            lambda batch: [
                (i.record, stages.Checked.of(i)) for i in batch.items if i.record is not None
            ]
        )
