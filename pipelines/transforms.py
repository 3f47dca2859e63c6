"""The guard's stages as composable Beam transforms, for the CLI's graph and for your own.

Elements are micro-batches (`GuardBatch`: the messages of one partition or file, in offset
order, as one Arrow RecordBatch; see `arrow_batch`), encoded with `BatchCoder` (Arrow IPC, no
pickle). Every stage is a function of the one guard chain (`guard_chain`), which the
streaming job, `validate`, `Guard.check` and the gateway call too. Each checking stage has
three outputs:

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

import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.pvalue import AsSingleton, PBegin, PCollection, TaggedOutput

from lineage_guard import guard_chain
from lineage_guard.arrow_batch import GuardBatch
from lineage_guard.coders import BatchCoder
from lineage_guard.contract.policies import parse_policy
from lineage_guard.contract.records import record_id_of
from lineage_guard.contract.validate import SuiteValidator
from lineage_guard.io.decode import decoder_for
from lineage_guard.io.file_io import FileSink, finalize_files, output_names, read_file
from lineage_guard.io.kafka import KafkaSettings, KafkaSink, PartitionRange, read_range
from lineage_guard.lineage.hops import HANDOFF
from lineage_guard.recorder import LineageRecorder, RetryingStore
from lineage_guard.stages import Checked, ParentIndex
from lineage_guard.stop import RunStop
from lineage_guard.writer import NAMESPACE, Lineage, OutcomeCounters, Writer, outcome_counts

VALID = "valid"
QUARANTINE = "quarantine"
GUARDED = "guarded"
beam.coders.registry.register_coder(GuardBatch, BatchCoder)
__all__ = ["Lineage", "OutcomeCounters", "outcome_counts"]  # re-exported from `writer`


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
    """Declares every tagged output a PCollection of `GuardBatch`, so Beam uses `BatchCoder`."""
    for tag in tags:
        outputs[tag].element_type = GuardBatch
    return outputs


# -- sources ---------------------------------------------------------------------------------


class _ReadKafka(beam.DoFn):
    def __init__(
        self, settings: KafkaSettings, batch_size: int, counter: str | None, stop: RunStop
    ) -> None:
        self.settings = settings
        self.batch_size = batch_size
        self.counter = counter
        self.stop = stop

    def setup(self) -> None:
        self.consumer = self.settings.consumer()
        self.read = Metrics.counter(NAMESPACE, self.counter) if self.counter else None

    def process(self, part: PartitionRange) -> Iterator[GuardBatch]:
        timeout_s = self.settings.timeout_s
        stop = self.stop.requested
        for batch in read_range(self.consumer, part, self.batch_size, timeout_s, stop):
            if self.read is not None:
                self.read.inc(len(batch))
            yield batch

    def teardown(self) -> None:
        self.consumer.close()


class ReadKafka(beam.PTransform):
    """Bounded: the given partition ranges, each read in offset order by one worker.
    `counter`: the Beam counter that counts records read (None: not counted); `stop`: the
    run's stop (`lineage_guard.stop`): reading ends at the next batch once it is asked."""

    def __init__(
        self,
        settings: KafkaSettings,
        ranges: Sequence[PartitionRange],
        batch_size: int = 2000,
        *,
        counter: str | None = "read",
        stop: RunStop | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.ranges = list(ranges)
        self.batch_size = batch_size
        self.counter = counter
        self.stop = stop or RunStop()

    def expand(self, pbegin: PBegin) -> PCollection[GuardBatch]:
        return (
            pbegin
            | "Partitions" >> beam.Create(self.ranges)
            | "Spread" >> beam.Reshuffle()
            | "Read"
            >> beam.ParDo(
                _ReadKafka(self.settings, self.batch_size, self.counter, self.stop)
            ).with_output_types(GuardBatch)
        )


class _ReadFiles(beam.DoFn):
    def __init__(self, batch_size: int, counter: str | None, stop: RunStop) -> None:
        self.batch_size = batch_size
        self.counter = counter
        self.stop = stop

    def setup(self) -> None:
        self.read = Metrics.counter(NAMESPACE, self.counter) if self.counter else None

    def process(self, path: str) -> Iterator[GuardBatch]:
        for batch in read_file(path, self.batch_size):
            if self.stop.requested():  # a stop signal: read no further
                return
            if self.read is not None:
                self.read.inc(len(batch))
            yield batch


class ReadFiles(beam.PTransform):
    """Avro container or JSON Lines files (paths or `FileSystems` URIs), one file per worker,
    as batches whose position is (file, 0, record index)."""

    def __init__(
        self,
        paths: Sequence[str],
        batch_size: int = 2000,
        *,
        counter: str | None = "read",
        stop: RunStop | None = None,
    ) -> None:
        super().__init__()
        self.paths = list(paths)
        self.batch_size = batch_size
        self.counter = counter
        self.stop = stop or RunStop()

    def expand(self, pbegin: PBegin) -> PCollection[GuardBatch]:
        return (
            pbegin
            | "Files" >> beam.Create(self.paths)
            | "Spread" >> beam.Reshuffle()
            | "Read"
            >> beam.ParDo(_ReadFiles(self.batch_size, self.counter, self.stop)).with_output_types(
                GuardBatch
            )
        )


# -- checking stages -------------------------------------------------------------------------


class _Stage(beam.DoFn):
    """Applies one stage to a batch and emits its three outputs (see the module docstring)."""

    split = True  # False: only `guarded` gets batches (`_StageTransform.guarded_only`)

    def check(self, batch: GuardBatch, side: Any) -> GuardBatch:
        raise NotImplementedError

    def process(self, batch: GuardBatch, side: Any = None) -> Iterator[Any]:
        after = self.check(batch, side)
        yield TaggedOutput(GUARDED, after)
        if not self.split:
            return
        before = np.asarray(batch.allowed_mask(), dtype=bool)
        now = np.asarray(after.allowed_mask(), dtype=bool)
        valid = np.flatnonzero(now)
        if len(valid) == len(after):
            yield after
        elif len(valid):
            yield after.take(valid.tolist())
        stopped = np.flatnonzero(before & ~now)
        if len(stopped):
            yield TaggedOutput(QUARANTINE, after.take(stopped.tolist()))


class _StageTransform(beam.PTransform):
    split = True

    def guarded_only(self) -> Any:
        """This stage with only its `guarded` output filled (`valid` and `quarantine` stay
        empty): for a graph that chains on `guarded` alone, as the CLI's does, it saves
        copying every batch into two more per stage."""
        self.split = False
        return self

    def _apply(self, batches: PCollection[GuardBatch], fn: _Stage, *side: Any) -> Any:
        fn.split = self.split
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

    def check(self, batch: GuardBatch, side: Any) -> GuardBatch:
        return guard_chain.decode(batch, self.decoder)


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

    def expand(self, batches: PCollection[GuardBatch]) -> Any:
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

    def process(self, batch: GuardBatch) -> Iterator[tuple[bytes, bytes]]:
        part = guard_chain.index_keys(guard_chain.decode(batch, self.decoder))
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
        merged = ParentIndex.merge(part for parts in accumulators for part in parts)
        return [(merged.synthetic, merged.ai_assisted)]

    def extract_output(self, parts: list[tuple[bytes, bytes]]) -> tuple[bytes, bytes]:
        merged = ParentIndex.merge(parts)
        return merged.synthetic, merged.ai_assisted


class ParentClasses(beam.PTransform):
    """The class of every generated record in `batches`, as one compact `ParentIndex` (16
    bytes per AI_ASSISTED or SYNTHETIC record, as `(synthetic keys, AI-assisted keys)`): the
    side input that lets `ValidateProvenance` see parents in any partition of the same run.

    `batches` may come straight from a source: they are decoded (the Rust reader: a few µs
    per record) with the same `raw_schema` / `schema_registry` as `DecodeRecords`. Decoded
    batches (and file records) are read as they are."""

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

    def expand(self, batches: PCollection[GuardBatch]) -> PCollection[tuple[bytes, bytes]]:
        return (
            batches
            | "Generated"
            >> beam.ParDo(
                _IndexClasses(self.raw_schema, self.schema_registry, self.registry_wait_s)
            ).with_output_types(tuple[bytes, bytes])
            | "Index" >> beam.CombineGlobally(_MergeIndex()).with_output_types(tuple[bytes, bytes])
        )


class _Validate(_Stage):
    def __init__(
        self, engine: str, lineage_store: str | None, retry_s: float, stop: RunStop
    ) -> None:
        self.engine = engine
        self.lineage_store = lineage_store
        self.retry_s = retry_s
        self.stop = stop

    def setup(self) -> None:
        self.validator = SuiteValidator(engine=self.engine)  # suites: once per worker
        self.store = (
            RetryingStore(self.lineage_store, retry_s=self.retry_s)
            if self.lineage_store is not None
            else None
        )

    def check(self, batch: GuardBatch, side: Any) -> GuardBatch:
        index = None
        if side is not None:
            index = ParentIndex(*side)
        return guard_chain.validate(batch, self.validator, index, self._lookup)

    def _lookup(self, record_ids: Iterable[str]) -> dict[str, str]:
        if self.store is None:
            return {}
        return self.store.content_classes(record_ids, self.stop.requested)

    def teardown(self) -> None:
        if self.store is not None:
            self.store.close()


class ValidateProvenance(_StageTransform):
    """Records in, three outputs: `valid`, `quarantine` (with reasons) and `guarded`.

    `parents`: a `ParentClasses` PCollection (parents in the same run, any partition);
    `lineage_store`: where parents recorded earlier (any worker, round or run) are looked up
    (an unreachable store is retried until `stop` is asked).
    """

    def __init__(
        self,
        engine: str = "compiled",
        *,
        parents: PCollection[tuple[bytes, bytes]] | None = None,
        lineage_store: str | None = None,
        lineage_retry_s: float = 300.0,
        stop: RunStop | None = None,
    ) -> None:
        super().__init__()
        self.engine = engine
        self.parents = parents
        self.lineage_store = lineage_store
        self.lineage_retry_s = lineage_retry_s
        self.stop = stop or RunStop()

    def expand(self, batches: PCollection[GuardBatch]) -> Any:
        side = [AsSingleton(self.parents)] if self.parents is not None else []
        validate = _Validate(self.engine, self.lineage_store, self.lineage_retry_s, self.stop)
        return self._apply(batches, validate, *side)


class _Enforce(_Stage):
    def __init__(self, policies: Sequence[str]) -> None:
        self.policy_texts = tuple(policies)

    def setup(self) -> None:
        self.policies = [parse_policy(text) for text in self.policy_texts]

    def check(self, batch: GuardBatch, side: Any) -> GuardBatch:
        return guard_chain.enforce(batch, self.policies)


class EnforcePolicies(_StageTransform):
    """Sink policies (`production`, `tenant:ID`, `training[:…]`); refused records go to
    `quarantine` marked `blocked`."""

    def __init__(self, policies: Sequence[str] = ("production",)) -> None:
        super().__init__()
        for text in policies:
            parse_policy(text)  # a bad policy fails at construction, not inside a worker
        self.policies = tuple(policies)

    def expand(self, batches: PCollection[GuardBatch]) -> Any:
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

    def process(self, batch: GuardBatch) -> Iterator[GuardBatch]:
        allowed_to, quarantined_to = self.handoffs
        recorded = self.recorder.record(batch, allowed_to=allowed_to, quarantined_to=quarantined_to)
        assert recorded is not None  # None only when a `stop` is given
        yield recorded.batch
        # handed on to the next transform: `trace` shows `handed_on`, never `delivered`
        self.recorder.confirm([(recorded.entry, len(batch), [])])

    def teardown(self) -> None:
        self.recorder.close()


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

    def expand(self, batches: PCollection[GuardBatch]) -> PCollection[GuardBatch]:
        fn = _RecordHop(self.stage, self.store_url, self.run_id, self.handoffs, self.retry_s)
        return batches | beam.ParDo(fn).with_output_types(GuardBatch)


class _Write(beam.DoFn):
    """Writes through `writer.Writer`: the hop, the records, what the destination answered;
    then commits (Kafka) behind it."""

    def __init__(
        self,
        io: KafkaIO | FilesIO,
        lineage: Lineage | None,
        expected: int | None,
        stop: RunStop,
    ) -> None:
        self.io = io
        self.lineage = lineage
        self.expected = expected
        self.stop = stop

    def setup(self) -> None:
        io = self.io

        def make_sink(answered: Any) -> KafkaSink | FileSink:
            if isinstance(io, KafkaIO):
                return KafkaSink(
                    io.settings,
                    output_topic=io.output_topic,
                    quarantine_topic=io.quarantine_topic,
                    on_answered=answered,
                )
            return FileSink(io.out_dir, io.names, on_answered=answered)

        self.writer = Writer(self.lineage, make_sink, io.destinations, expected=self.expected)

    def process(self, batch: GuardBatch) -> None:
        if self.stop.requested():  # a stop signal: deliver nothing more, commit nothing past
            return
        self.writer.write(batch, self.stop.requested)

    def finish_bundle(self) -> None:
        self.writer.flush()

    def teardown(self) -> None:
        self.writer.close()


class WriteGuarded(beam.PTransform):
    """Allowed records to the output (topic, or `<name>.allowed.jsonl`), stopped ones to
    quarantine with their reasons. Apply it to a `guarded` output (every record, in offset
    order): Kafka offsets are committed only behind delivered records.

    With `lineage`, each batch's hop is recorded under `lineage.stage` before any of its
    records is written, and its delivery once the destination answered (fail closed).
    File outputs are written per batch, keyed on its source position, so a retried bundle
    rewrites the same part; `finalize_files` joins the parts once the pipeline is done.
    Once `stop` is asked, nothing more is delivered (offsets stay behind what was)."""

    def __init__(
        self,
        io: KafkaIO | FilesIO,
        expected: int | None = None,
        *,
        lineage: Lineage | None = None,
        stop: RunStop | None = None,
    ) -> None:
        super().__init__()
        self.io = io
        self.expected = expected
        self.lineage = lineage
        self.stop = stop or RunStop()

    def expand(self, batches: PCollection[GuardBatch]) -> PCollection[Any]:
        return batches | beam.ParDo(_Write(self.io, self.lineage, self.expected, self.stop))


class Records(beam.PTransform):
    """Batches → each decoded record with what the guard decided about it, as
    `(record, Checked)` pairs (`Checked`: `decision`, `stage`, `violations`), for your own
    transforms: on a `quarantine` output the violations say why each record was stopped.
    `Records(verdicts=False)` gives the plain records (dicts). Undecodable messages have no
    record and are left out (their reasons are on `quarantine` batches and in lineage)."""

    def __init__(self, *, verdicts: bool = True) -> None:
        super().__init__()
        self.verdicts = verdicts

    def expand(self, batches: PCollection[GuardBatch]) -> PCollection[Any]:
        return batches | beam.FlatMap(_records, self.verdicts)


def _records(batch: GuardBatch, verdicts: bool) -> list[Any]:
    batch = guard_chain.with_records(batch)
    records = batch.records if batch.records is not None else (None,) * len(batch)
    if not verdicts:
        return [r for r in records if r is not None]
    stopped = batch.stopped_at()
    blocked = batch.blocked()
    return [
        (
            record,
            Checked(
                record_id=record_id_of(record),
                decision="allowed"
                if stopped[i] is None
                else ("blocked" if blocked[i] else "quarantined"),
                stage=stopped[i],
                violations=batch.violations.get(i, ()),
            ),
        )
        for i, record in enumerate(records)
        if record is not None
    ]
